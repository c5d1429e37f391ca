"""The actors' semantics over a live model kernel: one transition = one atomic step.

A transition of an actor is the next atomic step of its program on the model
(model/steps.py): if the actor has no operation in progress, it begins the
next one and runs its first step; otherwise it runs the next step of the
operation in progress.  A step a lock forbids is not enabled.  When an
operation ends, its result is bound to the step's `as` name (or the name is
marked failed), and the actor moves on, or tries again when the errno is one
of the step's `retry` errnos.  A step whose arguments name a failed result is
skipped, as a program checking its return values would.

This module is the only definition of that semantics: the packed explorer
(engine.py) runs it on materialized states, the replay of a counterexample
on a plain ModelKernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import MemorySignal, UsageError
from ..model import ModelKernel
from ..outcome import Outcome
from ..spelling import Unbound, call_arguments, resolve
from .scenario import Action, Scenario, ScenarioError, fixed_names

KernelFactory = Callable[[str], ModelKernel]


@dataclass(frozen=True)
class ActorState:
    """An actor's own state: the step it is at, whether that operation is in
    progress, and the names it bound (None: the operation failed)."""

    pc: int = 0
    busy: bool = False
    env: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class StepInfo:
    """What a transition did, for reports (not part of any state)."""

    actor: str
    action: int  # index of the step in the actor's program
    kind: str  # "begin" (started, in progress), "step" (still in progress), "end", "retry", "skip"
    outcome: Outcome | None = None
    skipped_for: str = ""


class Program:
    """A scenario ready to run: its actors in order and the names its setup bound."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.actors = scenario.actors
        self.names = tuple(a.name for a in scenario.actors)
        self.lengths = tuple(len(a.actions) for a in scenario.actors)
        self.env: dict[str, Any] = {}

    def setup(self, kernel: ModelKernel) -> None:
        """Run the setup steps sequentially; they must all succeed."""
        env = fixed_names(self.scenario.config, bool(self.scenario.setup))
        for i, act in enumerate(self.scenario.setup_actions(), 1):
            try:
                args = call_arguments(act.op, resolve(dict(act.args), env))
                result = getattr(kernel, act.op)(**args)
            except (OSError, MemorySignal, UsageError, Unbound) as exc:
                raise ScenarioError(f"setup step {i} ({act.show()}) failed on design "
                                    f"{self.scenario.design}: {exc}") from None
            if act.bind:
                env[act.bind] = result
        if "cpu0" in env:
            env.setdefault("cpu", env["cpu0"])
        self.env = env

    def done(self, i: int, a: ActorState) -> bool:
        return not a.busy and a.pc >= self.lengths[i]

    def action(self, i: int, a: ActorState) -> Action:
        return self.actors[i].actions[a.pc]


def run_transition(k: ModelKernel, prog: Program, i: int,
                   a: ActorState) -> tuple[ActorState, StepInfo] | None:
    """Actor i's next atomic step on k (changed in place); None when it cannot
    run now (finished, or blocked by a lock another actor holds)."""
    name = prog.names[i]
    if a.busy:
        if not k.enabled(name):
            return None
        out = k.step(name)
        kind = "step"
    else:
        if a.pc >= prog.lengths[i]:
            return None
        act = prog.action(i, a)
        env = {**prog.env, **dict(a.env)}
        try:
            for n in act.needs:
                if env.get(n) is None:
                    raise Unbound(n)
            args = call_arguments(act.op, resolve(dict(act.args), env))
        except Unbound as missing:
            return replace(a, pc=a.pc + 1), StepInfo(name, a.pc, "skip", skipped_for=str(missing))
        except UsageError as exc:
            raise ScenarioError(f"actor {name} step {a.pc + 1} ({act.show()}): {exc}") from None
        try:
            k.begin(name, act.op, **args)
        except UsageError as exc:
            raise ScenarioError(f"actor {name} step {a.pc + 1} ({act.show()}): {exc}") from None
        if not k.enabled(name):
            k.state.pending.pop(name)  # the step cannot run now: nothing happened
            return None
        out = k.step(name)
        kind = "begin"
    if out is None:
        return replace(a, busy=True), StepInfo(name, a.pc, kind)
    act = prog.action(i, a)
    if out.kind == "usage":
        raise ScenarioError(f"actor {name} step {a.pc + 1} ({act.show()}): {out.value}")
    if out.kind == "errno" and out.value in act.retry:
        return replace(a, busy=False), StepInfo(name, a.pc, "retry", out)
    env = dict(a.env)
    if act.bind:
        env[act.bind] = out.value if out.kind == "ret" else None
    return ActorState(pc=a.pc + 1, env=tuple(sorted(env.items()))), StepInfo(name, a.pc, "end", out)


def new_kernel(design: str, factory: KernelFactory | None = None) -> ModelKernel:
    return (factory or ModelKernel)(design)
