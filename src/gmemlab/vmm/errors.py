"""What can go wrong when running a guest, other than what KVM_RUN itself returns.

KVM_RUN failures (EFAULT without a memory-fault exit, EINVAL, ...) are
OSError like every other system call.  These are the run loop's own:
a guest that did not come back in time, or one that stopped in a way the
caller's protocol does not allow (a triple fault, an exception vector, an
exit nobody expected).
"""

from __future__ import annotations


class VmmError(RuntimeError):
    """The guest did something its program was not written to do."""


class GuestTimeout(VmmError):
    """The guest ran past its deadline without an exit (KVM_RUN interrupted by our timer)."""

    def __init__(self, seconds: float, rip: int | None = None) -> None:
        self.seconds = seconds
        self.rip = rip
        where = f" (rip {rip:#x})" if rip is not None else ""
        super().__init__(f"the guest did not exit within {seconds:g} s{where}")


class AssemblerMissing(VmmError):
    """GNU as is needed to build the guest programs and is not installed."""
