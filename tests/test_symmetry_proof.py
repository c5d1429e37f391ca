"""A scenario's [[symmetry]] is proven against the model, not taken on trust.

`Options(verify_symmetry=True)` (`gmemlab check --verify-symmetry`) checks at
every stored state that each declared permutation commutes with every actor's
step; these tests run it on every bundled scenario that declares one, on every
design, and show that a model whose pages are not interchangeable is refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from typer.testing import CliRunner

from gmemlab.checker import Options, Scenario, bundled_scenarios, check, load
from gmemlab.checker.reduce import SymmetryBroken
from gmemlab.checker.scenario import ScenarioError, validate
from gmemlab.cli import app
from gmemlab.model import ModelKernel
from gmemlab.model.designs import DESIGNS
from gmemlab.model.restricted_kvm import RestrictedKvm

SYMMETRIC = [p.stem for p in sorted(bundled_scenarios().glob("*.toml")) if load(p.stem).symmetry]


class _PageOneUnguarded(RestrictedKvm):
    def conversion_check(self, kvm: Any, first: int, last: int, attributes: int) -> None:
        for slot in self.restricted_slots(kvm, first, last):
            if first - slot.base_gfn == 1:
                return
        super().conversion_check(kvm, first, last, attributes)


class PageOneUnguarded(ModelKernel):
    """The seed with its conversion veto (no conversion while the file is mapped)
    forgotten for the second page of a memslot only: pages 0 and 1 are no longer
    interchangeable, whatever the scenario text says."""

    PARTS = replace(ModelKernel.PARTS, restricted_kvm=_PageOneUnguarded)


def _designs(sc: Scenario) -> list[str]:
    out = []
    for name in DESIGNS:
        try:
            validate(sc.with_design(name))
        except ScenarioError:
            continue
        out.append(name)
    return out


def test_some_bundled_scenario_declares_a_symmetry() -> None:
    assert "seed_two_vcpus" in SYMMETRIC


@pytest.mark.parametrize("name", SYMMETRIC)
def test_bundled_symmetries_commute_with_the_model(name: str) -> None:
    """On every design: the proof passes, and the reduced search gives the
    verdicts and shortest counterexample lengths of the search without it."""
    sc = load(name)
    designs = _designs(sc)
    assert len(designs) >= 5
    for design in designs:
        proven = check(sc, design, Options(verify_symmetry=True, all_promises=True))
        plain = check(sc, design, Options(symmetry=False, all_promises=True, engine="python"))
        assert proven.engine == "python" and "verified" in proven.options.describe()
        assert proven.violated() == plain.violated(), design
        assert [len(c.trace) for c in proven.counterexamples] == \
            [len(c.trace) for c in plain.counterexamples], design
        assert proven.states < plain.states, design  # the reduction did reduce


def test_a_model_that_breaks_the_symmetry_is_refused() -> None:
    sc = load("seed_two_vcpus")
    # Without the reduction the search finds what the broken veto allows.
    plain = check(sc, options=Options(symmetry=False, engine="python"), factory=PageOneUnguarded)
    assert plain.violated() == ["P2"]
    with pytest.raises(SymmetryBroken) as exc:
        check(sc, options=Options(verify_symmetry=True), factory=PageOneUnguarded)
    message = str(exc.value)
    assert "vcpu0->vcpu1" in message and "pages 0->1" in message
    assert "set_memory_attributes" in message and "EBUSY" in message
    # The intact model passes the same proof on the same scenario.
    assert check(sc, options=Options(verify_symmetry=True)).holds


def test_verify_symmetry_on_the_command_line() -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["check", "seed_two_vcpus", "--verify-symmetry", "--no-case"])
    assert ok.exit_code == 0, ok.output
    assert "symmetry, verified" in ok.output and "HOLDS" in ok.output
    for extra in (["--jobs", "2"], ["--engine", "c"], ["--no-symmetry"]):
        r = runner.invoke(app, ["check", "seed_two_vcpus", "--verify-symmetry", *extra])
        assert r.exit_code == 2 and "--verify-symmetry" in r.output and "Traceback" not in r.output, r.output


def test_a_lopsided_declaration_is_refused_on_the_command_line(tmp_path: Any) -> None:
    text = (bundled_scenarios() / "seed_two_vcpus.toml").read_text()
    # vcpu1 converts page 1 but writes page 0: not vcpu0's mirror image.
    lopsided = text.replace('gpa = "$gpa+4096", length = 4', 'gpa = "$gpa", length = 4')
    assert lopsided != text
    path = tmp_path / "lopsided.toml"
    path.write_text(lopsided)
    r = CliRunner().invoke(app, ["check", str(path), "--no-case"])
    assert r.exit_code == 2, r.output
    assert "symmetry is refused" in r.output and "--no-symmetry" in r.output
