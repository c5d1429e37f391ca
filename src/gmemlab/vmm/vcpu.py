"""A vCPU: its kvm_run page, registers, CPUID, and the run loop's one step.

`Vcpu.run()` is one KVM_RUN, returned as a typed exit (exits.py).  EINTR is
handled here: a signal that interrupted the guest is retried after Python's
handlers had their turn, the run timer's signal ends the run with
GuestTimeout.  A memory-fault exit, which KVM reports by failing KVM_RUN
with EFAULT (or EHWPOISON) and exit_reason 39, is returned as an exit like
the others; any other failure of KVM_RUN is an OSError.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence

from .. import libc, uapi
from . import timer
from .errors import GuestTimeout
from .exits import Exit, IoExit, MemoryFaultExit, decode
from .regs import Regs, Sregs

KVM_DEV = "/dev/kvm"
_RUN = uapi.KVM_RUN
_IO = uapi.KVM_RUN_IO
_EXIT_IO = uapi.KVM_EXIT_IO
_EXIT_OUT = uapi.KVM_EXIT_IO_OUT
_EXIT_OFF = uapi.KVM_RUN_EXIT_OFFSET
_EXIT_REASON_WORD = 2  # exit_reason is the u32 at byte 8 of kvm_run


def vcpu_mmap_size(kvm_fd: int) -> int:
    return libc.ioctl_int(kvm_fd, uapi.KVM_GET_VCPU_MMAP_SIZE, 0)


CpuidEntry = tuple[int, int, int, int, int, int, int]  # function, index, flags, eax, ebx, ecx, edx


def supported_cpuid(kvm_fd: int) -> list[CpuidEntry]:
    """KVM_GET_SUPPORTED_CPUID: every leaf KVM can give a guest."""
    n = 64
    while True:
        buf = bytearray(uapi.KVM_CPUID2_HEADER.pack(n, 0)) + \
            bytearray(n * uapi.KVM_CPUID_ENTRY2_STRUCT.size)
        try:
            libc.ioctl_buf(kvm_fd, uapi.KVM_GET_SUPPORTED_CPUID, buf)
        except OSError as exc:
            if exc.errno == errno.E2BIG and n < 4 * uapi.KVM_MAX_CPUID_ENTRIES:
                n *= 2
                continue
            raise
        count = uapi.KVM_CPUID2_HEADER.unpack_from(buf, 0)[0]
        size = uapi.KVM_CPUID_ENTRY2_STRUCT.size
        return [uapi.KVM_CPUID_ENTRY2_STRUCT.unpack_from(buf, 8 + i * size) for i in range(count)]


def phys_bits(entries: Sequence[CpuidEntry]) -> int:
    """MAXPHYADDR a guest with these CPUID leaves has (36 without leaf 0x80000008)."""
    for function, _index, _flags, eax, *_ in entries:
        if function == 0x80000008 and eax & 0xFF:
            return eax & 0xFF
    return 36


class Vcpu:
    """A vCPU fd with its kvm_run page mapped.

    The fd is the caller's unless `owns_fd`; close() (or garbage collection)
    unmaps kvm_run, deletes the run timer and, if owned, closes the fd.
    """

    def __init__(self, fd: int, mmap_size: int, owns_fd: bool = False) -> None:
        self.fd = fd
        self._size = mmap_size
        self._addr = libc.mmap(0, mmap_size, uapi.PROT_READ | uapi.PROT_WRITE, uapi.MAP_SHARED, fd, 0)
        page = (ctypes.c_char * mmap_size).from_address(self._addr)
        self._mv: memoryview = memoryview(page).cast("B")  # type: ignore[arg-type]
        self._u32 = self._mv.cast("I")
        self._timer: timer.ThreadTimer | None = None
        self._signal_thread: int | None = None
        self._deadline: float | None = None
        self._timeout = 0.0
        self._state: list[timer.ThreadTimer | None] = [None]
        self._finalizer = weakref.finalize(self, Vcpu._release, self._addr, mmap_size,
                                           fd if owns_fd else -1, self._state)

    @classmethod
    def create(cls, vm_fd: int, vcpu_id: int = 0, kvm_fd: int | None = None) -> Vcpu:
        """KVM_CREATE_VCPU on vm_fd; the new vCPU owns its fd."""
        own_kvm = kvm_fd is None
        kvm = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC) if kvm_fd is None else kvm_fd
        try:
            size = vcpu_mmap_size(kvm)
            fd = libc.ioctl_int(vm_fd, uapi.KVM_CREATE_VCPU, vcpu_id)
        finally:
            if own_kvm:
                os.close(kvm)
        try:
            return cls(fd, size, owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _release(addr: int, size: int, fd: int, state: list[timer.ThreadTimer | None]) -> None:
        with contextlib.suppress(OSError):
            libc.munmap(addr, size)
        if state[0] is not None:
            state[0].delete()
            state[0] = None
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        if self._finalizer.alive:
            self._u32.release()
            self._mv.release()
            self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- registers --------------------------------------------------------------------------

    def get_regs(self) -> Regs:
        buf = bytearray(uapi.KVM_REGS_STRUCT.size)
        fcntl.ioctl(self.fd, uapi.KVM_GET_REGS, buf, True)
        return Regs.unpack(buf)

    def set_regs(self, regs: Regs) -> None:
        fcntl.ioctl(self.fd, uapi.KVM_SET_REGS, regs.pack(), True)

    def get_sregs(self) -> Sregs:
        buf = bytearray(uapi.KVM_SREGS_SIZE)
        fcntl.ioctl(self.fd, uapi.KVM_GET_SREGS, buf, True)
        return Sregs.unpack(buf)

    def set_sregs(self, sregs: Sregs) -> None:
        fcntl.ioctl(self.fd, uapi.KVM_SET_SREGS, sregs.pack(), True)

    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        """KVM_SET_CPUID2 (before the first KVM_RUN)."""
        buf = bytearray(uapi.KVM_CPUID2_HEADER.pack(len(entries), 0))
        for entry in entries:
            buf += uapi.KVM_CPUID_ENTRY2_STRUCT.pack(*entry)
        libc.ioctl_buf(self.fd, uapi.KVM_SET_CPUID2, buf)

    # --- running ------------------------------------------------------------------------------

    def run(self) -> Exit:
        """One KVM_RUN; the exit it ended with."""
        u32 = self._u32
        while True:
            u32[_EXIT_REASON_WORD] = 0  # so a failing KVM_RUN cannot show a stale reason
            try:
                fcntl.ioctl(self.fd, _RUN, 0)
            except OSError as exc:
                result = self._failed(exc)
                if result is None:
                    continue
                return result
            reason = u32[_EXIT_REASON_WORD]
            if reason == _EXIT_IO:
                # The hot path of every port-I/O protocol, decoded inline.
                mv = self._mv
                direction, size, port, count, data_offset = _IO.unpack_from(mv, _EXIT_OFF)
                if direction == _EXIT_OUT:
                    data = mv[data_offset:data_offset + size * count].tobytes()
                    return IoExit(True, size, port, count, data_offset, data)
                return IoExit(False, size, port, count, data_offset, b"")
            return decode(self._mv, reason)

    def _failed(self, exc: OSError) -> Exit | None:
        """What a failed KVM_RUN means: an exit, None to run again, or raise."""
        if exc.errno == errno.EINTR:
            fired = timer.drain()
            if self._deadline is not None and (fired or time.monotonic() >= self._deadline):
                rip = None
                with contextlib.suppress(OSError):
                    rip = self.get_regs().rip
                raise GuestTimeout(self._timeout, rip) from None
            return None
        if exc.errno in (errno.EFAULT, uapi.EHWPOISON) and \
                self._u32[_EXIT_REASON_WORD] == uapi.KVM_EXIT_MEMORY_FAULT:
            flags, gpa, size = uapi.KVM_RUN_MEMORY_FAULT.unpack_from(self._mv, _EXIT_OFF)
            return MemoryFaultExit(flags, gpa, size, exc.errno)
        raise exc

    def answer_in(self, exit: IoExit, data: bytes) -> None:
        """The bytes an in instruction reads when the vCPU runs again."""
        if exit.out or len(data) != exit.size * exit.count:
            raise ValueError(f"an in of {exit.size} x {exit.count} bytes needs that many bytes")
        self._mv[exit.data_offset:exit.data_offset + len(data)] = data

    def complete_pending(self) -> None:
        """Finish the instruction an MMIO or I/O exit left pending, without running the guest.

        KVM_RUN with immediate_exit completes the pending userspace I/O and
        returns EINTR before entering the guest, so registers can be changed
        safely afterwards (Documentation/virt/kvm/api.rst, immediate_exit).
        """
        self._mv[uapi.KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 1
        try:
            fcntl.ioctl(self.fd, _RUN, 0)
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise
        finally:
            self._mv[uapi.KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 0

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Within the block, run() raises GuestTimeout once `seconds` have passed."""
        if seconds <= 0:
            raise ValueError("a deadline must be positive")
        self._prepare_timer()
        assert self._timer is not None
        self._timeout = seconds
        self._deadline = time.monotonic() + seconds
        self._timer.arm(seconds)
        try:
            yield
        finally:
            self._timer.disarm()
            self._deadline = None
            timer.drain()

    def run_for(self, seconds: float) -> Exit:
        """One KVM_RUN bounded in time."""
        with self.deadline(seconds):
            return self.run()

    def _prepare_timer(self) -> None:
        thread = threading.get_ident()
        if self._signal_thread == thread:
            return
        timer.block_run_signal()
        mask = timer.run_sigmask()
        buf = bytearray(uapi.KVM_SIGNAL_MASK_HEADER.pack(len(mask)) + mask)
        libc.ioctl_buf(self.fd, uapi.KVM_SET_SIGNAL_MASK, buf)
        if self._timer is not None:
            self._timer.delete()
        self._timer = timer.ThreadTimer()
        self._state[0] = self._timer
        self._signal_thread = thread

    def __repr__(self) -> str:
        return f"Vcpu(fd={self.fd}{', closed' if self.closed else ''})"
