"""The three ways an operation can fail, shared by both kernels.

* ``OSError`` with the kernel's errno: what the system call or ioctl returned.
* ``MemorySignal``: a host load or store that the kernel would answer with
  SIGBUS or SIGSEGV.  The model raises it where the real process would die;
  the host kernel detects the fault before touching the page, so neither
  crashes the interpreter.
* ``UsageError``: the call itself is malformed (a string where a size belongs,
  a value that no C type of the uAPI can hold, an unknown operation).  No
  kernel ever sees such a call, so it has no errno.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import uapi


class MemorySignal(Exception):
    """A host memory access that the kernel answers with a signal."""

    def __init__(self, signo: int, addr: int, why: str = "") -> None:
        self.signo = signo
        self.addr = addr
        self.why = why
        super().__init__(f"{self.signal_name} at {addr:#x}" + (f": {why}" if why else ""))

    @property
    def signal_name(self) -> str:
        return uapi.signal_name(self.signo)


class UsageError(ValueError):
    """A malformed call: wrong type, out of range for its C type, unknown name."""


class ConversionError(OSError):
    """A conversion the kernel refused part-way (KVM_SET_MEMORY_ATTRIBUTES2's
    EAGAIN): error_offset is the byte offset of the page that stopped it,
    which the ioctl reports in struct kvm_memory_attributes2."""

    def __init__(self, number: int, text: str, error_offset: int) -> None:
        super().__init__(number, text)
        self.error_offset = error_offset


def kernel_error(number: int, why: str = "") -> OSError:
    """An OSError as the kernel would give it, with an optional explanation."""
    text = os.strerror(number)
    if why:
        text = f"{text} ({why})"
    return OSError(number, text)


def internal_error_line(exc: BaseException, program: str = "gmemlab") -> str:
    """One line for an exception gmemlab did not expect: what it was, where, what to report."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return (f"{program}: internal error: {type(exc).__name__}: {exc}{where}. This is a bug in "
            "gmemlab: please report it with the command you ran and the output of `gmemlab host`")


def script_main(main: Callable[[], int | None], program: str) -> None:
    """Run an example's or a benchmark's main(): exit 2 with one line for a bad input or
    an internal error, never a traceback."""
    try:
        code = main()
    except UsageError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        print(f"{program}: {exc.strerror or exc} (errno {uapi.errno_name(exc.errno or 0)})",
              file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        print(internal_error_line(exc, program), file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
