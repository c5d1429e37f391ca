"""The checker's packed, memoized, reduced and parallel search against the one model.

* random traces walked on the plain model and on the packed engine agree step
  by step (result, events, every component of the state, who can move);
* the memo changes nothing: with it and without it the same graph is explored;
* every reduction (fingerprints, symmetry, partial order), alone or together,
  and the parallel search give the full search's verdict.
"""

from __future__ import annotations

import random

import pytest

from gmemlab.checker import NONE, Options, Scenario, check, load
from gmemlab.checker.codec import decompose
from gmemlab.checker.engine import DISABLED, Engine, Result
from gmemlab.checker.system import ActorState, Program, new_kernel, run_transition

WALKS = [("seed_default", "seed"), ("seed_default", "seed-as-written"), ("seed_two_vcpus", "seed"),
         ("seed_unmap_wait", "seed-as-written"), ("gmem_shared", "gmem-6.18"),
         ("page_mmap_share", "page-mmap"), ("inplace_pin", "inplace"), ("inplace_pin", "pkvm-inplace")]


@pytest.mark.parametrize("name, design", WALKS)
def test_random_traces_agree_with_the_model(name: str, design: str) -> None:
    sc = load(name).with_design(design)
    engine = Engine(sc)  # one engine for all walks: later walks reuse what earlier ones memoized
    rng = random.Random(f"{name}/{design}")
    for _ in range(40):
        prog = Program(sc)
        k = new_kernel(design)
        prog.setup(k)
        k.drain_events()
        actors = [ActorState() for _ in prog.names]
        s = engine.initial
        for _ in range(60):
            succs = dict(engine.expand(s))
            # Who can move: the engine's answer is the model's.
            for i in range(len(prog.names)):
                snap = k.snapshot()
                can = run_transition(k, prog, i, actors[i]) is not None
                k.restore(snap)
                assert can == (i in succs), (prog.names[i], can)
            if not succs:
                break
            i = rng.choice(sorted(succs))
            r = succs[i]
            res = run_transition(k, prog, i, actors[i])
            assert res is not None
            actors[i], info = res
            events = tuple(k.drain_events())
            assert info == r.info and events == r.events
            s = engine.step(s, i, r).target
            assert engine.model_components(s) == decompose(k.state)
            assert [engine.actor_state(s, j) for j in range(len(actors))] == actors


@pytest.mark.parametrize("name, design", [("seed_two_vcpus", "seed-as-written"), ("seed_unmap_wait", "seed"),
                                          ("gmem_shared", "gmem-6.18")])
def test_memo_explores_the_same_graph(name: str, design: str) -> None:
    sc = load(name)
    with_memo = check(sc, design, Options(all_promises=True))
    without = check(sc, design, Options(all_promises=True, memo=False))
    assert (with_memo.states, with_memo.transitions) == (without.states, without.transitions)
    assert with_memo.violated() == without.violated()
    assert without.model_runs > 5 * with_memo.model_runs  # the memo is what saves the work


REDUCTIONS = {
    "fingerprints": Options(fingerprints=True, symmetry=False, por=False),
    "symmetry": Options(fingerprints=False, symmetry=True, por=False),
    "partial-order": Options(fingerprints=False, symmetry=False, por=True),
    "all": Options(),
}
CASES = [("seed_default", "seed"), ("seed_default", "seed-as-written"), ("seed_two_vcpus", "seed"),
         ("seed_two_vcpus", "seed-as-written"), ("seed_unmap_wait", "seed"),
         ("seed_unmap_wait", "seed-as-written"), ("gmem_shared", "gmem-6.18"),
         ("page_mmap_share", "page-mmap"), ("inplace_pin", "inplace"), ("inplace_pin", "pkvm-inplace")]
_full: dict[tuple[str, str], object] = {}


def _full_search(name: str, design: str) -> object:
    if (name, design) not in _full:
        _full[(name, design)] = check(load(name), design, Options(
            fingerprints=False, symmetry=False, por=False, all_promises=True))
    return _full[(name, design)]


