"""Mutation testing: every deliberately broken variant of a design is caught.

Each mutant (gmemlab.checker.mutations) changes one policy answer or one
method of one model component, on one design.  On its scenario, checked on
that design, the checker must refute it, with a counterexample that breaks
one of the promises the mutation is about, that replays, and that, written as
a case file, passes on the mutant and fails on the intended design.
"""

from __future__ import annotations

import pytest

from gmemlab.checker import Options, check, load
from gmemlab.checker.mutations import FAMILIES, MUTANTS
from gmemlab.model import ModelKernel

from .checker_util import run_counterexample_case


def test_there_are_enough_mutants() -> None:
    assert len(MUTANTS) >= 30


def test_every_family_has_mutants() -> None:
    counts = {family: sum(m.family == family for m in MUTANTS.values()) for family in FAMILIES}
    assert all(n >= 3 for n in counts.values()), counts


@pytest.mark.parametrize("scenario, design", sorted({(m.scenario, m.design) for m in MUTANTS.values()}))
def test_the_intended_design_passes_where_mutants_fail(scenario: str, design: str) -> None:
    """Each mutant's scenario holds on the design it breaks, with every step succeeding
    somewhere: the mutants are caught by what they changed, not by a scenario the
    design cannot run."""
    v = check(load(scenario).with_design(design))
    assert v.holds, [str(c.violation) for c in v.counterexamples]
    assert not v.warnings() and not v.unmet(), v.warnings() + v.unmet()


@pytest.mark.parametrize("name", list(MUTANTS))
def test_every_mutant_is_caught(name: str) -> None:
    m = MUTANTS[name]
    sc = load(m.scenario).with_design(m.design)
    v = check(sc, options=Options(), factory=m.factory)
    cex = v.first
    assert cex is not None, f"mutant {name} survived: {v.states} states explored"
    assert cex.promise in m.catches, (cex.promise, cex.violation.message)
    mine = run_counterexample_case(sc, v, cex, factory=m.factory)
    assert mine.status == "PASS", mine.message
    intended = run_counterexample_case(sc, v, cex, factory=m.factory, on=lambda d: ModelKernel(m.design))
    assert intended.status == "FAIL", "the counterexample does not depend on the mutation"
