"""What each actor's steps did across the explored interleavings.

A verdict that holds says nothing about a race that never happened: if every
mmap of a scenario fails with EINVAL, the steps after it are skipped and the
promises hold trivially.  The explorers tally, for every transition they take,
the step it ran and how it ended; this module turns the tally into one line
per step (its outcomes and how often) and into the warnings a verdict carries
for the steps that never succeeded anywhere.

The counts are transitions of the graph searched: one per explored state the
step ran from (partial-order reduction drops orders that cannot change an
outcome; with a symmetry, mirrored actors share their counts).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .. import uapi
from .system import StepInfo

OK = "ok"
SKIPPED = "skipped"

TallyKey = tuple[int, int, str]  # (actor index, step index, outcome label)


def label(info: StepInfo) -> str | None:
    """How a transition ended its step: "ok", an errno or signal name, "skipped",
    "retried on EBUSY"; None for a step still in progress."""
    if info.kind == "skip":
        return SKIPPED
    out = info.outcome
    if out is None:
        return None
    if info.kind == "retry":
        return f"retried on {uapi.errno_name(out.value)}"
    if out.kind == "ret":
        return OK
    return str(out)


class Tally:
    """Outcome counts per (actor, step), filled as the search takes transitions."""

    def __init__(self) -> None:
        self.counts: Counter[TallyKey] = Counter()

    def add(self, actor: int, info: StepInfo, times: int = 1) -> None:
        what = label(info)
        if what is not None:
            self.counts[(actor, info.action, what)] += times

    def merge(self, counts: Counter[TallyKey] | dict[TallyKey, int]) -> None:
        self.counts.update(counts)


@dataclass(frozen=True)
class StepCoverage:
    """One step of one actor's program: how it ended across the search."""

    actor: str
    index: int  # in the actor's program, from 0
    op: str
    outcomes: tuple[tuple[str, int], ...]  # label -> transitions, most frequent first
    must_succeed: bool = False

    @property
    def succeeded(self) -> bool:
        return any(what == OK for what, _ in self.outcomes)

    @property
    def ran(self) -> bool:
        return bool(self.outcomes)

    def where(self) -> str:
        return f"{self.actor} step {self.index + 1} ({self.op})"

    def show(self) -> str:
        if not self.outcomes:
            return "never ran"
        return ", ".join(f"{what} {n:,}" for what, n in self.outcomes)

    def problem(self) -> str:
        """Why this step makes a verdict vacuous ('' when it succeeded somewhere)."""
        if self.succeeded:
            return ""
        if not self.outcomes:
            return f"{self.where()} never ran"
        finals = [(w, n) for w, n in self.outcomes if not w.startswith("retried")]
        if not finals:
            return f"{self.where()} never finished: " + self.show()
        if len(finals) == 1:
            what, n = finals[0]
            where = "the only interleaving" if n == 1 else f"all {n:,} interleavings"
            return f"{self.where()} never succeeded: {what} in {where}"
        return f"{self.where()} never succeeded: " + ", ".join(f"{w} in {n:,}" for w, n in finals)

    def to_json(self) -> dict[str, object]:
        return {"actor": self.actor, "step": self.index + 1, "op": self.op,
                "outcomes": dict(self.outcomes), "succeeded": self.succeeded,
                "must_succeed": self.must_succeed}


def steps(actors: list[tuple[str, list[tuple[str, bool]]]], counts: Counter[TallyKey],
          orbits: list[list[int]] | None = None) -> tuple[StepCoverage, ...]:
    """The coverage of every step of every actor ((name, [(op, must_succeed)])),
    mirrored actors (`orbits`, actor indices) sharing their counts."""
    share = {a: [a] for a in range(len(actors))}
    for orbit in orbits or []:
        for a in orbit:
            share[a] = list(orbit)
    out = []
    for a, (name, program) in enumerate(actors):
        for i, (op, must) in enumerate(program):
            got: Counter[str] = Counter()
            for b in share[a]:
                for (actor, index, what), n in counts.items():
                    if actor == b and index == i:
                        got[what] += n
            ordered = tuple(sorted(got.items(), key=lambda kv: (kv[0] != OK, -kv[1], kv[0])))
            out.append(StepCoverage(name, i, op, ordered, must))
    return tuple(out)


def problems(coverage: tuple[StepCoverage, ...]) -> list[str]:
    """The steps that never succeeded anywhere, as the verdict line says them
    (an actor's steps skipped only because an earlier one failed are folded
    into that one's line)."""
    out: list[str] = []
    failed: dict[str, int] = {}  # actor -> index in out of its first failing step
    folded: dict[str, int] = {}
    for c in coverage:
        why = c.problem()
        if not why:
            continue
        if c.actor in failed and all(what == SKIPPED for what, _ in c.outcomes):
            folded[c.actor] = folded.get(c.actor, 0) + 1
            continue
        failed.setdefault(c.actor, len(out))
        out.append(why)
    for actor, n in folded.items():
        out[failed[actor]] += f" (so {n} later step{'s' if n > 1 else ''} of {actor} never ran)"
    return out
