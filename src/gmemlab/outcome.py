"""How a call ended, the one way every layer says it.

A call on a kernel (the model or the host) returns a value, fails with an
errno (OSError), is answered with a signal (MemorySignal: the kernel's
SIGBUS or SIGSEGV for a memory access), or is refused as malformed
(UsageError) before it reaches any kernel.  The model's stepwise operations,
the checker's transitions, the fuzzer's two sides and the case runner all
classify a call the same way, here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import uapi
from .errors import MemorySignal, UsageError

RET, ERRNO, SIGNAL, USAGE = "ret", "errno", "signal", "usage"


@dataclass(frozen=True)
class Outcome:
    """kind "ret": value is what the call returned; "errno": the errno number;
    "signal": the signal number; "usage": why the call is malformed.  `error`
    keeps the exception itself (its message, a conversion's error_offset) and
    takes no part in comparisons."""

    kind: str
    value: Any = None
    error: BaseException | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, call: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Outcome:
        """Run call and say how it ended."""
        try:
            return cls(RET, call(*args, **kwargs))
        except UsageError as exc:
            return cls(USAGE, str(exc), exc)
        except MemorySignal as sig:
            return cls(SIGNAL, sig.signo, sig)
        except OSError as exc:
            return cls(ERRNO, exc.errno, exc)

    @property
    def ok(self) -> bool:
        return self.kind == RET

    def __str__(self) -> str:
        if self.kind == ERRNO:
            return uapi.errno_name(self.value)
        if self.kind == SIGNAL:
            return uapi.signal_name(self.value)
        if self.kind == USAGE:
            return f"bad call: {self.value}"
        if hasattr(self.value, "as_table"):
            return str(self.value.as_table())
        return repr(self.value)
