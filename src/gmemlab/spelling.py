"""How case files and scenarios spell operations and values, in one place.

A step's arguments are written with bound names ("$vm", "$a+4096", a
table result's field "$st.ino", "align_up($r, 0x200000)"), flag names
("READ|WRITE") and hex strings (data_hex).  The conformance runner, the
checker's scenarios and the model's case operations (actor_begin) all read
them the same way, through these two functions.
"""

from __future__ import annotations

import re
from difflib import get_close_matches
from typing import Any

from . import uapi
from .errors import UsageError

NUMBER = r"0[xX][0-9a-fA-F]+|\d+"
REF = re.compile(r"^\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\.(?P<field>[A-Za-z_][A-Za-z0-9_]*))?"
                 rf"\s*(?:(?P<sign>[+-])\s*(?P<offset>{NUMBER}))?$")
ALIGN_UP = re.compile(rf"^align_up\(\s*(\$[^,]+?)\s*,\s*({NUMBER})\s*\)$")


class Unbound(LookupError):
    """A reference to a name no earlier step bound."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def resolve(value: Any, env: dict[str, Any]) -> Any:
    """Replace "$name", "$name.field", "$name+N" (or -N) and "align_up($name..., N)"
    by the values they name, recursively."""
    if isinstance(value, str):
        if value.startswith("align_up("):
            return _align_up(value, env)
        if not value.startswith("$"):
            return value
        m = REF.match(value.strip())
        if m is None:
            raise UsageError(f"bad reference {value!r} (use $name, $name.field or $name+N)")
        name, field, sign, offset = m.groups()
        if name not in env or env[name] is None:
            raise Unbound(name)
        base = env[name]
        if field is not None:
            base = _field(name, base, field)
        if offset is None:
            return base
        if not isinstance(base, int) or isinstance(base, bool):
            raise UsageError(f"${name} is not a number, cannot add an offset")
        delta = int(offset, 0)
        return base + delta if sign == "+" else base - delta
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    return value


def _field(name: str, value: Any, field: str) -> Any:
    """One field of a bound table result (fstat's ino, get_mempolicy's mode, ...)."""
    table = value.as_table() if hasattr(value, "as_table") else value
    if not isinstance(table, dict):
        raise UsageError(f"${name} is not a table result, so it has no field {field!r}")
    if field not in table:
        raise UsageError(f"${name} has no field {field!r} (it has {', '.join(sorted(table))})")
    return table[field]


def _align_up(text: str, env: dict[str, Any]) -> int:
    """align_up(REF, N): the reference's value rounded up to a multiple of N."""
    m = ALIGN_UP.match(text.strip())
    if m is None:
        raise UsageError(f"bad expression {text!r} (use align_up($name, N) or "
                         "align_up($name+N, N))")
    base = resolve(m.group(1), env)
    align = int(m.group(2), 0)
    if not isinstance(base, int) or isinstance(base, bool) or align <= 0:
        raise UsageError(f"{text}: align_up needs a number and a positive alignment")
    return -(-base // align) * align


def call_arguments(call: str, args: dict[str, Any]) -> dict[str, Any]:
    """A step's spelling of arguments (flag names, data_hex) as the call takes them."""
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key == "data_hex":
            if not isinstance(value, str):
                raise UsageError(f"{call}: data_hex must be a hex string")
            try:
                out["data"] = bytes.fromhex(value)
            except ValueError:
                raise UsageError(f"{call}: data_hex is not hex") from None
            continue
        names = uapi.FLAG_ARGUMENTS.get((call, key))
        if names is not None and isinstance(value, str):
            try:
                value = uapi.parse_flags(value, names, f"{call}.{key}")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        out[key] = value
    return out


# Names people write for an argument that the kernel's struct or syscall names otherwise.
SYNONYMS = {"length": ("size", "memory_size"), "len": ("length", "size"), "size": ("length",),
            "address": ("addr", "guest_phys_addr"), "addr": ("address", "userspace_addr"),
            "gpa": ("guest_phys_addr", "address"), "offset": ("guest_memfd_offset",),
            "prot": ("attributes",), "type": ("flags",), "fd": ("vm", "guest_memfd", "vcpu")}


def _near(word: str, choices: list[str]) -> str:
    close = get_close_matches(word, choices, n=1, cutoff=0.6) or \
        [c for c in SYNONYMS.get(word, ()) if c in choices][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def vocabulary_problem(op: str, args: dict[str, Any]) -> str | None:
    """What is wrong with a step's operation or argument names, said as a user can fix it."""
    from .interface import INTERFACE_OPS, MODEL_ONLY_OPS, op_signature

    ops = list(INTERFACE_OPS + MODEL_ONLY_OPS)
    if op not in ops:
        return f"unknown operation {op!r}{_near(op, ops)} (gmemlab list ops shows them all)"
    params = op_signature(op).parameters
    spelt = {"data_hex" if name == "data" else name for name in params}
    for name in args:
        if name not in spelt:
            expected = ", ".join(sorted(spelt))
            return f"unknown argument {name!r}{_near(name, sorted(spelt))}; {op} takes {expected}"
    for name, value in args.items():
        names = uapi.FLAG_ARGUMENTS.get((op, name))
        if names is None or not isinstance(value, str) or value.startswith("$"):
            continue
        try:
            uapi.parse_flags(value, names, f"{name}")
        except ValueError as exc:
            bad = next((part.strip() for part in value.split("|")
                        if not _parses(part.strip(), names)), value)
            return f"{exc}{_near(bad.upper(), [n.upper() for n in names])}"
    given = {"data" if name == "data_hex" else name for name in args}
    missing = [n for n, p in params.items() if p.default is p.empty and n not in given]
    if missing:
        return f"missing argument {missing[0]!r} ({op} takes {', '.join(params)})"
    return None


def _parses(part: str, names: Any) -> bool:
    try:
        uapi.parse_flags(part, names)
    except ValueError:
        return False
    return True
