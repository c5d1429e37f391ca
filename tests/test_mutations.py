"""Mutation testing: every deliberately broken variant of the seed design is caught.

Each mutant (gmemlab.checker.mutations) changes one policy answer or one
method.  On the default scenario the checker must refute it, with a
counterexample that breaks one of the promises the mutation is about, that
replays, and that, written as a case file, passes on the mutant and fails on
the intended design.
"""

from __future__ import annotations

import pytest

from gmemlab.checker import Options, check, load
from gmemlab.checker.mutations import MUTANTS
from gmemlab.model import ModelKernel

from .checker_util import run_counterexample_case


def test_there_are_enough_mutants() -> None:
    assert len(MUTANTS) >= 10


@pytest.mark.parametrize("name", list(MUTANTS))
def test_every_mutant_is_caught(name: str) -> None:
    m = MUTANTS[name]
    sc = load(m.scenario).with_design("seed")
    v = check(sc, options=Options(), factory=m.factory)
    cex = v.first
    assert cex is not None, f"mutant {name} survived: {v.states} states explored"
    assert cex.promise in m.catches, (cex.promise, cex.violation.message)
    mine = run_counterexample_case(sc, v, cex, factory=m.factory)
    assert mine.status == "PASS", mine.message
    intended = run_counterexample_case(sc, v, cex, factory=m.factory, on=lambda d: ModelKernel("seed"))
    assert intended.status == "FAIL", "the counterexample does not depend on the mutation"
