"""Guest programs: assembly source in this package, assembled by GNU as at first use.

A program is one `.s` file in `gmemlab/vmm/guests/`.  It is assembled with
`as --64` into an ELF object; its `.text` section is the program image, and
its symbol table gives every label's offset and every `.equ` constant, so
Python never repeats a number that the source defines.  Programs must be
position-independent (no relocations): they are loaded wherever the caller
puts them.

Objects are cached by the SHA-256 of the source and the assembler's version,
in memory and under $XDG_CACHE_HOME/gmemlab/asm (or ~/.cache), so `as` runs
once per source change.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import AssemblerMissing, VmmError


@dataclass(frozen=True)
class Program:
    name: str
    code: bytes
    symbols: dict[str, int]

    def __getitem__(self, symbol: str) -> int:
        try:
            return self.symbols[symbol]
        except KeyError:
            raise VmmError(f"guest program {self.name} defines no symbol {symbol!r}") from None


def assembler() -> str | None:
    """The path of GNU as, or None."""
    return os.environ.get("GMEMLAB_AS") or shutil.which("as")


def missing_reason() -> str | None:
    """Why guest programs cannot be built here, or None."""
    if assembler() is None:
        return "GNU as (binutils) is not installed: it assembles gmemlab's guest programs"
    return None


def source(name: str) -> str:
    return (resources.files("gmemlab.vmm") / "guests" / f"{name}.s").read_text()


@functools.cache
def _as_version(path: str) -> str:
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0] if proc.stdout else "unknown"


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "gmemlab" / "asm"


@functools.cache
def load(name: str) -> Program:
    """The assembled program `name` (guests/<name>.s)."""
    text = source(name)
    path = assembler()
    if path is None:
        raise AssemblerMissing(missing_reason() or "")
    key = hashlib.sha256((_as_version(path) + "\0" + text).encode()).hexdigest()[:32]
    cached = _cache_dir() / f"{name}-{key}.o"
    try:
        obj = cached.read_bytes()
    except OSError:
        obj = _assemble(path, name, text)
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(obj)
            tmp.replace(cached)
    code, symbols = parse_object(obj, name)
    return Program(name, code, symbols)


def _assemble(path: str, name: str, text: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="gmemlab-as-") as tmp:
        src = Path(tmp) / f"{name}.s"
        out = Path(tmp) / f"{name}.o"
        src.write_text(text)
        proc = subprocess.run([path, "--64", "-o", str(out), str(src)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise VmmError(f"assembling guest program {name} failed:\n{proc.stderr.strip()}")
        return out.read_bytes()


# --- just enough ELF64 to read .text and the symbol table ------------------------------

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
SHT_SYMTAB = 2
SHT_RELA = 4
SHT_REL = 9
SHN_ABS = 0xFFF1


def _cstr(table: bytes, offset: int) -> str:
    return table[offset:table.index(b"\0", offset)].decode()


def parse_object(obj: bytes, name: str = "object") -> tuple[bytes, dict[str, int]]:
    """(.text bytes, {symbol: value}) of a relocatable ELF64 object from as."""
    (ident, _type, machine, _version, _entry, _phoff, shoff, _flags, _ehsize, _phentsize,
     _phnum, shentsize, shnum, shstrndx) = _EHDR.unpack_from(obj, 0)
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or machine != 62:
        raise VmmError(f"{name}: not an x86-64 ELF object")
    sections = [_SHDR.unpack_from(obj, shoff + i * shentsize) for i in range(shnum)]
    shstr_off, shstr_size = sections[shstrndx][4], sections[shstrndx][5]
    shstr = obj[shstr_off:shstr_off + shstr_size]
    names = [_cstr(shstr, s[0]) for s in sections]
    if ".text" not in names:
        raise VmmError(f"{name}: no .text section")
    text_index = names.index(".text")
    text = sections[text_index]
    code = obj[text[4]:text[4] + text[5]]
    for sec_name, sec in zip(names, sections, strict=True):
        if sec[1] in (SHT_RELA, SHT_REL) and sec[5]:
            raise VmmError(f"{name}: {sec_name} has relocations; guest programs must be "
                           "position-independent")
        if sec_name in (".data", ".bss") and sec[5]:
            raise VmmError(f"{name}: put everything in .text ({sec_name} is not loaded)")
    symbols: dict[str, int] = {}
    for sec in sections:
        if sec[1] != SHT_SYMTAB:
            continue
        link = sections[sec[6]]
        strtab = obj[link[4]:link[4] + link[5]]
        for off in range(sec[4], sec[4] + sec[5], _SYM.size):
            st_name, _info, _other, shndx, value, _size = _SYM.unpack_from(obj, off)
            if st_name and shndx in (text_index, SHN_ABS):
                symbols[_cstr(strtab, st_name)] = value
    return code, symbols
