"""Helpers shared by the checker's tests."""

from __future__ import annotations

import tomllib

from gmemlab.checker import Scenario, Verdict
from gmemlab.checker.explore import Counterexample
from gmemlab.checker.report import case_text, replay_counterexample
from gmemlab.checker.system import KernelFactory
from gmemlab.conform.cases import parse
from gmemlab.conform.runner import Result, run_case
from gmemlab.model import ModelKernel


def run_counterexample_case(sc: Scenario, verdict: Verdict, cex: Counterexample,
                            factory: KernelFactory | None = None, on: KernelFactory | None = None) -> Result:
    """Write the counterexample as a case file and run it with the conform runner
    (on `on`, default: the kernel it was found on)."""
    rp = replay_counterexample(sc, cex, factory, active=verdict.promises)
    text = case_text(sc, verdict, cex, rp, "test")
    cases = parse(tomllib.loads(text), "counterexample.toml").cases
    assert len(cases) == 1 and cases[0].error is None, cases
    make = on or factory or ModelKernel
    return run_case(cases[0], "model", lambda c: make(c.design))