@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("name, design", CASES)
def test_reductions_give_the_full_search_verdict(name: str, design: str, reduction: str) -> None:
    full = _full_search(name, design)
    o = REDUCTIONS[reduction]
    every = check(load(name), design, Options(fingerprints=o.fingerprints, symmetry=o.symmetry, por=o.por,
                                              all_promises=True))
    assert every.holds == full.holds  # type: ignore[attr-defined]
    assert every.violated() == full.violated()  # type: ignore[attr-defined]
    # Breadth-first in the reduced graph: a counterexample is never shorter than
    # the shortest one, and here never longer either.
    lengths = {c.promise: len(c.trace) for c in full.counterexamples}  # type: ignore[attr-defined]
    assert {c.promise: len(c.trace) for c in every.counterexamples} == lengths
    if reduction == "fingerprints":
        assert (every.states, every.transitions) == (full.states, full.transitions)  # type: ignore[attr-defined]
    else:
        assert every.states <= full.states  # type: ignore[attr-defined]
    first = check(load(name), design, o)
    assert first.holds == full.holds  # type: ignore[attr-defined]


def test_reductions_reduce() -> None:
    sym = load("seed_two_vcpus")
    full, reduced = check(sym, "seed", NONE), check(sym, "seed", Options(por=False, fingerprints=False))
    assert reduced.states * 2 <= full.states + 20  # one state per mirrored pair
    default = load("seed_default")
    assert check(default, "seed", Options(symmetry=False)).states < check(default, "seed", NONE).states


@pytest.mark.parametrize("design", ["seed", "seed-as-written"])
def test_parallel_search_is_the_same_search(design: str) -> None:
    sc: Scenario = load("seed_default")
    one = check(sc, design, Options(all_promises=True))
    two = check(sc, design, Options(all_promises=True, jobs=2))
    assert (two.states, two.transitions, two.violated()) == (one.states, one.transitions, one.violated())
    assert [c.trace for c in two.counterexamples] == [c.trace for c in one.counterexamples]


@pytest.mark.parametrize("name, design", [
    ("seed_default", "seed-as-written"), ("seed_two_vcpus", "seed"), ("seed_unmap_wait", "seed-as-written"),
    ("page_mmap_share", "page-mmap"), ("inplace_pin", "pkvm-inplace")])
def test_every_step_is_right_wherever_the_memo_would_reuse_it(name: str, design: str) -> None:
    """The memo's soundness, independent of the order it learns in: run every
    actor's step fresh in every reachable state, group the states that agree on
    everything the step read, and apply each state's result to every other
    state of its group: it must do exactly what the step does there."""
    e = Engine(load(name).with_design(design), memo=False)
    seen = {e.initial}
    frontier = [e.initial]
    groups: dict[tuple[object, ...], list[tuple[tuple[int, ...], object]]] = {}
    while frontier:
        nxt = []
        for s in frontier:
            for i in range(len(e.prog.names)):
                a = e.actor_state(s, i)
                if e.prog.done(i, a):
                    continue
                r = e._run_step(s, i, a)
                spec = r.reads if r is not DISABLED else tuple(sorted(e._last_reads))
                key = (i, s[e.actor_slots[i]], spec, tuple(s[j] if j < len(s) else 0 for j in spec))
                groups.setdefault(key, []).append((s, r))
                if r is DISABLED:
                    continue
                t = e.apply(s, r)
                if t not in seen:
                    seen.add(t)
                    nxt.append(t)
        frontier = nxt
    shared = 0
    for members in groups.values():
        for s1, r1 in members[1:]:
            s0, r0 = members[0]
            shared += 1
            if r0 is DISABLED or r1 is DISABLED:
                assert r0 is r1
                continue
            assert isinstance(r0, Result) and isinstance(r1, Result)
            assert (e.apply(s1, r0), r0.events, r0.info) == (e.apply(s1, r1), r1.events, r1.info)
            assert (e.apply(s0, r1), r1.events) == (e.apply(s0, r0), r0.events)
    assert len(seen) > 30 and shared > 0  # steps are shared by many states (the memo pays)
