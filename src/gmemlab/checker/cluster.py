"""`--cluster`: the breadth-first search spread over a Ray cluster.

States are partitioned by their fingerprint (a content hash, the same in every
process) across Ray actors.  Each partition owns its states: it keeps the
visited keys of its part and the contents of its part of the frontier, and
expands them with its own engine (its own model runs and memo).  A level goes:

1. every partition expands its frontier states: per state, every actor's
   step (target canonical under symmetry, its fingerprint, the promises the
   step and the target break, which step the partial-order reduction would
   take alone) — the model work, in parallel;
2. the owners say which of the targets they have visited (one batch each);
3. the driver replays the level in the order the one-process search takes
   it (explore.Explorer): the same ample decisions with the same cycle
   proviso, the same state numbering, the same first violation per promise;
4. the new states travel to their owners, which make them the next frontier.

So the search visits exactly the states and transitions of the one-process
search and reaches the same verdict.  The driver keeps what counterexamples
and P8 need, a few integers per state and per transition (parents, depths,
the graph); the states themselves and the model's work live on the
partitions.  Ray is an optional dependency: `pip install 'gmemlab[cluster]'`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from . import promises as pr
from .engine import Engine
from .explore import Explorer, Options, Progress, Verdict
from .fingerprint import Fingerprints
from .reduce import PartialOrder, Symmetries
from .scenario import Scenario
from .system import KernelFactory, StepInfo

INSTALL = "the cluster search needs Ray: pip install 'gmemlab[cluster]'"

# A state as it travels between processes: its components (key, value),
# which every process interns into its own ids.
Content = tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Step:
    """One actor's step from a frontier state, as a partition saw it."""

    actor: int
    key: Any  # the target's visited key: its fingerprint, or its content
    fp: int
    perm: int
    violations: tuple[pr.Violation, ...]  # broken by the step itself
    content: Content
    state_violations: tuple[pr.Violation, ...]  # broken by the target state
    done: int  # the target's finished actors
    info: StepInfo  # what the step did (for coverage)


@dataclass(frozen=True)
class Expansion:
    steps: tuple[Step, ...]
    ample: int | None  # the step the partial-order reduction takes alone, if any


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL) from None
    return ray


class Partition:
    """One part of the state space (a Ray actor; a plain object in tests)."""

    def __init__(self, scenario: Scenario, options: Options,
                 factory: KernelFactory | None = None) -> None:
        self.e = Engine(scenario, factory, memo=options.memo)
        self.o = options
        self.fps = Fingerprints(self.e.t)
        self.sym = Symmetries(self.e) if options.symmetry else None
        self.por = PartialOrder(self.e) if options.por else None
        self.visited: dict[Any, int] = {}
        self.frontier: dict[int, tuple[int, ...]] = {}

    def _key(self, s: tuple[int, ...], fp: int) -> Any:
        return fp if self.o.fingerprints else content_key(self.e.t.components(s))

    def expand(self, idxs: list[int]) -> list[Expansion]:
        out = []
        for idx in idxs:
            s = self.frontier.pop(idx)
            out.append(self._expand(s))
        return out

    def _expand(self, s: tuple[int, ...]) -> Expansion:
        e = self.e
        fp = self.fps.of(s)
        succs = e.expand(s)
        ample = None
        if self.por is not None and len(succs) > 1:
            chosen = self.por.ample(s, succs)
            if chosen is not None:
                ample = next(n for n, (i, r) in enumerate(succs) if i == chosen[0] and r is chosen[1])
        steps = []
        for i, r in succs:
            edge = e.step(s, i, r)
            target, tfp = edge.target, self.fps.update(fp, edge.changes())
            perm = 0
            if self.sym is not None:
                target, tfp, perm = self.sym.canonical(target, tfp, self.fps)
            steps.append(Step(edge.actor, self._key(target, tfp), tfp, perm, tuple(edge.violations),
                              tuple(e.t.components(target).items()),
                              tuple(e.state_violations(target)), e.finished(target), edge.result.info))
        return Expansion(tuple(steps), ample)

    def known(self, keys: list[Any]) -> list[int]:
        """The state number of each key this partition has visited, else -1."""
        return [self.visited.get(k, -1) for k in keys]

    def store(self, states: list[tuple[Any, int, Content]]) -> int:
        """New states of this part: (key, number, content); they are the next frontier."""
        for key, idx, content in states:
            self.visited[key] = idx
            self.frontier[idx] = self.e.t.pack_state(dict(content))
        return len(self.visited)

    def runs(self) -> int:
        return self.e.runs


def content_key(comps: dict[Any, Any]) -> frozenset[tuple[Any, Any]]:
    return frozenset(comps.items())


