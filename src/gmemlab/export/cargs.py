"""A step's arguments as C expressions, for the emitters of each flavour.

The plan holds every argument checked and converted to its C type (or a Ref
to a bound value).  Standalone exports pass each through gmemlab's runtime,
where a Ref is range-checked as interface.CInt does in Python; kselftest
exports write what a kernel developer writes: the variable, the kernel's
flag names, NULL for a null address.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
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


def s_ref(ref: Ref) -> str:
    """A bound number in the standalone program, as an __int128 expression: the variable,
    or the field of a stored table result, plus the offset, rounded up by align_up."""
    if ref.field is not None:
        base = f"gl_field_num(&{ref.var}, {c_string(ref.field)}, {c_string(ref.name)})"
    else:
        base = f"(__int128){ref.var}"
    expr = base + delta128(ref.delta)
    if ref.align is not None:
        if ref.align >= 1 << 63:
            raise Refused(f"an alignment of {ref.align:#x} does not fit 63 bits")
        expr = f"gl_align_up({expr}, {c_int(ref.align)})"
    return expr


class StandaloneArgs(Args):
    """Arguments for gmemlab's C runtime (gl_* functions)."""

    def ref(self, ref: Ref, name: str, t: CInt | None) -> str:
        plain = ref.field is None and ref.align is None
        if plain and (t is None or (not ref.delta and (
                (ref.fd and t.bits >= 32) or (t.bits == 64 and t.limit is None)))):
            return ref.var + _delta(ref.delta)
        if t is None:
            return f"(int64_t)({s_ref(ref)})"
        return (f"gl_fit({s_ref(ref)}, {t.bits}, {int(t.signed)}, "
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

    def seq(self, name: str) -> tuple[str, str]:
        """A list of u64: a compound literal and its length (or a bound node mask's words)."""
        value = self.value(name)
        if isinstance(value, Ref):
            if value.kind != "list" or value.field is None:
                raise Refused(f"argument {name} = {value.show()} has no C spelling here")
            return f"(const uint64_t *){value.var}.words", f"{value.var}.nwords"
        items = tuple(value or ())
        if not items:
            return "NULL", "0"
        parts = [self.ref(v, f"{name}[{i}]", CInt("u64", 64, False)) if isinstance(v, Ref)
                 else c_int(v, 64, False) for i, v in enumerate(items)]
        return f"(const uint64_t[]){{{', '.join(parts)}}}", str(len(items))


# The C type a kselftest binding has, by what made it (POLICY: get_mempolicy's mode and
# node mask, as NAME_mode and NAME_nodes).
VM, VCPU, PTR, INT, LONG, STAT, POLICY = ("struct kvm_vm *", "struct kvm_vcpu *", "char *", "int",
                                          "long", "struct stat", "policy")
STAT_FIELDS = {"size": "st_size", "mode": "st_mode", "blksize": "st_blksize", "blocks": "st_blocks",
               "nlink": "st_nlink", "ino": "st_ino", "dev": "st_dev"}


@dataclass
class Table:
    """A table result in a kselftest: its kind and where its values are."""

    kind: str  # "stat", "mempolicy" or "guest"
    lvalues: dict[str, str] = field(default_factory=dict)  # key -> C lvalue
    words: int = 0  # mempolicy: the node mask's words
    length: int = 0  # guest: the access's length


def _power_of_two(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def ref_number(ref: Ref, ctypes: dict[str, str], names: dict[str, str]) -> str:
    """A bound value as a number in a kselftest (a VM's or vCPU's fd, a pointer's address,
    a field of a bound fstat or get_mempolicy, rounded up by align_up)."""
    ctype = ctypes.get(ref.var, LONG)
    var = names[ref.var]
    if ref.field is not None:
        if ctype == STAT and ref.field in STAT_FIELDS:
            base = f"{var}.{STAT_FIELDS[ref.field]}"
        elif ctype == POLICY and ref.field == "mode":
            base = f"{var}_mode"
        else:
            raise Refused(f"{ref.show()} as a number")
    else:
        base = {VM: f"{var}->fd", VCPU: f"{var}->fd", PTR: f"(uintptr_t){var}"}.get(ctype, var)
    if ref.align is not None:
        value = f"{base}{_delta(ref.delta, plain=True)}"
        if _power_of_two(ref.align) and ref.align < 1 << 63:
            return f"align_up({value}, {ref.align:#x})"
        raise Refused(f"align_up to {ref.align:#x}, not a power of two")
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
            if self.ctypes.get(v.var) == PTR and v.field is None:
                if v.align is not None and _power_of_two(v.align) and v.align < 1 << 63:
                    return f"(char *)align_ptr_up({self.name(v)}{_delta(v.delta, plain=True)}, " \
                        f"{v.align:#x})"
                if v.align is None:
                    return self.name(v) + _delta(v.delta, plain=True)
            return f"(char *)(uintptr_t){self.ref_number(v)}"
        if v == 0:
            return "NULL"
        return f"(char *){c_int(int(v), 64, False)}"

    def indexed(self, name: str) -> tuple[str, int] | None:
        """(pointer variable, offset) when an address argument is one: a[0x1000 + i]."""
        v = self.value(name)
        if isinstance(v, Ref) and self.ctypes.get(v.var) == PTR and v.delta >= 0 \
                and v.field is None and v.align is None:
            return self.name(v), v.delta
        return None

    def byte(self, name: str) -> str:
        """The byte an address argument points at, as an lvalue: a[0x1000]."""
        v = self.value(name)
        if self.indexed(name) is not None and isinstance(v, Ref):
            return f"{self.name(v)}[{v.delta:#x}]" if v.delta else f"{self.name(v)}[0]"
        return f"*({self.ptr(name)})"

    def obj(self, name: str, ctype: str) -> str | None:
        """The kvm_util object (VM or vCPU) an argument names, if it names one as it is."""
        v = self.value(name)
        if isinstance(v, Ref) and not v.delta and v.field is None and v.align is None \
                and self.ctypes.get(v.var) == ctype:
            return self.name(v)
        return None

    def seq(self, name: str) -> list[str]:
        value = self.value(name)
        if isinstance(value, Ref):
            raise Refused(f"argument {name} = {value.show()}, a bound node mask")
        return [self.ref_number(v) if isinstance(v, Ref) else c_int(v, 64, False)
                for v in tuple(value or ())]
