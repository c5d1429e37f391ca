"""The part of a model case that a real kernel can run.

A checker counterexample (docs/CHECKER.md) is a case for the model: its
setup is plain operations, its interleaving is `actor_begin` / `actor_step`
(an operation stopped between two of its atomic steps while other actors
run), and it ends with `observe` or `audit_log`, which only the model has.

What a kernel can run is its longest prefix of interface operations (a
step expecting the never-merged memfd_restricted to succeed ends it), where an
actor's operation that no other step interrupts (its `actor_begin`, its
`actor_step`s that say "running", and the `actor_step` that finishes it) is
the plain call it stands for, with that last step's expectation.  The
prefix ends at the first operation a kernel cannot perform: a model-only one,
or an interleaved one, since no kernel can be made to stop a system call
between two of its steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..conform.cases import Case, Step
from ..interface import INTERFACE_OPS

CHECKER_OPS = ("actor_begin", "actor_step", "observe", "audit_log")
# Operations of the vocabulary that no merged kernel performs: a step that
# expects one to succeed is the model's, not a kernel's.
NEVER_MERGED = {"memfd_restricted": "the 2022 proposal's system call was never merged into Linux"}
# The designs that are a kernel's guest_memfd (the others model proposals).
KERNEL_DESIGNS = ("gmem-6.8", "gmem-6.18", "gmem-6.19")


@dataclass
class Prefix:
    case: Case | None  # the prefix as a case for any kernel, or None when it is empty
    left_out: list[str] = field(default_factory=list)
    note: str = ""


def is_counterexample(case: Case) -> bool:
    return any(step.op in CHECKER_OPS for step in case.steps)


def _collapse(steps: tuple[Step, ...], i: int) -> tuple[Step | None, int]:
    """An uninterrupted actor_begin ... finishing actor_step as one step, and where it ends."""
    begin = steps[i]
    actor, call, args = begin.args.get("actor"), begin.args.get("call"), begin.args.get("args", {})
    if not isinstance(call, str) or not isinstance(args, dict) or call not in INTERFACE_OPS:
        return None, i
    j = i + 1
    while j < len(steps) and steps[j].op == "actor_step" and steps[j].args.get("actor") == actor \
            and steps[j].has_ret and steps[j].ret == "running":
        j += 1
    if j == len(steps) or steps[j].op != "actor_step" or steps[j].args.get("actor") != actor:
        return None, i
    end = steps[j]
    return Step(index=begin.index, op=call, args=dict(args), bind=end.bind, errno=end.errno,
                signal=end.signal, ret=end.ret, has_ret=end.has_ret, all_bytes=end.all_bytes,
                bytes_hex=end.bytes_hex, differs=end.differs, has_differs=end.has_differs,
                error_offset=end.error_offset), j + 1


def kernel_prefix(case: Case) -> Prefix:
    """The steps of a model case that a real kernel can run, and what was left out."""
    steps: list[Step] = []
    out = Prefix(None)
    last = case.steps[-1].index if case.steps else 0
    used = 0  # the index of the last step the prefix holds
    calls: list[str] = []  # the actors' operations it holds as plain calls
    i = 0
    while i < len(case.steps):
        step = case.steps[i]
        if step.op == "actor_begin":
            collapsed, after = _collapse(case.steps, i)
            if collapsed is not None:
                steps.append(collapsed)
                calls.append(f"{step.args.get('actor')}'s {collapsed.op} (steps {step.index}.."
                             f"{case.steps[after - 1].index})")
                used = case.steps[after - 1].index
                i = after
                continue
            out.left_out.append(
                f"steps {step.index}..{last}: from actor {step.args.get('actor')}'s "
                f"{step.args.get('call')} on, the actors interleave; no kernel can be made to "
                "stop a system call between two of its steps")
            break
        if step.op not in INTERFACE_OPS:
            out.left_out.append(f"steps {step.index}..{last}: from {step.op} on; {step.op} is a "
                                "model-only operation, which no system call reaches")
            break
        if step.op in NEVER_MERGED and step.expects_success:
            out.left_out.append(f"steps {step.index}..{last}: from {step.op} on; "
                                f"{NEVER_MERGED[step.op]}")
            break
        steps.append(step)
        used = step.index
        i += 1
    if steps:
        out.case = Case(file=case.file, id=case.id, about=case.about, kernel="any",
                        design=case.design, requires=case.requires, steps=tuple(steps))
        span = f"steps {steps[0].index}..{used}" if used > steps[0].index else f"step {used}"
        out.note = f"What a real kernel can run of this model case: {span}"
        if calls:
            out.note += f", with {', '.join(calls)} as plain calls"
        out.note += "."
        if out.left_out:
            out.note += " Left out: " + "; ".join(out.left_out) + "."
        if case.design not in KERNEL_DESIGNS:
            out.note += (f" Design {case.design} models a proposal, not a kernel: the steps "
                         "expect what that design does.")
    return out
