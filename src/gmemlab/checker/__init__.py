"""The checker: every interleaving of concurrent actors against the model.

    from gmemlab.checker import check, load
    verdict = check(load("seed_default"), design="seed-as-written")
    verdict.holds, verdict.first.violation, verdict.states

docs/CHECKER.md describes scenarios, promises, reductions and counterexamples.
"""

from __future__ import annotations

from collections.abc import Callable

from .engine import Engine
from .explore import NONE, Counterexample, Explorer, Options, Progress, Verdict
from .promises import PROMISES, Violation
from .scenario import Action, Actor, Config, Scenario, ScenarioError, Symmetry, bundled_scenarios, load
from .system import KernelFactory

__all__ = ["NONE", "PROMISES", "Action", "Actor", "Config", "Counterexample", "Options", "Progress",
           "Scenario", "ScenarioError", "Symmetry", "Verdict", "Violation", "bundled_scenarios", "check",
           "load"]


def check(scenario: Scenario, design: str | None = None, options: Options | None = None,
          factory: KernelFactory | None = None,
          progress: Callable[[Progress], None] | None = None) -> Verdict:
    """Explore every interleaving of the scenario (on `design`, or its own) and
    judge the promises; `factory` makes the model kernel (mutants, tests)."""
    options = options or Options()
    sc = scenario.with_design(design)
    if options.jobs > 1:
        from .parallel import explore_parallel

        return explore_parallel(sc, options, factory, progress)
    return Explorer(Engine(sc, factory, memo=options.memo), options, progress).run()
