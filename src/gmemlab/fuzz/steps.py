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
from ..conform import cases
from ..interface import GuestAccess, Stat
from ..outcome import ERRNO, RET, SIGNAL, USAGE, Outcome

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


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return value[:32].hex() + ("..." if len(value) > 32 else "")
    if value is None:
        return "a new fd or address"
    return repr(value)


def run_side(kernel: Any, op: str, args: dict[str, Any]) -> Outcome:
    """Call op on one kernel of the pair."""
    return Outcome.of(getattr(kernel, op), **args)


@dataclass
class Step:
    op: str
    args: dict[str, Any]
    bind: str | None = None
    outcomes: dict[Side, Outcome] = field(default_factory=dict)

    def resolve(self, side: Side) -> dict[str, Any]:
        return {k: (v.on(side) if isinstance(v, Ref) else v) for k, v in self.args.items()}

    def compared(self, side: Side) -> tuple[str, Any]:
        """What must be equal on both kernels: not an fd or address the call
        made, nor inode and device numbers, nor why a call is malformed."""
        out = self.outcomes[side]
        if out.kind == USAGE:
            return (USAGE, None)
        if out.kind != RET:
            return (out.kind, out.value)
        value = out.value
        if self.op == "mmap" and "addr" in self.args:
            # MAP_FIXED: what matters is that the mapping is where it was asked.
            return (RET, value == self.resolve(side)["addr"])
        if self.bind is not None:
            return (RET, None)
        if isinstance(value, Stat):
            # A device node's permission bits are the distribution's (udev), not the kernel's.
            mode = stat.S_IFMT(value.mode) if stat.S_ISCHR(value.mode) else value.mode
            return (RET, (value.size, mode, value.blksize, value.blocks, value.nlink))
        if isinstance(value, GuestAccess):
            return (RET, value.as_table())
        return (RET, value)

    def describe(self, side: Side) -> str:
        out = self.outcomes[side]
        if out.kind == ERRNO:
            return f"errno {uapi.errno_name(out.value)}"
        if out.kind == SIGNAL:
            return uapi.signal_name(out.value)
        if out.kind == USAGE:
            return f"refused as a malformed call ({out.value})"
        return f"returned {_show(self.compared(side)[1])}"

    @property
    def agreed(self) -> bool:
        if len(self.outcomes) < 2:
            return True
        return self.compared("a") == self.compared("b")


def _argument(v: Any) -> Any:
    """An argument as a case file spells it: handles become "$name+0x..."."""
    return v.text() if isinstance(v, Ref) else v


def _expectation(step: Step, side: Side, full: bool) -> dict[str, Any]:
    outcome, op = step.outcomes[side], step.op
    if outcome.kind == ERRNO:
        return {"errno": uapi.errno_name(outcome.value)}
    if outcome.kind == SIGNAL:
        return {"signal": uapi.signal_name(outcome.value)}
    value = step.compared(side)[1]
    if not full or outcome.kind != RET or value is None:
        return {}
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


def case_step(step: Step, reference: Side, full: bool, comment: str = "") -> cases.Step:
    """The step as a case file's step, expecting the reference kernel's outcome."""
    args = {("data_hex" if k == "data" else k): (v.hex() if k == "data" else _argument(v))
            for k, v in step.args.items()}
    outcome = step.outcomes[reference]
    bind = step.bind if step.bind and outcome.ok else None
    return cases.step(step.op, bind=bind, expect=_expectation(step, reference, full),
                      comment=comment, **args)


def render_case(steps: list[Step], case_id: str, reference: Side, requires: list[str],
                about: str, labels: dict[Side, str], header: dict[str, str] | None = None) -> str:
    """A runnable case file: every step up to the divergence, the last one expecting
    the reference kernel's outcome, with both outcomes in a comment."""
    pair = " against ".join(labels[s] for s in ("a", "b"))
    out: list[cases.Step] = []
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if step.outcomes[reference].kind == USAGE and not last:
            continue  # refused by both: no kernel saw it
        comment = "\n".join(f"{labels[side]}: {step.describe(side)}" for side in step.outcomes) \
            if last else ""
        out.append(case_step(step, reference, full=last, comment=comment))
    head = header or {}
    case = cases.Case(file="", id=case_id, about=about, kernel=head.get("kernel", "any"),
                      design=head.get("design", cases.DEFAULT_DESIGN), requires=tuple(requires),
                      steps=tuple(out))
    return cases.dumps([case], header=f"Found by gmemlab fuzz (differential: {pair}).\n")
