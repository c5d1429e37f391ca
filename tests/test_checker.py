"""The checker: verdicts on the shipped scenarios, counterexamples that reproduce, scenarios, CLI."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gmemlab.checker import (
    NONE,
    PROMISES,
    Action,
    Actor,
    Config,
    Options,
    Scenario,
    ScenarioError,
    bundled_scenarios,
    check,
    load,
    promises,
)
from gmemlab.checker.cli import ProgressDisplay
from gmemlab.checker.explore import Progress
from gmemlab.checker.scenario import parse
from gmemlab.cli import app
from gmemlab.conform import conform
from gmemlab.model import ModelKernel

from .checker_util import run_counterexample_case


@pytest.fixture(scope="module")
def default() -> Scenario:
    return load("seed_default")


def test_seed_keeps_every_promise_on_the_default_scenario(default: Scenario) -> None:
    v = check(default, "seed")
    assert v.holds and v.complete
    assert v.promises == frozenset(PROMISES)
    assert v.states > 1000 and v.transitions > v.states


def test_seed_as_written_breaks_them(default: Scenario) -> None:
    first = check(default, "seed-as-written")
    assert not first.holds
    cex = first.first
    assert cex is not None
    # The shortest violation: one mmap, after which kvm:slot0 and audit never hear mmap_end.
    assert (cex.promise, len(cex.trace)) == ("P5", 7)
    assert cex.trace == ["vmm"] * 7
    assert "kvm:slot0, audit" in cex.violation.message
    every = check(default, "seed-as-written", Options(all_promises=True))
    assert every.violated() == ["P1", "P2", "P3", "P4", "P5", "P8"]
    by = {c.promise: c for c in every.counterexamples}
    assert "2 mappings" in by["P3"].violation.message  # defect 1: a second mapping
    assert by["P3"].trace.count("vmm2") == 7 and by["P3"].trace.count("vmm") == 7
    assert "get_pfn" in by["P2"].violation.message and len(by["P2"].trace) == 8
    # What defect 2 breaks: KVM's slot 0 waits for mmap_end for good, so the
    # guest's conversion of page 0 is refused forever.
    assert by["P8"].stuck == "guest"


def test_counterexamples_reproduce_as_case_files(default: Scenario) -> None:
    sc = default.with_design("seed-as-written")
    v = check(sc, options=Options(all_promises=True))
    for cex in v.counterexamples:
        result = run_counterexample_case(sc, v, cex)
        assert result.status == "PASS", (cex.promise, result.message)
        # The same steps on the intended design do not get there.
        on_seed = run_counterexample_case(sc, v, cex, on=lambda d: ModelKernel("seed"))
        assert on_seed.status == "FAIL", cex.promise


def test_cli_check(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["check", "seed_default"])
    assert ok.exit_code == 0, ok.output
    assert "HOLDS" in ok.output
    out = tmp_path / "cex.toml"
    bad = runner.invoke(app, ["check", "seed_default", "--design", "seed-as-written", "--case-out", str(out)])
    assert bad.exit_code == 1, bad.output
    assert "VIOLATED P5" in bad.output and out.exists()
    summary = conform([str(out)], "model")
    assert (summary.passed, summary.failed) == (1, 0)
    for args in (["check", "nosuch"], ["check", "seed_default", "--design", "bogus"],
                 ["check", "seed_default", "--jobs", "0"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("path", sorted(bundled_scenarios().glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_scenarios_hold_on_their_design(path: Path) -> None:
    sc = load(str(path))
    v = check(sc)
    assert v.holds, [str(c.violation) for c in v.counterexamples]
    # Not vacuously: every step of every actor succeeded in some interleaving.
    assert v.warnings() == [] and v.unmet() == []
    assert v.coverage and all(c.succeeded for c in v.coverage)


def test_deadlock_and_leak_are_found() -> None:
    """KVM keeps a reference; the VMM waits for the references to go: once KVM took
    it, the VMM never can (P8); if the VMM's wait came first, both finish with
    the reference still out (P6)."""
    sc = Scenario(name="stuck", design="seed", config=Config(pages=1), actors=(
        Actor("kvm", (Action("get_pfn", (("fd", "$f"), ("index", 0))),)),
        Actor("vmm", (Action("wait_unreferenced", (("fd", "$f"),)),)),
    ))
    v = check(sc, options=Options(all_promises=True))
    assert v.violated() == ["P6", "P8"]
    cex = next(c for c in v.counterexamples if c.promise == "P8")
    assert cex.stuck == "vmm" and "blocked for good" in cex.violation.message and cex.trace == ["kvm"]
    leak = Scenario(name="leak", design="seed", config=Config(pages=1), actors=(
        Actor("kvm", (Action("get_pfn", (("fd", "$f"), ("index", 0))),)),))
    lv = check(leak)
    assert lv.first is not None and lv.first.promise == "P6" and len(lv.first.trace) == 1


def test_scenario_errors_say_what_is_wrong() -> None:
    base = {"design": "seed", "actor": [{"name": "a", "steps": [{"op": "get_pfn", "fd": "$f", "index": 0}]}]}
    assert parse(base).actors[0].actions[0].op == "get_pfn"
    bad = [
        ({**base, "design": "nope"}, "unknown design"),
        ({**base, "extra": 1}, "unknown keys"),
        ({"design": "seed"}, "at least one"),
        ({**base, "actor": [{"name": "a", "steps": [{"op": "frobnicate"}]}]}, "unknown operation"),
        ({**base, "actor": [{"name": "a", "steps": [{"op": "get_pfn", "fd": "$g", "index": 0}]}]},
         "$g is not bound"),
        ({**base, "actor": [{"name": "a", "steps": [{"op": "get_pfn", "fd": "$f", "idx": 0}]}]},
         "unknown argument 'idx' \\(did you mean 'index'\\?\\)"),
        ({**base, "actor": [{"name": "a", "steps": [{"op": "get_pfn", "fd": "$f"}]}]},
         "missing argument 'index'"),
        ({**base, "actor": [{"name": "a", "steps": [{"op": "observe"}]}]}, "drives the checker"),
        ({**base, "config": {"pages": 3, "memslots": 2}}, "multiple of memslots"),
        ({**base, "config": {"order": ["slot0", "slot0"]}}, "order must name"),
        ({**base, "symmetry": [{"pages": [0], "actors": ["a"]}]}, "at least 2"),
        ({**base, "promises": ["P9"]}, "unknown promise"),
        ({**base, "actor": [{"name": "a", "steps": [{"op": "get_pfn", "fd": "$f", "index": 0,
                                                      "retry": "EWHAT"}]}]}, "retry"),
    ]
    for doc, message in bad:
        with pytest.raises(ScenarioError, match=message.replace("$", r"\$")):
            parse(doc)


def test_symmetry_declarations_are_verified() -> None:
    sc = load("seed_two_vcpus")
    lopsided = Scenario(name="x", design="seed", config=sc.config, symmetry=sc.symmetry,
                        actors=(sc.actors[0], sc.actors[1], Actor("vcpu1", sc.actors[1].actions)))
    from gmemlab.checker.reduce import NotSymmetric

    with pytest.raises(NotSymmetric, match="not actor"):
        check(lopsided)


def test_progress_display_waits_a_second() -> None:
    buf = io.StringIO()
    display = ProgressDisplay(Console(file=buf, force_terminal=False, width=200))
    display(Progress(states=10, transitions=20, frontier=3, depth=2, elapsed=0.5))
    assert buf.getvalue() == ""
    display(Progress(states=10_000, transitions=20_000, frontier=300, depth=12, elapsed=6.0))
    assert "10,000 states" in buf.getvalue() and "frontier 300" in buf.getvalue()


def test_max_states_gives_an_incomplete_verdict(default: Scenario) -> None:
    v = check(default, "seed", Options(max_states=100))
    assert not v.complete and not v.holds and not v.counterexamples


def test_no_reductions_still_proves(default: Scenario) -> None:
    v = check(default, "seed", NONE)
    assert v.holds


def test_p4_compares_runs_not_pages() -> None:
    """A guest_memfd created private is private over its whole index space: P4 compares
    runs of pages (a scenario that released such a file once ran out of memory)."""
    huge = 1 << 40
    before = {"private_pages": ((5, 0, huge),)}
    after = {"private_pages": ((5, 0, 2), (6, 0, huge)), "host_references": ((5, 0, 2, 1), (6, 3, 5, 1))}
    found = promises.newly_private_violations(before.__getitem__, after.__getitem__)
    assert [v.message for v in found] == [
        "pages 3..4 of inode 6 became private with 1 host reference(s) (mappings or pins) held"]
    released = {"private_pages": (), "host_references": ()}
    assert promises.newly_private_violations(before.__getitem__, released.__getitem__) == []
