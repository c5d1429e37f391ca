"""C spelling of values: integer literals, byte strings, comments, identifiers, flag names."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping

from .. import uapi

INT64_MIN = -(1 << 63)


def c_int(value: int, bits: int = 64, signed: bool = True) -> str:
    """A C literal of value for a parameter of that width and signedness."""
    if value < 0:
        if value == INT64_MIN:
            return "(-9223372036854775807LL - 1)"
        return f"{value}LL" if bits > 32 else str(value)
    if value < 10:
        return str(value)
    text = hex(value) if value >= 4096 else str(value)
    if bits > 32 or value > 0x7FFFFFFF:
        return text + ("ULL" if not signed or value > 0x7FFFFFFFFFFFFFFF else "LL")
    return text + ("U" if not signed else "")


def c_bytes(data: bytes, indent: str = "\t\t") -> str:
    """A C string literal holding data (octal escapes: never ambiguous), wrapped."""
    if not data:
        return '""'
    parts = []
    for chunk in range(0, len(data), 24):
        piece = data[chunk:chunk + 24]
        parts.append('"' + "".join(f"\\{b:03o}" for b in piece) + '"')
    return f"\n{indent}".join(parts)


def c_string(text: str) -> str:
    """A C string literal of text (UTF-8), printable ASCII kept as is."""
    out = []
    for b in text.encode():
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= b < 127 and ch != "?":
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def c_comment(text: str, indent: str = "", width: int = 92) -> list[str]:
    """Lines of a /* */ comment holding text (never closing it early)."""
    safe = text.replace("*/", "* /").replace("/*", "/ *")
    lines: list[str] = []
    for para in safe.splitlines() or [""]:
        lines.extend(textwrap.wrap(para, width - len(indent) - 3) or [""])
    if len(lines) == 1 and len(lines[0]) + len(indent) + 6 <= width:
        return [f"{indent}/* {lines[0]} */"]
    return [f"{indent}/*", *[f"{indent} * {line}".rstrip() for line in lines], f"{indent} */"]


def identifier(text: str, taken: set[str] | None = None) -> str:
    """A C identifier for text (a case id, a bound name), unique among `taken`."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text) or "case"
    if name[0].isdigit():
        name = "_" + name
    if taken is not None:
        base, n = name, 2
        while name in taken:
            name = f"{base}_{n}"
            n += 1
        taken.add(name)
    return name


# --- flag values by their kernel names -------------------------------------------------------

# A NUMA policy mode is an enum in the low bits with mode flags above (MPOL_F_STATIC_NODES).
MPOL_MODES: Mapping[str, int] = {
    name: value for name, value in uapi.MPOL_MODE_NAMES.items() if not value & uapi.MPOL_MODE_FLAGS}
MPOL_MODE_FLAGS: Mapping[str, int] = {
    f"F_{name}": value for name, value in uapi.MPOL_MODE_NAMES.items() if value & uapi.MPOL_MODE_FLAGS}

