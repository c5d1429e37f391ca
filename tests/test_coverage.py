"""A verdict says what each step did: a promise that holds because the race
never happened is a warning, not a silent "holds"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gmemlab.checker import Options, bundled_scenarios, check, load
from gmemlab.checker.coverage import OK, SKIPPED
from gmemlab.cli import app

runner = CliRunner()
ENGINES = [Options(engine="python"), Options(engine="python", jobs=2)]


@pytest.mark.parametrize("options", ENGINES, ids=["python", "jobs2"])
def test_a_mapping_that_always_fails_is_a_warning(options: Options) -> None:
    # guest_memfd without GUEST_MEMFD_FLAG_MMAP: every mmap fails with ENODEV.
    v = check(load("seed_two_vcpus"), "gmem-6.18", options)
    assert v.holds
    by_step = {(c.actor, c.index): c for c in v.coverage}
    mmap = by_step[("vmm", 0)]
    assert mmap.op == "mmap" and not mmap.succeeded and dict(mmap.outcomes).keys() == {"ENODEV"}
    assert dict(by_step[("vmm", 1)].outcomes).keys() == {SKIPPED}
    assert by_step[("vcpu0", 1)].succeeded
    assert v.warnings() == ["vmm step 1 (mmap) never succeeded: ENODEV in the only interleaving "
                            "(so 2 later steps of vmm never ran)"]


def test_outcomes_are_counted_per_transition() -> None:
    v = check(load("seed_two_vcpus"), "seed", Options(engine="python"))
    assert v.holds and v.warnings() == []
    mmap = dict(next(c for c in v.coverage if c.op == "mmap").outcomes)
    # The VMM's mmap succeeds in some interleavings and is refused in others
    # (a page is private, or a conversion is running).
    assert mmap[OK] >= 1 and mmap["EBUSY"] >= 1
    converts = dict(next(c for c in v.coverage if c.actor == "vcpu0" and c.index == 0).outcomes)
    assert converts[OK] >= 1 and converts["retried on EBUSY"] >= 1
    finished = sum(n for c in v.coverage for what, n in c.outcomes)
    assert 0 < finished <= v.transitions


def test_the_verdict_line_warns_and_strict_fails(tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    r = runner.invoke(app, ["check", "seed_two_vcpus", "--design", "gmem-6.18", "--engine", "python",
                            "--no-case", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "HOLDS, but vmm step 1 (mmap) never succeeded: ENODEV" in " ".join(r.output.split())
    doc = json.loads(out.read_text())
    assert doc["warnings"] and doc["coverage"][0] == {
        "actor": "vmm", "step": 1, "op": "mmap", "outcomes": {"ENODEV": 1}, "succeeded": False,
        "must_succeed": False}
    strict = runner.invoke(app, ["check", "seed_two_vcpus", "--design", "gmem-6.18", "--engine",
                                 "python", "--no-case", "--strict"])
    assert strict.exit_code == 1, strict.output
    fine = runner.invoke(app, ["check", "seed_two_vcpus", "--engine", "python", "--no-case", "--strict"])
    assert fine.exit_code == 0 and "HOLDS:" in fine.output, fine.output


def test_a_step_that_must_succeed_and_never_does_fails(tmp_path: Path) -> None:
    text = (bundled_scenarios() / "seed_two_vcpus.toml").read_text()
    marked = text.replace('flags = "SHARED", as = "a"}', 'flags = "SHARED", as = "a", must_succeed = true}')
    assert marked != text
    path = tmp_path / "must.toml"
    path.write_text(marked)
    v = check(load(str(path)), "gmem-6.18", Options(engine="python"))
    assert v.holds and v.unmet() == ["vmm step 1 (mmap) never succeeded: ENODEV in the only interleaving"]
    r = runner.invoke(app, ["check", str(path), "--design", "gmem-6.18", "--engine", "python", "--no-case"])
    assert r.exit_code == 1 and "VACUOUS" in r.output, r.output
    ok = runner.invoke(app, ["check", str(path), "--engine", "python", "--no-case"])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('as = "a"}', 'as = "a", must_succeed = "yes"}'))
    r = runner.invoke(app, ["check", str(bad), "--no-case"])
    assert r.exit_code == 2 and "must_succeed is true or false" in r.output, r.output


def test_the_design_matrix(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    r = runner.invoke(app, ["check", "seed_two_vcpus", "--design", "all", "--engine", "python",
                            "--json", str(out)], env={"COLUMNS": "250"})
    assert r.exit_code == 1, r.output  # seed-as-written violates P1, P2, P4
    rows = {line.split()[0]: line for line in r.output.splitlines() if line.strip()}
    assert "violated (7)" in rows["seed-as-written"] and "holds" in rows["seed"]
    assert "never succeeded: ENODEV" in rows["gmem-6.18"]
    doc = json.loads(out.read_text())
    assert {d["design"] for d in doc} >= {"seed", "seed-as-written", "gmem-6.18", "page-mmap"}
    seed = next(d for d in doc if d["design"] == "seed")
    assert seed["holds"] and seed["warnings"] == []
    r = runner.invoke(app, ["check", "inplace_pin", "--design", "all", "--engine", "python"],
                      env={"COLUMNS": "250"})
    assert "not run: setup step 2 (create_guest_memfd) fails" in r.output and "Traceback" not in r.output
