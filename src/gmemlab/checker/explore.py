"""Breadth-first exploration of every interleaving, and the verdict.

Breadth-first, so the first violation of a promise found is one with the
fewest steps.  Every promise but P8 is judged as states and steps are
generated (promises.py); P8 needs the whole graph: once every state has been
explored, a backward search from the states where an actor has finished
finds the states from which it never can, and the shallowest of those is
the counterexample.

Reductions (each switchable, each shown by tests to give the full search's
verdict): fingerprints in the visited set instead of states; symmetry
(canonical representatives of states that differ by a permutation of
interchangeable pages and actors); a partial-order reduction (one actor's
step when it commutes with everything the others can still do).
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import promises as pr
from .coverage import StepCoverage, Tally, problems, steps
from .engine import Edge, Engine
from .fingerprint import Fingerprints
from .reduce import PartialOrder, Symmetries, SymmetryBroken
from .system import StepInfo

ENGINES = ("auto", "c", "python")


@dataclass(frozen=True)
class Options:
    fingerprints: bool = True
    symmetry: bool = True
    por: bool = True
    memo: bool = True
    all_promises: bool = False  # go on after the first violation: the shortest one per promise
    jobs: int = 1
    max_states: int = 0  # 0: no limit
    # "auto": the compiled core (compiled.py) when it can run the search (a C
    # compiler, one process, the memo on), else the Python engine; "c": the
    # compiled core or an error; "python": the Python engine.
    engine: str = "auto"
    # A Ray cluster to search on (cluster.py): "" none, "auto" (the running one,
    # or a local one), "local", or an address; `workers` partitions (0: one per CPU).
    cluster: str = ""
    workers: int = 0
    # Prove the scenario's [[symmetry]] against the model while searching (the
    # Python engine, one process): every permutation must commute with every
    # step from every state reached, or the search stops with SymmetryBroken.
    verify_symmetry: bool = False

    def describe(self) -> str:
        on = [n for n, v in (("fingerprints", self.fingerprints),
                             ("symmetry, verified" if self.verify_symmetry else "symmetry", self.symmetry),
                             ("partial-order", self.por), ("memo", self.memo)) if v]
        return ", ".join(on) or "none"


NONE = Options(fingerprints=False, symmetry=False, por=False)


@dataclass
class Progress:
    states: int
    transitions: int
    frontier: int
    depth: int
    elapsed: float


@dataclass
class Counterexample:
    violation: pr.Violation
    trace: list[str]  # actor names, in order, from the initial state
    # P8: the actor that can never finish, and a continuation from the end of
    # the trace on which the others finish and it takes one more step in vain.
    stuck: str | None = None
    continuation: list[str] = field(default_factory=list)

    @property
    def promise(self) -> str:
        return self.violation.promise


@dataclass
class Verdict:
    scenario: str
    design: str
    promises: frozenset[str]
    options: Options
    counterexamples: list[Counterexample]
    states: int = 0
    transitions: int = 0
    depth: int = 0
    seconds: float = 0.0
    complete: bool = True  # the whole state space was explored
    # what each actor step did across the search (coverage.py); empty when the
    # engine kept no tally
    coverage: tuple[StepCoverage, ...] = ()
    model_runs: int = 0
    engine: str = "python"  # which engine explored: "python" or "c" (the compiled core)
    note: str = ""  # why the compiled core was not used, when it was asked for and could not be

    @property
    def holds(self) -> bool:
        return not self.counterexamples and self.complete

    @property
    def first(self) -> Counterexample | None:
        return self.counterexamples[0] if self.counterexamples else None

    def violated(self) -> list[str]:
        return sorted({c.promise for c in self.counterexamples}, key=pr.ORDER.index)

    def warnings(self) -> list[str]:
        """The steps that never succeeded in any interleaving, when the promises
        hold (the race the scenario describes may never have happened)."""
        return problems(self.coverage) if self.holds else []

    def unmet(self) -> list[str]:
        """The steps the scenario says must succeed somewhere and never did."""
        return [c.problem() for c in self.coverage if c.must_succeed and c.problem()] \
            if self.complete else []


class Explorer:
    """One breadth-first exploration of one scenario (single process; parallel.py
    runs several of these cooperatively, compiled.py the same search in C)."""

    engine_name = "python"

    def __init__(self, engine: Engine, options: Options,
                 progress: Callable[[Progress], None] | None = None) -> None:
        self.e = engine
        self.o = options
        self.progress = progress
        self.fps = Fingerprints(engine.t) if options.fingerprints else None
        self.sym = Symmetries(engine) if options.symmetry else None
        self.por = PartialOrder(engine) if options.por else None
        self.visited: dict[Any, int] = {}
        self.parent = array("q")
        self.via = array("h")  # actor index in the parent's frame
        self.perm = array("h")  # symmetry applied to the successor (index into sym.perms)
        self.depth = array("l")
        self.done = array("q")  # bitmask of finished actors
        self.src = array("q")
        self.dst = array("q")
        self.edge_perm = array("h")
        self.edge_actor = array("h")
        self.found: dict[str, Counterexample] = {}
        self.transitions = 0
        self.tally = Tally()
        self.stopped = False

    # --- states --------------------------------------------------------------------------

    def _key(self, s: tuple[int, ...], fp: int) -> Any:
        return fp if self.fps is not None else s

    def _add(self, s: tuple[int, ...], fp: int, parent: int, via: int, perm: int, depth: int) -> int:
        j = len(self.parent)
        self.visited[self._key(s, fp)] = j
        self.parent.append(parent)
        self.via.append(via)
        self.perm.append(perm)
        self.depth.append(depth)
        self.done.append(self.e.finished(s))
        return j

    def _violation(self, v: pr.Violation, state: int, last: int | None = None) -> None:
        if v.promise in self.found:
            return
        trace = self.trace_to(state)
        if last is not None:
            trace.append(self._concrete_actor(state, last))
        self.found[v.promise] = Counterexample(v, trace)
        if not self.o.all_promises:
            self.stopped = True

    # --- the search ----------------------------------------------------------------------

    def run(self) -> Verdict:
        e, o = self.e, self.o
        start = time.perf_counter()
        s0 = e.initial
        fp0 = self.fps.of(s0) if self.fps is not None else 0
        if self.sym is not None:
            s0, fp0, _ = self.sym.canonical(s0, fp0, self.fps)
        self._add(s0, fp0, -1, -1, 0, 0)
        for v in e.state_violations(s0):
            self._violation(v, 0)
        frontier: list[tuple[int, tuple[int, ...], int]] = [(0, s0, fp0)]
        depth = 0
        self._start = self._last_report = start
        while frontier and not self.stopped:
            nxt: list[tuple[int, tuple[int, ...], int]] = []
            self._level(frontier, depth, nxt)
            frontier = nxt
            depth += 1
        complete = not frontier and not (o.max_states and len(self.parent) >= o.max_states)
        return self._verdict(start, complete)

    def _verdict(self, start: float, complete: bool) -> Verdict:
        """P8 on the graph (when it is whole and still to be judged), and the verdict."""
        e, o = self.e, self.o
        if complete and "P8" in e.active and (o.all_promises or not self.found):
            self._liveness()
        order = sorted(self.found.values(), key=lambda c: (len(c.trace), pr.ORDER.index(c.promise)))
        if not o.all_promises:
            order = order[:1]
        return Verdict(scenario=e.scenario.name, design=e.scenario.design, promises=e.active,
                       options=o, counterexamples=order, states=len(self.parent),
                       transitions=self.transitions, depth=self.max_depth(),
                       seconds=time.perf_counter() - start, complete=complete, model_runs=e.runs,
                       engine=self.engine_name, coverage=self.coverage())

    def coverage(self) -> tuple[StepCoverage, ...]:
        sc = self.e.scenario
        names = [a.name for a in sc.actors]
        orbits = [[names.index(a) for a in sym.actors] for sym in sc.symmetry] if self.sym else []
        return steps([(a.name, [(act.op, act.must_succeed) for act in a.actions]) for a in sc.actors],
                     self.tally.counts, orbits)

    def max_depth(self) -> int:
        return max(self.depth) if self.depth else 0

    def _level(self, frontier: list[tuple[int, tuple[int, ...], int]], depth: int,
               nxt: list[tuple[int, tuple[int, ...], int]]) -> None:
        for idx, s, fp in frontier:
            self._expand(idx, s, fp, depth, nxt)
            if self._tick(len(frontier) + len(nxt), depth):
                return

    def _tick(self, frontier: int, depth: int) -> bool:
        """Report progress now and then; True when the search must stop."""
        if self.progress is not None and time.perf_counter() - self._last_report > 0.2:
            self._last_report = time.perf_counter()
            self.progress(Progress(len(self.parent), self.transitions, frontier, depth,
                                   self._last_report - self._start))
        if self.o.max_states and len(self.parent) >= self.o.max_states:
            self.stopped = True
        return self.stopped

    def _expand(self, idx: int, s: tuple[int, ...], fp: int, depth: int,
                nxt: list[tuple[int, tuple[int, ...], int]]) -> None:
        e = self.e
        succs = e.expand(s)
        if self.o.verify_symmetry and self.sym is not None:
            try:
                self.sym.verify(s, succs)
            except SymmetryBroken as exc:
                trace = self.trace_to(idx)
                where = "in the initial state" if not trace else f"after {', '.join(trace)}"
                raise SymmetryBroken(f"{where}: {exc}") from None
        if self.por is not None and len(succs) > 1:
            ample = self.por.ample(s, succs)
            if ample is not None:
                i, r = ample
                edge = e.step(s, i, r)
                target, tfp, perm = self._canonical(edge, fp, s)
                if self._key(target, tfp) not in self.visited:
                    # The cycle proviso holds (the step leads to a new state): the
                    # other actors' steps can wait.
                    self._take(idx, edge.actor, target, tfp, perm, depth, nxt, edge.violations,
                               info=edge.result.info)
                    return
        for i, r in succs:
            edge = e.step(s, i, r)
            target, tfp, perm = self._canonical(edge, fp, s)
            self._take(idx, edge.actor, target, tfp, perm, depth, nxt, edge.violations,
                       info=edge.result.info)
            if self.stopped:
                return

    def _canonical(self, edge: Edge, fp: int, s: tuple[int, ...]) -> tuple[tuple[int, ...], int, int]:
        target = edge.target
        tfp = 0
        if self.fps is not None:
            tfp = self.fps.update(fp, edge.changes())
        if self.sym is not None:
            target, tfp, perm = self.sym.canonical(target, tfp, self.fps)
            return target, tfp, perm
        return target, tfp, 0

    def _take(self, idx: int, actor: int, target: tuple[int, ...], tfp: int, perm: int, depth: int,
              nxt: list[tuple[int, tuple[int, ...], int]], violations: Iterable[pr.Violation],
              state_violations: Callable[[], list[pr.Violation]] | None = None,
              info: StepInfo | None = None) -> None:
        self.transitions += 1
        if info is not None:
            self.tally.add(actor, info)
        # What the step itself did wrong is said before what is wrong with the
        # state it leads to (the first violation of a promise is the one kept).
        for v in violations:
            self._violation(v, idx, actor)
        j = self.visited.get(self._key(target, tfp))
        if j is None:
            j = self._add(target, tfp, idx, actor, perm, depth + 1)
            nxt.append((j, target, tfp))
            for v in (state_violations or (lambda: self.e.state_violations(target)))():
                self._violation(v, j)
        self.src.append(idx)
        self.dst.append(j)
        self.edge_perm.append(perm)
        self.edge_actor.append(actor)

    # --- traces ----------------------------------------------------------------------------

    def _path(self, state: int) -> list[int]:
        path = []
        while state > 0:
            path.append(state)
            state = self.parent[state]
        path.reverse()
        return path

    def _frame(self, state: int) -> tuple[int, ...]:
        """The actor permutation mapping the concrete state reached by the trace to
        the stored representative of `state` (identity without symmetry)."""
        n = len(self.e.prog.names)
        h = tuple(range(n))
        if self.sym is None:
            return h
        for j in self._path(state):
            g = self.sym.actor_perm(self.perm[j])
            h = tuple(g[h[a]] for a in range(n))
        return h

    def _concrete_actor(self, state: int, actor: int) -> str:
        h = self._frame(state)
        inverse = {v: a for a, v in enumerate(h)}
        return self.e.prog.names[inverse[actor]]

    def trace_to(self, state: int) -> list[str]:
        """The actors' names along the BFS path to state, in concrete terms."""
        names = self.e.prog.names
        out = []
        n = len(names)
        h = tuple(range(n))
        for j in self._path(state):
            inverse = {v: a for a, v in enumerate(h)}
            out.append(names[inverse[self.via[j]]])
            if self.sym is not None:
                g = self.sym.actor_perm(self.perm[j])
                h = tuple(g[h[a]] for a in range(n))
        return out

    # --- P8: every actor can always still finish ---------------------------------------------

    def _liveness(self) -> None:
        can, best = self._can_finish()
        if best is None:
            return
        _, st, a = best
        self._report_stuck(st, a, can)

    def _can_finish(self) -> tuple[Sequence[int], tuple[int, int, int] | None]:
        """Per state, the bitmask of the actors that can still finish from it (a
        backward fixpoint from the states where they have finished), and the
        shallowest (depth, state, actor) with an actor that cannot (the first
        state in discovery order, the lowest actor, among the shallowest)."""
        n = len(self.e.prog.names)
        nstates = len(self.parent)
        full = (1 << n) - 1
        perms = [self.sym.actor_perm(p) for p in range(len(self.sym.perms))] if self.sym \
            else [tuple(range(n))]
        # The successor's frame renames actors: actor a of the source is actor
        # g[a] of the stored successor.  A mask is carried back through g.
        rename: list[dict[int, int] | None] = [None if g == tuple(range(n)) else {} for g in perms]

        def back_mask(mask: int, p: int) -> int:
            table = rename[p]
            if table is None:
                return mask
            out = table.get(mask)
            if out is None:
                g = perms[p]
                out = table[mask] = sum(1 << a for a in range(n) if mask >> g[a] & 1)
            return out

        can = list(self.done)
        queue: deque[int] = deque(st for st in range(nstates) if can[st])
        if all(r is None for r in rename):
            # (the common case, no symmetry: plain ints, no renaming)
            plain: list[list[int]] = [[] for _ in range(nstates)]
            for src, dst in zip(self.src, self.dst, strict=True):
                plain[dst].append(src)
            while queue:
                x = queue.popleft()
                mask = can[x]
                for y in plain[x]:
                    if mask & ~can[y]:
                        can[y] |= mask
                        queue.append(y)
        else:
            preds: list[list[tuple[int, int]]] = [[] for _ in range(nstates)]
            for src, dst, p in zip(self.src, self.dst, self.edge_perm, strict=True):
                preds[dst].append((src, p))
            while queue:
                x = queue.popleft()
                mask = can[x]
                for y, p in preds[x]:
                    m = back_mask(mask, p)
                    if m & ~can[y]:
                        can[y] |= m
                        queue.append(y)
        best: tuple[int, int, int] | None = None
        for st in range(nstates):
            if can[st] != full and (best is None or self.depth[st] < best[0]):
                missing = full & ~can[st]
                best = (self.depth[st], st, (missing & -missing).bit_length() - 1)
        return can, best

    def _report_stuck(self, st: int, a: int, can: Sequence[int]) -> None:
        n = len(self.e.prog.names)
        h = self._frame(st)
        inverse = {v: x for x, v in enumerate(h)}
        actor = self.e.prog.names[inverse[a]]
        why = "it is blocked for good" if self._deadlocked(st) else "it never gets past an operation"
        v = pr.Violation("P8", f"actor {actor} can never finish from here: whatever the others do, {why}",
                         pr.Evidence.STUCK)
        self.found.setdefault("P8", Counterexample(v, self.trace_to(st), stuck=actor,
                                                   continuation=self._continuation(st, a, can, n)))

    def _deadlocked(self, st: int) -> bool:
        return not any(s == st for s in self.src)

    def _out_edges(self) -> Callable[[int], Sequence[tuple[int, int, int]]]:
        """The edges out of a state, in the order taken: (actor, target, permutation)."""
        out: dict[int, list[tuple[int, int, int]]] = {}
        for k, src in enumerate(self.src):
            out.setdefault(src, []).append((self.edge_actor[k], self.dst[k], self.edge_perm[k]))
        return lambda x: out.get(x, [])

    def _continuation(self, st: int, a: int, can: Sequence[int], n: int) -> list[str]:
        """From st, a shortest path on which every actor that can still finish
        does (the report then lets the stuck actor try once more in vain)."""
        edges_of = self._out_edges()

        def settled(x: int) -> bool:
            return all(self.done[x] >> b & 1 or not can[x] >> b & 1 for b in range(n))

        prev: dict[int, tuple[int, int, int] | None] = {st: None}  # state -> (source, actor, perm)
        queue = deque([st])
        goal = st if settled(st) else None
        while queue and goal is None:
            x = queue.popleft()
            for actor, y, p in edges_of(x):
                if y not in prev:
                    prev[y] = (x, actor, p)
                    if settled(y):
                        goal = y
                        break
                    queue.append(y)
        if goal is None:
            return []
        steps: list[tuple[int, int]] = []
        x = goal
        while x != st:
            step = prev[x]
            assert step is not None
            x, actor, p = step
            steps.append((actor, p))
        steps.reverse()
        names = self.e.prog.names
        h = self._frame(st)
        out = []
        for actor, p in steps:
            inverse = {v: b for b, v in enumerate(h)}
            out.append(names[inverse[actor]])
            if self.sym is not None:
                g = self.sym.actor_perm(p)
                h = tuple(g[h[b]] for b in range(n))
        return out
