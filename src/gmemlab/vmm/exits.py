"""KVM_RUN exits as typed values, decoded from the vCPU's kvm_run page.

One class per exit the run loop reports.  They are small slotted classes
(not dataclasses) because the run loop creates one per exit and an exit costs
only ~10 µs of kernel time here: construction must stay well under a
microsecond.
"""

from __future__ import annotations

from typing import Any

from .. import uapi

_IO = uapi.KVM_RUN_IO
_MMIO = uapi.KVM_RUN_MMIO
_FAULT = uapi.KVM_RUN_MEMORY_FAULT
_HC = uapi.KVM_RUN_HYPERCALL
_INTERNAL = uapi.KVM_RUN_INTERNAL
_FAIL = uapi.KVM_RUN_FAIL_ENTRY
_EXC = uapi.KVM_RUN_EXCEPTION
_SYSEV = uapi.KVM_RUN_SYSTEM_EVENT
OFF = uapi.KVM_RUN_EXIT_OFFSET


class Exit:
    """Base of every exit; `reason` is the kvm_run exit_reason number."""

    __slots__: tuple[str, ...] = ()
    reason: int = -1
    name: str = "exit"

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in type(self).__slots__}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) and v > 9
                          else f"{k}={v!r}" for k, v in self.fields().items())
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.fields() == other.fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.fields().values())))


class IoExit(Exit):
    """KVM_EXIT_IO: an in or out instruction (count > 1 for string I/O).

    For an out, `data` holds the size * count bytes written.  For an in,
    `data_offset` is where in kvm_run the guest will read its answer
    (Vcpu.answer_in writes it).
    """

    __slots__ = ("count", "data", "data_offset", "out", "port", "size")
    reason = uapi.KVM_EXIT_IO
    name = "io"

    def __init__(self, out: bool, size: int, port: int, count: int, data_offset: int,
                 data: bytes) -> None:
        self.out = out
        self.size = size
        self.port = port
        self.count = count
        self.data_offset = data_offset
        self.data = data

    @property
    def value(self) -> int:
        """The first item written by an out, as an integer."""
        return int.from_bytes(self.data[:self.size], "little")


class MmioExit(Exit):
    """KVM_EXIT_MMIO: a guest access no memslot could serve."""

    __slots__ = ("data", "gpa", "length", "write")
    reason = uapi.KVM_EXIT_MMIO
    name = "mmio"

    def __init__(self, gpa: int, length: int, write: bool, data: bytes) -> None:
        self.gpa = gpa
        self.length = length
        self.write = write
        self.data = data


class HltExit(Exit):
    __slots__ = ()
    reason = uapi.KVM_EXIT_HLT
    name = "hlt"


class ShutdownExit(Exit):
    """KVM_EXIT_SHUTDOWN: a triple fault (or a shutdown cycle)."""

    __slots__ = ()
    reason = uapi.KVM_EXIT_SHUTDOWN
    name = "shutdown"


class FailEntryExit(Exit):
    __slots__ = ("cpu", "hardware_reason")
    reason = uapi.KVM_EXIT_FAIL_ENTRY
    name = "fail_entry"

    def __init__(self, hardware_reason: int, cpu: int) -> None:
        self.hardware_reason = hardware_reason
        self.cpu = cpu


class InternalErrorExit(Exit):
    """KVM_EXIT_INTERNAL_ERROR: suberror 1 is an instruction the emulator could not handle."""

    __slots__ = ("data", "suberror")
    reason = uapi.KVM_EXIT_INTERNAL_ERROR
    name = "internal_error"

    def __init__(self, suberror: int, data: tuple[int, ...]) -> None:
        self.suberror = suberror
        self.data = data


class MemoryFaultExit(Exit):
    """KVM_EXIT_MEMORY_FAULT, which KVM_RUN reports with -1/EFAULT (or EHWPOISON)."""

    __slots__ = ("errno", "flags", "gpa", "size")
    reason = uapi.KVM_EXIT_MEMORY_FAULT
    name = "memory_fault"

    def __init__(self, flags: int, gpa: int, size: int, errno: int) -> None:
        self.flags = flags
        self.gpa = gpa
        self.size = size
        self.errno = errno

    @property
    def private(self) -> bool:
        return bool(self.flags & uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE)


