"""The compiled exploration core (checker/csearch.c) against the Python search.

The core replays the transition relation the Python engine derives from the
one model.  These tests hold it to that:

* random traces: from every state of a random walk, every actor's transition
  as the core takes it (who can move, the successor, the promises the step and
  the successor break, who has finished) is the Python engine's;
* whole searches: with and without each reduction, stopping at the first
  violation or not, both engines explore the same graph in the same order
  (state numbering, parents, depths, edges) and find the same counterexamples.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gmemlab.checker import NONE, Options, check, load
from gmemlab.checker.compiled import NativeExplorer, available
from gmemlab.checker.engine import Engine
from gmemlab.checker.explore import Explorer, Verdict
from gmemlab.errors import UsageError

pytestmark = pytest.mark.skipif(bool(available().why_not),
                                reason=f"no compiled core here: {available().why_not}")

FAMILY = Path(__file__).resolve().parents[1] / "bench" / "family"
SCENARIOS = [("seed_default", "seed"), ("seed_default", "seed-as-written"), ("seed_two_vcpus", "seed"),
             ("seed_unmap_wait", "seed-as-written"), ("gmem_shared", "gmem-6.18"),
             ("page_mmap_share", "page-mmap"), ("inplace_pin", "inplace"), ("inplace_pin", "pkvm-inplace"),
             ("seed_stale_reference", "seed"), ("seed_stale_reference", "seed-destroyed-blocks"),
             # (5 actors, up to 22,716 states: the store re-lays its records out as they grow)
             (str(FAMILY / "seed_family_5.toml"), "seed-as-written")]


def _names(violations: object) -> tuple[str, ...]:
    return tuple(v.promise for v in violations)  # type: ignore[attr-defined]


IDS = [f"{Path(name).stem}-{design}" for name, design in SCENARIOS]


@pytest.mark.parametrize("name, design", SCENARIOS, ids=IDS)
def test_random_traces_agree_step_by_step(name: str, design: str) -> None:
    sc = load(name).with_design(design)
    engine = Engine(sc)
    core = NativeExplorer(engine, NONE, available())
    core.open()
    rng = random.Random(f"compiled/{name}/{design}")
    try:
        for _ in range(30):
            s = engine.initial
            for _ in range(60):
                succs = dict(engine.expand(s))
                taken = core.probe(s)
                assert {i for i, p in enumerate(taken) if p is not None} == set(succs)
                for i, r in succs.items():
                    edge = engine.step(s, i, r)
                    p = taken[i]
                    assert p is not None
                    assert p.target == edge.target, (sc.actors[i].name, "successor")
                    assert p.perm == 0
                    assert p.promises == _names(edge.violations)
                    assert p.state_promises == _names(engine.state_violations(edge.target))
                    assert p.finished == engine.finished(edge.target)
                if not succs:
                    break
                i = rng.choice(sorted(succs))
                s = engine.step(s, i, succs[i]).target
    finally:
        core.close()


OPTIONS = {"none": NONE, "default": Options(), "all promises": Options(all_promises=True),
           "none, all promises": Options(fingerprints=False, symmetry=False, por=False, all_promises=True),
           "symmetry only": Options(fingerprints=False, por=False, all_promises=True),
           "partial order only": Options(fingerprints=False, symmetry=False, all_promises=True)}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize("name, design", SCENARIOS, ids=IDS)
def test_the_same_search(name: str, design: str, options: Options) -> None:
    sc = load(name).with_design(design)
    py = Explorer(Engine(sc, memo=True), options)
    pv = py.run()
    cx = NativeExplorer(Engine(sc, memo=True), options, available())
    cx.keep_graph = True  # (the core keeps its graph compactly; this copies it out)
    cv = cx.run()
    assert (cv.engine, pv.engine) == ("c", "python")
    assert (cv.states, cv.transitions, cv.depth, cv.complete) == \
        (pv.states, pv.transitions, pv.depth, pv.complete)
    for field in ("parent", "via", "perm", "depth", "done", "src", "dst", "edge_actor", "edge_perm"):
        assert list(getattr(cx, field)) == list(getattr(py, field)), field
    def found(v: Verdict) -> list[tuple[object, ...]]:
        return [(c.promise, c.violation.message, c.trace, c.stuck, c.continuation) for c in v.counterexamples]

    assert found(cv) == found(pv)
    assert cv.coverage == pv.coverage and cv.coverage  # (each step's outcomes, counted alike)


def test_check_picks_the_engine() -> None:
    default = load("seed_default")
    assert check(default, "seed").engine == "c"
    assert check(default, "seed", Options(engine="python")).engine == "python"
    python = check(default, "seed", Options(memo=False, max_states=50))
    assert python.engine == "python" and "memo" in python.note
    with pytest.raises(UsageError, match="compiled core cannot run this search"):
        check(default, "seed", Options(engine="c", jobs=2))
    with pytest.raises(UsageError, match="unknown engine"):
        check(default, "seed", Options(engine="fortran"))


def test_the_store_is_compact() -> None:
    """Every state of the 6-actor family member (102,811 states, 372,292
    transitions) in well under 100 bytes: its record of packed codes, its
    parent, its edges, its share of the visited set."""
    sc = load(str(FAMILY / "seed_family_6.toml"))
    cx = NativeExplorer(Engine(sc), NONE, available())
    v = cx.run()
    assert (v.states, v.transitions, v.holds) == (102_811, 372_292, True)
    assert cx.record_bytes <= 16
    assert cx.store_bytes / v.states < 60
    assert cx.sweeps >= 2  # (P8's fixpoint: the last sweep changes nothing)
