"""Make a divergence minimal by replaying it without steps.

Hypothesis shrinks the random choices, which removes many steps but leaves
some that only feed its choices (a VM created and closed, an fstat).  This
pass replays the recorded steps on fresh kernels, dropping one step at a
time and keeping the drop when the same divergence (same operation, same
kinds of outcome) still happens.  A step whose handle's creating step was
dropped (or failed in the replay) is dropped with it.
"""

from __future__ import annotations

from typing import Any

from .machine import REFERENCE, SIDES, KernelPair
from .steps import Handle, Ref, Region, Step, run_side


def replay(steps: list[Step], factories: KernelPair) -> list[Step]:
    """Run steps on fresh kernels; the steps that ran, up to the first divergence."""
    kernels = {"a": factories[0](), "b": factories[1]()}
    bound: dict[str, Handle | Region] = {}
    done: list[Step] = []
    try:
        for old in steps:
            if not _refs_bound(old.args, bound):
                continue
            step = Step(old.op, {k: _rebind(v, bound) for k, v in old.args.items()}, old.bind)
            for side in SIDES:
                step.outcomes[side] = run_side(kernels[side], step.op, step.resolve(side))
            done.append(step)
            if not step.agreed:
                break
            if step.bind and step.outcomes[REFERENCE].ok:
                bound[step.bind] = _new_target(old, step)
    finally:
        for kernel in kernels.values():
            kernel.shutdown()
    return done


def _refs_bound(args: dict[str, Any], bound: dict[str, Handle | Region]) -> bool:
    return all(v.target.name in bound for v in args.values() if isinstance(v, Ref))


def _rebind(value: Any, bound: dict[str, Handle | Region]) -> Any:
    if isinstance(value, Ref):
        return Ref(bound[value.target.name], value.offset)
    return value


def _new_target(old: Step, step: Step) -> Handle | Region:
    assert step.bind is not None
    a, b = step.outcomes["a"].value, step.outcomes["b"].value
    if old.op == "mmap":
        return Region(step.bind, a, b, max(1, step.args.get("length", 0) >> 12))
    return Handle(step.bind, "fd", a, b)


def signature(steps: list[Step]) -> tuple[str, str, str] | None:
    """What the divergence is: the operation and what each kernel answered."""
    if not steps or steps[-1].agreed:
        return None
    last = steps[-1]
    return (last.op, last.describe("a"), last.describe("b"))


def minimize(steps: list[Step], factories: KernelPair, budget: int = 400) -> list[Step]:
    """The shortest replay (greedily) that still ends in the same divergence."""
    target = signature(steps)
    best = replay(steps, factories)
    if target is None or signature(best) != target:
        return steps  # not reproducible by replay: keep what Hypothesis found
    changed = True
    while changed and budget > 0:
        changed = False
        i = len(best) - 2
        while i >= 0 and budget > 0:
            budget -= 1
            candidate = replay(best[:i] + best[i + 1:], factories)
            if signature(candidate) == target and len(candidate) < len(best):
                best, changed = candidate, True
            i -= 1
    return best
