"""A step's arguments as C expressions, for the emitters of each flavour.

The plan holds every argument checked and converted to its C type (or a Ref
to a bound value).  Standalone exports pass each through gmemlab's runtime,
where a Ref is range-checked as interface.CInt does in Python; kselftest
exports write what a kernel developer writes: the variable, the kernel's
flag names, NULL for a null address.
"""

from __future__ import annotations

import functools
from typing import Any, get_type_hints

from ..interface import CInt, Kernel, op_signature
from .clang import c_bytes, c_int, c_string, spell_flags
from .plan import Ref, Refused, StepPlan


@functools.cache
def param_types(op: str) -> dict[str, CInt | None]:
    """The C integer type of each parameter of op (None for bool, str, bytes, lists)."""
    hints = get_type_hints(getattr(Kernel, op), include_extras=True)
    out: dict[str, CInt | None] = {}
    for name in op_signature(op).parameters:
        hint = hints[name]
        inner = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
        if type(None) in getattr(hint, "__args__", ()) and inner:
            hint = inner[0]
        out[name] = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, CInt)), None)
    return out


def _delta(value: int, plain: bool = False) -> str:
    """ + N or - N; plain: without a C suffix where an int holds it (kselftest)."""
    if abs(value) >= 1 << 63:
        raise Refused(f"an offset of {value:#x} does not fit 64 bits")
    size = abs(value)
    text = (f"{size:#x}" if size >= 4096 else str(size)) if plain and size < 1 << 31 else c_int(size)
    return f" + {text}" if value > 0 else f" - {text}" if value < 0 else ""


class Args:
    """What every flavour's emitters read."""

    def __init__(self, sp: StepPlan) -> None:
        self.sp = sp
        self.op = sp.op
        self.types = param_types(sp.op)

    def value(self, name: str) -> Any:
        return self.sp.args.get(name)

    def literal(self, name: str) -> bool:
        return not isinstance(self.value(name), Ref) and not (
            isinstance(self.value(name), tuple) and any(isinstance(v, Ref) for v in self.value(name)))

    def data(self, name: str = "data") -> tuple[str, int]:
        """A byte-string argument: its C literal and length."""
        raw = self.value(name) or b""
        return c_bytes(bytes(raw)), len(raw)

    def string(self, name: str) -> str:
        return c_string(str(self.value(name)))

    def _literal_int(self, name: str, value: int) -> str:
        t = self.types.get(name)
        if t is None:
            return c_int(value)
        return spell_flags(self.op, name, value, t.bits, t.signed)


def delta128(value: int) -> str:
    """ + N or - N in __int128 arithmetic (N may need more than 64 bits)."""
    size = abs(value)
    if size < 1 << 63:
        return _delta(value)
    if size >= 1 << 126:
        raise Refused(f"an offset of {value:#x} does not fit 126 bits")
    text = f"(((__int128){size >> 64:#x}ULL << 64) | {size & ((1 << 64) - 1):#x}ULL)"
    return f" + {text}" if value > 0 else f" - {text}"


class StandaloneArgs(Args):
    """Arguments for gmemlab's C runtime (gl_* functions)."""

    def ref(self, ref: Ref, name: str, t: CInt | None) -> str:
        if t is None or (not ref.delta and ((ref.fd and t.bits >= 32) or (t.bits == 64 and t.limit is None))):
            return ref.var + _delta(ref.delta)
        return (f"gl_fit((__int128){ref.var}{delta128(ref.delta)}, {t.bits}, {int(t.signed)}, "
                f"{t.limit or 0}ULL, {c_string(t.ctype)}, {c_string(name)})")

    def c(self, name: str) -> str:
        v = self.value(name)
        if isinstance(v, Ref):
            return self.ref(v, name, self.types.get(name))
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, int):
            return self._literal_int(name, v)
        if isinstance(v, str):
            return c_string(v)
        raise Refused(f"argument {name} = {v!r} has no C spelling here")

    def seq(self, name: str) -> tuple[str, int]:
        """A list of u64: a compound literal and its length."""
        items = tuple(self.value(name) or ())
        if not items:
            return "NULL", 0
        parts = [self.ref(v, f"{name}[{i}]", CInt("u64", 64, False)) if isinstance(v, Ref)
                 else c_int(v, 64, False) for i, v in enumerate(items)]
        return f"(const uint64_t[]){{{', '.join(parts)}}}", len(items)


# The C type a kselftest binding has, by what made it.
VM, VCPU, PTR, INT, LONG = "struct kvm_vm *", "struct kvm_vcpu *", "char *", "int", "long"


def ref_number(ref: Ref, ctypes: dict[str, str], names: dict[str, str]) -> str:
    """A bound value as a number in a kselftest (a VM's or vCPU's fd, a pointer's address)."""
    ctype = ctypes.get(ref.var, LONG)
    var = names[ref.var]
    base = {VM: f"{var}->fd", VCPU: f"{var}->fd", PTR: f"(uintptr_t){var}"}.get(ctype, var)
    if not ref.delta:
        return base
    return f"({base}{_delta(ref.delta, plain=True)})"


class KselftestArgs(Args):
    """Arguments as a kernel selftest writes them; `ctypes` gives each variable's type."""

    def __init__(self, sp: StepPlan, ctypes: dict[str, str], names: dict[str, str]) -> None:
        super().__init__(sp)
        self.ctypes = ctypes  # by plan variable
        self.names = names  # plan variable -> C name

    def name(self, ref: Ref) -> str:
        return self.names[ref.var]

    def ref_number(self, ref: Ref) -> str:
        return ref_number(ref, self.ctypes, self.names)

    def num(self, name: str) -> str:
        """An integer argument (flags by their kernel names)."""
        v = self.value(name)
        if isinstance(v, Ref):
            return self.ref_number(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return self._literal_int(name, v)
        raise Refused(f"argument {name} = {v!r} has no C spelling here")

    def ptr(self, name: str) -> str:
        """An address argument, as a pointer."""
        v = self.value(name)
        if isinstance(v, Ref):
            if self.ctypes.get(v.var) == PTR:
                return self.name(v) + _delta(v.delta, plain=True)
            return f"(char *)(uintptr_t){self.ref_number(v)}"
        if v == 0:
            return "NULL"
        return f"(char *){c_int(int(v), 64, False)}"

    def indexed(self, name: str) -> tuple[str, int] | None:
        """(pointer variable, offset) when an address argument is one: a[0x1000 + i]."""
        v = self.value(name)
        if isinstance(v, Ref) and self.ctypes.get(v.var) == PTR and v.delta >= 0:
            return self.name(v), v.delta
        return None

    def byte(self, name: str) -> str:
        """The byte an address argument points at, as an lvalue: a[0x1000]."""
        v = self.value(name)
        if isinstance(v, Ref) and self.ctypes.get(v.var) == PTR and v.delta >= 0:
            return f"{self.name(v)}[{v.delta:#x}]" if v.delta else f"{self.name(v)}[0]"
        return f"*({self.ptr(name)})"

    def obj(self, name: str, ctype: str) -> str | None:
        """The kvm_util object (VM or vCPU) an argument names, if it names one as it is."""
        v = self.value(name)
        if isinstance(v, Ref) and not v.delta and self.ctypes.get(v.var) == ctype:
            return self.name(v)
        return None

    def seq(self, name: str) -> list[str]:
        return [self.ref_number(v) if isinstance(v, Ref) else c_int(v, 64, False)
                for v in tuple(self.value(name) or ())]