class HypercallExit(Exit):
    """KVM_EXIT_HYPERCALL (only KVM_HC_MAP_GPA_RANGE, once enabled)."""

    __slots__ = ("args", "flags", "nr", "ret")
    reason = uapi.KVM_EXIT_HYPERCALL
    name = "hypercall"

    def __init__(self, nr: int, args: tuple[int, ...], ret: int, flags: int) -> None:
        self.nr = nr
        self.args = args
        self.ret = ret
        self.flags = flags


class ExceptionExit(Exit):
    __slots__ = ("error_code", "exception")
    reason = uapi.KVM_EXIT_EXCEPTION
    name = "exception"

    def __init__(self, exception: int, error_code: int) -> None:
        self.exception = exception
        self.error_code = error_code


class SystemEventExit(Exit):
    __slots__ = ("data", "type")
    reason = uapi.KVM_EXIT_SYSTEM_EVENT
    name = "system_event"

    def __init__(self, type: int, data: tuple[int, ...]) -> None:
        self.type = type
        self.data = data


class OtherExit(Exit):
    """An exit reason the run loop has no class for (its number is kept)."""

    __slots__ = ("code",)
    name = "other"

    def __init__(self, code: int) -> None:
        self.code = code

    @property
    def label(self) -> str:
        return uapi.EXIT_NAMES.get(self.code, f"exit {self.code}")


def decode(run: Any, reason: int) -> Exit:
    """The exit KVM_RUN left in `run` (a buffer over the kvm_run page)."""
    if reason == uapi.KVM_EXIT_IO:
        direction, size, port, count, data_offset = _IO.unpack_from(run, OFF)
        n = size * count
        out = direction == uapi.KVM_EXIT_IO_OUT
        data = bytes(run[data_offset:data_offset + n]) if out else b""
        return IoExit(out, size, port, count, data_offset, data)
    if reason == uapi.KVM_EXIT_MMIO:
        gpa, raw, length, write = _MMIO.unpack_from(run, OFF)
        return MmioExit(gpa, length, bool(write), raw[:length] if write else b"")
    if reason == uapi.KVM_EXIT_HLT:
        return HltExit()
    if reason == uapi.KVM_EXIT_SHUTDOWN:
        return ShutdownExit()
    if reason == uapi.KVM_EXIT_FAIL_ENTRY:
        return FailEntryExit(*_FAIL.unpack_from(run, OFF))
    if reason == uapi.KVM_EXIT_INTERNAL_ERROR:
        suberror, ndata = _INTERNAL.unpack_from(run, OFF)
        words = tuple(int.from_bytes(run[OFF + 8 + 8 * i:OFF + 16 + 8 * i], "little")
                      for i in range(min(ndata, 16)))
        return InternalErrorExit(suberror, words)
    if reason == uapi.KVM_EXIT_HYPERCALL:
        nr, *rest = _HC.unpack_from(run, OFF)
        return HypercallExit(nr, tuple(rest[:6]), rest[6], rest[7])
    if reason == uapi.KVM_EXIT_MEMORY_FAULT:
        flags, gpa, size = _FAULT.unpack_from(run, OFF)
        return MemoryFaultExit(flags, gpa, size, 0)
    if reason == uapi.KVM_EXIT_EXCEPTION:
        return ExceptionExit(*_EXC.unpack_from(run, OFF))
    if reason == uapi.KVM_EXIT_SYSTEM_EVENT:
        kind, ndata = _SYSEV.unpack_from(run, OFF)
        words = tuple(int.from_bytes(run[OFF + 8 + 8 * i:OFF + 16 + 8 * i], "little")
                      for i in range(min(ndata, 16)))
        return SystemEventExit(kind, words)
    return OtherExit(reason)
