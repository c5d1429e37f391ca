"""The checker: every interleaving of concurrent actors against the model.

    from gmemlab.checker import check, load
    verdict = check(load("seed_default"), design="seed-as-written")
    verdict.holds, verdict.first.violation, verdict.states

docs/CHECKER.md describes scenarios, promises, reductions and counterexamples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..errors import UsageError
from .compiled import NativeExplorer, available, unsupported
from .engine import Engine
from .explore import ENGINES, NONE, Counterexample, Explorer, Options, Progress, Verdict
from .promises import PROMISES, Violation
from .scenario import Action, Actor, Config, Scenario, ScenarioError, Symmetry, bundled_scenarios, load
from .system import KernelFactory

__all__ = ["ENGINES", "NONE", "PROMISES", "Action", "Actor", "Config", "Counterexample", "Options",
           "Progress",
           "Scenario", "ScenarioError", "Symmetry", "Verdict", "Violation", "bundled_scenarios", "check",
           "load"]


def check(scenario: Scenario, design: str | None = None, options: Options | None = None,
          factory: KernelFactory | None = None,
          progress: Callable[[Progress], None] | None = None) -> Verdict:
    """Explore every interleaving of the scenario (on `design`, or its own) and
    judge the promises; `factory` makes the model kernel (mutants, tests)."""
    options = options or Options()
    if options.engine not in ENGINES:
        raise UsageError(f"unknown engine {options.engine!r}: one of {', '.join(ENGINES)}")
    sc = scenario.with_design(design)
    if options.verify_symmetry:
        if options.cluster or options.jobs > 1 or options.engine == "c":
            raise UsageError("--verify-symmetry runs the Python engine in one process: "
                             "not with --cluster, --jobs or --engine c")
        if not options.symmetry:
            raise UsageError("--verify-symmetry proves the reduction --no-symmetry turns off")
        options = replace(options, engine="python")
    if options.cluster:
        from .cluster import explore_cluster

        return explore_cluster(sc, options, options.cluster, options.workers, factory, progress)
    if options.jobs > 1:
        if options.engine == "c":
            why = unsupported(options, len(sc.actors))
            raise UsageError(f"the compiled core cannot run this search: {why}")
        from .parallel import explore_parallel

        verdict = explore_parallel(sc, options, factory, progress)
        verdict.note = (f"--jobs {options.jobs}: the Python engine in {options.jobs} processes "
                        "(the compiled core, in one, is faster on most scenarios)")
        return verdict
    engine = Engine(sc, factory, memo=options.memo)
    note = ""
    if options.engine != "python":
        # The compiled core explores the same graph in the same order (tests/
        # test_compiled.py compares them); it is only faster.
        core = available()
        why = unsupported(options, len(sc.actors)) or core.why_not
        if not why:
            return NativeExplorer(engine, options, core, progress).run()
        if options.engine == "c":
            raise UsageError(f"the compiled core cannot run this search: {why}")
        note = f"the Python engine explored: {why}"
    elif options.verify_symmetry:
        note = ("the symmetry was verified against the model at every state reached" if sc.symmetry
                else "the scenario declares no symmetry: nothing to verify")
    verdict = Explorer(engine, options, progress).run()
    verdict.note = note
    return verdict
