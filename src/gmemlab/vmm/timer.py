"""Bounding KVM_RUN in time without a signal handler.

A guest that never exits would keep KVM_RUN (and the caller) forever.  The
technique is QEMU's: a dedicated real-time signal is kept blocked in the
thread that runs the vCPU, and KVM_SET_SIGNAL_MASK gives KVM_RUN a mask in
which it is unblocked.  A POSIX timer aimed at that thread (SIGEV_THREAD_ID)
raises the signal at the deadline; KVM_RUN sees it pending and returns EINTR;
back in userspace the signal is blocked again, so it is never delivered to a
handler (none is installed, and the interpreter's own handlers are never
touched), and the run loop consumes it with sigtimedwait.

This works in any thread, costs two timer_settime calls per bounded run and
nothing per exit.  A deadline that passes while the thread is in Python
between two KVM_RUN calls is not lost: the signal stays pending and the next
KVM_RUN returns EINTR at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

from .. import uapi

# glibc takes SIGRTMIN and SIGRTMIN+1 for itself; Python reports the first
# free one as signal.SIGRTMIN.  gmemlab keeps this one blocked in vCPU threads.
RUN_SIGNAL = signal.SIGRTMIN + 7

_libc = ctypes.CDLL(None, use_errno=True)
CLOCK_MONOTONIC = 1
SIGEV_THREAD_ID = 4


class _SigEvent(ctypes.Structure):
    # struct sigevent on x86-64 glibc: sigval (8), signo, notify, then a
    # 48-byte union whose first int is the thread id for SIGEV_THREAD_ID.
    _fields_ = [("value", ctypes.c_uint64), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("tid", ctypes.c_int), ("pad", ctypes.c_int * 11)]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


assert ctypes.sizeof(_SigEvent) == 64
assert ctypes.sizeof(_ITimerSpec) == 32

_timer_create = _libc.timer_create
_timer_create.argtypes = [ctypes.c_int, ctypes.POINTER(_SigEvent), ctypes.POINTER(ctypes.c_void_p)]
_timer_create.restype = ctypes.c_int
_timer_settime = _libc.timer_settime
_timer_settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_ITimerSpec),
                           ctypes.c_void_p]
_timer_settime.restype = ctypes.c_int
_timer_delete = _libc.timer_delete
_timer_delete.argtypes = [ctypes.c_void_p]
_timer_delete.restype = ctypes.c_int


def _fail() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def block_run_signal() -> None:
    """Block RUN_SIGNAL in the calling thread (idempotent)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {RUN_SIGNAL})


def run_sigmask() -> bytes:
    """The kernel sigset KVM_RUN should run with: this thread's mask without RUN_SIGNAL."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    bits = 0
    for sig in blocked:
        if sig != RUN_SIGNAL:
            bits |= 1 << (int(sig) - 1)
    return bits.to_bytes(uapi.KERNEL_SIGSET_SIZE, "little")


def drain() -> bool:
    """Consume a pending RUN_SIGNAL; True if there was one."""
    return signal.sigtimedwait({RUN_SIGNAL}, 0) is not None


class ThreadTimer:
    """A one-shot POSIX timer that raises RUN_SIGNAL in one thread."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        event = _SigEvent(value=0, signo=RUN_SIGNAL, notify=SIGEV_THREAD_ID,
                          tid=threading.get_native_id())
        timer = ctypes.c_void_p()
        if _timer_create(CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) < 0:
            raise _fail()
        self._timer: int | None = timer.value or 0

    def arm(self, seconds: float) -> None:
        """Fire once after `seconds` (0 disarms)."""
        if self._timer is None:
            raise ValueError("timer deleted")
        sec = int(seconds)
        nsec = int((seconds - sec) * 1e9)
        if seconds > 0 and sec == 0 and nsec == 0:
            nsec = 1
        spec = _ITimerSpec(_TimeSpec(0, 0), _TimeSpec(sec, nsec))
        if _timer_settime(self._timer, 0, ctypes.byref(spec), None) < 0:
            raise _fail()

    def disarm(self) -> None:
        self.arm(0)

    def delete(self) -> None:
        if self._timer is not None:
            _timer_delete(self._timer)
            self._timer = None