# (names, prefix, kind): kind "bits" decomposes into set bits, "enum" names a whole value,
# "mpol" a mode and its flags.
FLAG_SPELLING: Mapping[tuple[str, str], tuple[Mapping[str, int], str, str]] = {
    ("mmap", "prot"): (uapi.PROT_NAMES, "PROT_", "bits"),
    ("mprotect", "prot"): (uapi.PROT_NAMES, "PROT_", "bits"),
    ("mmap", "flags"): (uapi.MAP_NAMES, "MAP_", "map"),
    ("mremap", "flags"): (uapi.MREMAP_NAMES, "MREMAP_", "bits"),
    ("madvise", "advice"): (uapi.MADV_NAMES, "MADV_", "enum"),
    ("fallocate", "mode"): (uapi.FALLOC_NAMES, "FALLOC_FL_", "bits"),
    ("create_guest_memfd", "flags"): (uapi.GUEST_MEMFD_FLAG_NAMES, "GUEST_MEMFD_FLAG_", "bits"),
    ("set_user_memory_region", "flags"): (uapi.MEMSLOT_FLAG_NAMES, "KVM_MEM_", "bits"),
    ("set_user_memory_region2", "flags"): (uapi.MEMSLOT_FLAG_NAMES, "KVM_MEM_", "bits"),
    ("set_memory_attributes", "attributes"): ({"PRIVATE": uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE},
                                              "KVM_MEMORY_ATTRIBUTE_", "bits"),
    ("set_memory_attributes2", "attributes"): ({"PRIVATE": uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE},
                                               "KVM_MEMORY_ATTRIBUTE_", "bits"),
    ("mbind", "mode"): ({**MPOL_MODES, **MPOL_MODE_FLAGS}, "MPOL_", "mpol"),
    ("set_mempolicy", "mode"): ({**MPOL_MODES, **MPOL_MODE_FLAGS}, "MPOL_", "mpol"),
    ("mbind", "flags"): (uapi.MBIND_FLAG_NAMES, "MPOL_MF_", "bits"),
    ("get_mempolicy", "flags"): (uapi.MPOL_GET_FLAG_NAMES, "MPOL_F_", "bits"),
    ("lseek", "whence"): (uapi.SEEK_NAMES, "SEEK_", "enum"),
    ("memfd_create", "flags"): (uapi.MFD_NAMES, "MFD_", "bits"),
    ("check_extension", "cap"): (uapi.CAPS, "KVM_CAP_", "enum"),
    ("enable_cap", "cap"): (uapi.CAPS, "KVM_CAP_", "enum"),
}

# Aliases never used when spelling a value.
_ALIASES = {"MAP_ANON", "MAP_SHARED_VALIDATE"}


def flag_names() -> dict[str, int]:
    """Every kernel name the exports may spell a value with, and its value."""
    out: dict[str, int] = {}
    for names, prefix, _kind in FLAG_SPELLING.values():
        for name, value in names.items():
            out[prefix + name] = value
    out["MAP_SHARED_VALIDATE"] = uapi.MAP_SHARED_VALIDATE
    return out


def spell_flags(op: str, arg: str, value: int, bits: int, signed: bool) -> str:
    """value as the kernel's names for (op, arg) where it has them, else a literal."""
    spelling = FLAG_SPELLING.get((op, arg))
    if spelling is None or value < 0:
        return c_int(value, bits, signed)
    names, prefix, kind = spelling
    by_value: dict[int, str] = {}
    for name, number in names.items():
        if prefix + name not in _ALIASES:
            by_value.setdefault(number, prefix + name)
    if kind == "enum":
        return by_value.get(value, c_int(value, bits, signed))
    if kind == "mpol":
        mode, rest = value & ~uapi.MPOL_MODE_FLAGS, value & uapi.MPOL_MODE_FLAGS
        if mode not in MPOL_MODES.values():
            return c_int(value, bits, signed)
        parts = [prefix + next(n for n, v in MPOL_MODES.items() if v == mode)]
        parts += [prefix + n for n, v in sorted(MPOL_MODE_FLAGS.items(), key=lambda i: i[1])
                  if rest & v]
        return " | ".join(parts)
    parts = []
    rest = value
    if kind == "map":
        kind_bits = value & uapi.MAP_TYPE
        if kind_bits:
            names_of_type = {uapi.MAP_SHARED: "MAP_SHARED", uapi.MAP_PRIVATE: "MAP_PRIVATE",
                             uapi.MAP_SHARED_VALIDATE: "MAP_SHARED_VALIDATE"}
            if kind_bits not in names_of_type:
                return c_int(value, bits, signed)
            parts.append(names_of_type[kind_bits])
        rest &= ~uapi.MAP_TYPE
        by_value = {v: n for v, n in by_value.items() if v & uapi.MAP_TYPE == 0}
    if value == 0:
        return by_value.get(0, "0")
    for number in sorted(by_value):
        if number and number & (number - 1) == 0 and rest & number:
            parts.append(by_value[number])
            rest &= ~number
    if rest:
        parts.append(hex(rest))
    return " | ".join(parts)