class ClusterExplorer(Explorer):
    """The driver: Explorer's bookkeeping (numbering, traces, P8) over remote parts."""

    engine_name = "cluster"

    def __init__(self, engine: Engine, options: Options, parts: list[Any],
                 call: Callable[[list[Any]], list[Any]],
                 progress: Callable[[Progress], None] | None = None) -> None:
        super().__init__(engine, options, progress)
        self.parts = parts
        self.call = call  # runs one remote call on every part it is given, returns the results
        self.keys = Fingerprints(engine.t)  # a state's partition, whatever its visited key is

    def owner(self, fp: int) -> int:
        return fp % len(self.parts)

    def run(self) -> Verdict:
        e, o = self.e, self.o
        start = self._start = self._last_report = time.perf_counter()
        s0 = e.initial
        fp0 = self.keys.of(s0)
        if self.sym is not None:
            s0, fp0, _ = self.sym.canonical(s0, fp0, self.keys)
        key0 = fp0 if o.fingerprints else content_key(e.t.components(s0))
        self._add_remote(key0, -1, -1, 0, 0, e.finished(s0))
        for v in e.state_violations(s0):
            self._violation(v, 0)
        self.call([p.store.remote([(key0, 0, tuple(e.t.components(s0).items()))])
                   for p in [self.parts[self.owner(fp0)]]])
        frontier = [(0, self.owner(fp0))]
        depth = 0
        while frontier and not self.stopped:
            frontier = self._remote_level(frontier, depth)
            depth += 1
        complete = not frontier and not (o.max_states and len(self.parent) >= o.max_states)
        verdict = self._verdict(start, complete)
        verdict.model_runs = sum(self.call([p.runs.remote() for p in self.parts]))
        return verdict

    def _add_remote(self, key: Any, parent: int, via: int, perm: int, depth: int, done: int) -> int:
        j = len(self.parent)
        self.visited[key] = j  # this level's new states (the parts hold the rest)
        self.parent.append(parent)
        self.via.append(via)
        self.perm.append(perm)
        self.depth.append(depth)
        self.done.append(done)
        return j

    def _remote_level(self, frontier: list[tuple[int, int]], depth: int) -> list[tuple[int, int]]:
        by_part: dict[int, list[int]] = {}
        for idx, owner in frontier:
            by_part.setdefault(owner, []).append(idx)
        parts = sorted(by_part)
        results = self.call([self.parts[p].expand.remote(by_part[p]) for p in parts])
        expansions: dict[int, Expansion] = {}
        for p, result in zip(parts, results, strict=True):
            expansions.update(zip(by_part[p], result, strict=True))
        # Which targets are known from earlier levels (every part answers for its keys).
        asked: dict[int, list[Any]] = {}
        for exp in expansions.values():
            for st in exp.steps:
                asked.setdefault(self.owner(st.fp), []).append(st.key)
        known: dict[Any, int] = {}
        owners = sorted(asked)
        answers = self.call([self.parts[p].known.remote(asked[p]) for p in owners])
        for p, answer in zip(owners, answers, strict=True):
            known.update((k, j) for k, j in zip(asked[p], answer, strict=True) if j >= 0)
        self.visited = {}  # this level's new states, in discovery order
        new: list[tuple[int, Step]] = []
        for idx, _owner in frontier:
            self._replay(idx, expansions[idx], known, depth, new)
            if self._tick(len(frontier) + len(new), depth) or self.stopped:
                break
        outgoing: dict[int, list[tuple[Any, int, Content]]] = {}
        for j, st in new:
            outgoing.setdefault(self.owner(st.fp), []).append((st.key, j, st.content))
        if outgoing:
            self.call([self.parts[p].store.remote(items) for p, items in outgoing.items()])
        return [(j, self.owner(st.fp)) for j, st in new]

    def _replay(self, idx: int, exp: Expansion, known: dict[Any, int], depth: int,
                new: list[tuple[int, Step]]) -> None:
        """Explorer._expand for one state, on what the partition computed."""

        def seen(st: Step) -> int | None:
            j = known.get(st.key)
            return self.visited.get(st.key) if j is None else j

        if exp.ample is not None:
            st = exp.steps[exp.ample]
            if seen(st) is None:
                # The cycle proviso holds (the step leads to a new state): the
                # other actors' steps can wait.
                self._take_remote(idx, st, seen, depth, new)
                return
        for st in exp.steps:
            self._take_remote(idx, st, seen, depth, new)
            if self.stopped:
                return

    def _take_remote(self, idx: int, st: Step, seen: Callable[[Step], int | None], depth: int,
                     new: list[tuple[int, Step]]) -> None:
        self.transitions += 1
        self.tally.add(st.actor, st.info)
        for v in st.violations:
            self._violation(v, idx, st.actor)
        j = seen(st)
        if j is None:
            j = self._add_remote(st.key, idx, st.actor, st.perm, depth + 1, st.done)
            new.append((j, st))
            for v in st.state_violations:
                self._violation(v, j)
        self.src.append(idx)
        self.dst.append(j)
        self.edge_perm.append(st.perm)
        self.edge_actor.append(st.actor)


def explore_cluster(scenario: Scenario, options: Options, address: str = "auto",
                    workers: int = 0, factory: KernelFactory | None = None,
                    progress: Callable[[Progress], None] | None = None) -> Verdict:
    """The search on a Ray cluster (address "auto": the running one, or a local one
    started here), with `workers` partitions (0: one per CPU of the cluster)."""
    ray = ray_module()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address,
                     include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except ConnectionError:
            if address != "auto":
                raise UsageError(f"no Ray cluster at {address}") from None
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=0)(Partition)
        parts = [remote.remote(scenario, options, factory) for _ in range(n)]
        explorer = ClusterExplorer(Engine(scenario, factory, memo=options.memo), options, parts,
                                   ray.get, progress)
        verdict = explorer.run()
        verdict.note = f"explored on Ray in {n} partitions"
        return verdict
    finally:
        if started:
            ray.shutdown()
