"""One differential step: the call on both kernels, their outcomes, and its case-file form.

Both kernels see the same call with their own fds and addresses: a `Ref`
names a handle (an fd or a mapped region) plus an offset and resolves to each
kernel's number, and to "$name+0x..." in the case file.  Outcomes are
compared after normalising what legitimately differs (fd numbers, addresses,
inode and device numbers).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import Any

from .. import uapi
from ..errors import MemorySignal, UsageError
from ..interface import GuestAccess, Stat

Side = str  # "a" (the first kernel of the pair) or "b" (the second: the reference)


@dataclass(eq=False)
class Handle:
    """An fd both kernels hold, under one case-file name."""

    name: str
    kind: str  # "kvm", "vm", "gmem", "memfd", "vcpu"
    a: int  # the fd on each kernel of the pair
    b: int
    vm: Handle | None = None  # the VM of a guest_memfd or vCPU

    def on(self, side: Side) -> int:
        return self.a if side == "a" else self.b


@dataclass(eq=False)
class Region:
    """A range of address space both kernels mapped, kept mapped until munmap retires it."""

    name: str
    a: int  # the address on each kernel of the pair
    b: int
    pages: int

    def on(self, side: Side) -> int:
        return self.a if side == "a" else self.b


@dataclass(frozen=True)
class Ref:
    """A handle's number (plus an offset) on each kernel."""

    target: Handle | Region
    offset: int = 0

    def on(self, side: Side) -> int:
        return self.target.on(side) + self.offset

    def text(self) -> str:
        name = f"${self.target.name}"
        return f"{name}+{self.offset:#x}" if self.offset else name


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok", "errno", "signal", "usage"
    value: Any = None  # what is compared
    raw: Any = None  # the result itself (an fd or address to bind)
    text: str = ""

    @property
    def key(self) -> tuple[str, Any]:
        """What must be equal on both kernels (not the fd or address itself)."""
        return (self.kind, self.value)

    def describe(self) -> str:
        if self.kind == "errno":
            return f"errno {uapi.errno_name(self.value)}"
        if self.kind == "signal":
            return uapi.signal_name(self.value)
        if self.kind == "usage":
            return f"refused as a malformed call ({self.text})"
        return f"returned {_show(self.value)}"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return value[:32].hex() + ("..." if len(value) > 32 else "")
    if value is None:
        return "a new fd or address"
    return repr(value)


def run_side(kernel: Any, op: str, args: dict[str, Any], fresh: bool) -> Outcome:
    """Call op and normalise its outcome; `fresh`: the result is a new fd or address."""
    try:
        result = getattr(kernel, op)(**args)
    except UsageError as exc:
        return Outcome("usage", text=str(exc))
    except MemorySignal as sig:
        return Outcome("signal", sig.signo)
    except OSError as exc:
        return Outcome("errno", exc.errno)
    if fresh:
        return Outcome("ok", None, result)
    if isinstance(result, Stat):
        # A device node's permission bits are the distribution's (udev), not the kernel's.
        mode = stat.S_IFMT(result.mode) if stat.S_ISCHR(result.mode) else result.mode
        return Outcome("ok", (result.size, mode, result.blksize, result.blocks,
                              result.nlink), result)
    if isinstance(result, GuestAccess):
        return Outcome("ok", result.as_table(), result)
    return Outcome("ok", result, result)


@dataclass
class Step:
    op: str
    args: dict[str, Any]
    bind: str | None = None
    outcomes: dict[Side, Outcome] = field(default_factory=dict)

    def resolve(self, side: Side) -> dict[str, Any]:
        return {k: (v.on(side) if isinstance(v, Ref) else v) for k, v in self.args.items()}

    @property
    def agreed(self) -> bool:
        if len(self.outcomes) < 2:
            return True
        return self.outcomes["a"].key == self.outcomes["b"].key


def _value(v: Any) -> str:
    if isinstance(v, Ref):
        return f'"{v.text()}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:#x}" if v >= 4096 else str(v)
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} in a case file")


def _expectation(outcome: Outcome, op: str, full: bool) -> dict[str, Any]:
    if outcome.kind == "errno":
        return {"errno": uapi.errno_name(outcome.value)}
    if outcome.kind == "signal":
        return {"signal": uapi.signal_name(outcome.value)}
    if not full or outcome.kind != "ok" or outcome.value is None:
        return {}
    value = outcome.value
    if isinstance(value, bytes):
        return {"bytes_hex": value.hex()}
    if op == "guest_access":
        table = dict(value)
        if table.get("exit") == "none" and table.get("data_hex"):
            return {"bytes_hex": table["data_hex"]}
        table.pop("data_hex", None)
        return {"ret": table}
    if op == "fstat":
        size, mode, blksize, blocks, nlink = value
        table = {"size": size, "mode": mode, "blksize": blksize, "blocks": blocks, "nlink": nlink}
        if stat.S_ISCHR(mode):
            del table["mode"]  # only its file type was compared (run_side)
        return {"ret": table}
    if isinstance(value, bool):
        return {}
    if isinstance(value, int):
        return {"ret": value}
    return {}


def render_step(step: Step, reference: Side, full: bool) -> str:
    """The step as a CASES.md inline table, expecting the reference kernel's outcome."""
    parts = [f'op = "{step.op}"']
    for key, value in step.args.items():
        if key == "data":
            parts.append(f'data_hex = "{value.hex()}"')
        else:
            parts.append(f"{key} = {_value(value)}")
    outcome = step.outcomes[reference]
    if step.bind and outcome.kind == "ok":
        parts.append(f'as = "{step.bind}"')
    for key, value in _expectation(outcome, step.op, full).items():
        parts.append(f"{key} = {_value(value)}")
    return "  {" + ", ".join(parts) + "},"


def render_case(steps: list[Step], case_id: str, reference: Side, requires: list[str],
                about: str, labels: dict[Side, str], header: dict[str, str] | None = None) -> str:
    """A runnable case file: every step up to the divergence, the last one expecting
    the reference kernel's outcome, with both outcomes in a comment."""
    pair = " against ".join(labels[s] for s in ("a", "b"))
    lines = [f"# Found by gmemlab fuzz (differential: {pair}).", "", "[[case]]",
             f'id = "{case_id}"', f'about = "{about}"']
    lines.extend(f'{key} = "{value}"' for key, value in (header or {}).items())
    if requires:
        lines.append("requires = [" + ", ".join(f'"{r}"' for r in requires) + "]")
    lines.append("steps = [")
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if step.outcomes[reference].kind == "usage" and not last:
            continue  # refused by both: no kernel saw it
        if last:
            for side, outcome in step.outcomes.items():
                lines.append(f"  # {labels[side]}: {outcome.describe()}")
        lines.append(render_step(step, reference, full=last))
    lines.append("]")
    return "\n".join(lines) + "\n"
