"""`--jobs N`: breadth-first exploration with the expansion in N worker processes.

The coordinator keeps what makes the search one search: the visited set, the
parents (for traces), the graph (for P8), the level-by-level order (for
shortest counterexamples) and the partial-order reduction's cycle proviso.
Workers do the work per state: run (or recall) every actor's step, apply the
reductions, judge the promises, and send back the successors.

Workers are forked from the coordinator once its engine exists, so they start
with the same component slots and interned values; what either side interns
afterwards travels with the messages (the coordinator sends the values it
interned since the worker last heard, a worker the values new to it, marked
by negative ids).  Fingerprints are content hashes (fingerprint.py), the same
in every process.  Chunks are processed in the order they were sent, so a run
is deterministic whatever the timing.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any

from .codec import apply, diff, normal
from .engine import Engine
from .explore import Explorer, Options, Progress, Verdict
from .fingerprint import Fingerprints
from .reduce import PartialOrder, Symmetries
from .scenario import Scenario
from .system import KernelFactory

Sparse = tuple[tuple[int, int], ...]


class _Worker:
    """The worker side: translate states, expand them, translate successors back."""

    def __init__(self, engine: Engine, options: Options) -> None:
        self.e = engine
        self.o = options
        self.fps = Fingerprints(engine.t)
        self.por = PartialOrder(engine) if options.por else None
        self.sym = Symmetries(engine) if options.symmetry else None
        t = engine.t
        self.base_ids, self.base_slots = len(t.values), len(t.keys)
        self.m2l_id: dict[int, int] = {}
        self.l2m_id: dict[int, int] = {}
        self.m2l_slot: dict[int, int] = {}
        self.l2m_slot: dict[int, int] = {}

    def learn(self, slots: list[tuple[int, Any]], values: list[tuple[int, Any]]) -> None:
        t = self.e.t
        for m, key in slots:
            local = t.slot(key)
            self.m2l_slot[m], self.l2m_slot[local] = local, m
        for m, value in values:
            local = t.intern(value)
            self.m2l_id[m], self.l2m_id[local] = local, m

    def to_local(self, s: tuple[int, ...]) -> tuple[int, ...]:
        out: list[int] = []
        bs, bi = self.base_slots, self.base_ids
        for slot, vid in enumerate(s):
            if not vid:
                continue
            ls = slot if slot < bs else self.m2l_slot[slot]
            if ls >= len(out):
                out.extend([0] * (ls + 1 - len(out)))
            out[ls] = vid if vid < bi else self.m2l_id[vid]
        return normal(out)

    def to_main(self, changes: list[tuple[int, int]], defs: dict[str, dict[int, Any]]) -> Sparse:
        """Changed components (local slot, local id) in the coordinator's numbering;
        negative numbers are new to it, their keys and values go in defs."""
        out = []
        bs, bi, t = self.base_slots, self.base_ids, self.e.t
        for slot, vid in changes:
            if slot < bs:
                ms = slot
            else:
                ms = self.l2m_slot.get(slot, -slot)
                if ms < 0:
                    defs["slots"][slot] = t.keys[slot]
            if vid < bi:
                mv = vid  # (0: the component is gone)
            else:
                mv = self.l2m_id.get(vid, -vid)
                if mv < 0:
                    defs["values"][vid] = t.values[vid]
            out.append((ms, mv))
        return tuple(out)

    def expand(self, s_main: tuple[int, ...], fp: int,
               defs: dict[str, dict[int, Any]]) -> tuple[int, list[Any]]:
        e = self.e
        s = self.to_local(s_main)
        succs = e.expand(s)
        ample = self.por.ample(s, succs) if self.por is not None and len(succs) > 1 else None
        out = []
        pos = -1
        for n, (i, r) in enumerate(succs):
            if ample is not None and ample[0] == i:
                pos = n
            edge = e.step(s, i, r)
            target, tfp, perm = edge.target, 0, 0
            if self.o.fingerprints or self.sym is not None:
                tfp = self.fps.update(fp, edge.changes()) if self.o.fingerprints else self.fps.of(target)
            if self.sym is not None:
                target, tfp, perm = self.sym.canonical(target, tfp, self.fps)
            out.append((i, self.to_main(diff(s, target), defs), tfp if self.o.fingerprints else 0, perm,
                        edge.violations, e.state_violations(target), edge.result.info))
        return pos, out


def _serve(worker: _Worker, commands: Any, results: Any) -> None:
    while True:
        msg = commands.get()
        if msg is None:
            return
        chunk, slots, values, states = msg
        worker.learn(slots, values)
        defs: dict[str, dict[int, Any]] = {"slots": {}, "values": {}}
        runs = worker.e.runs
        replies = [(idx, *worker.expand(s, fp, defs)) for idx, s, fp in states]
        results.put((chunk, defs, replies, worker.e.runs - runs))


class ParallelExplorer(Explorer):
    def __init__(self, engine: Engine, options: Options,
                 progress: Callable[[Progress], None] | None = None) -> None:
        super().__init__(engine, options, progress)
        self.jobs = options.jobs
        ctx = mp.get_context("fork")
        self.results: Any = ctx.Queue()
        self.commands: list[Any] = [ctx.Queue() for _ in range(self.jobs)]
        t = engine.t
        self.known = [(len(t.keys), len(t.values)) for _ in range(self.jobs)]
        worker = _Worker(engine, options)
        self.procs = [ctx.Process(target=_serve, args=(worker, self.commands[w], self.results), daemon=True)
                      for w in range(self.jobs)]
        for p in self.procs:
            p.start()
        self.slot_of: list[dict[int, int]] = [{} for _ in range(self.jobs)]  # worker slot -> ours
        self.id_of: list[dict[int, int]] = [{} for _ in range(self.jobs)]
        self.worker_runs = 0
        self._frontier_states: dict[int, tuple[int, ...]] = {}

    def run(self) -> Verdict:
        try:
            v = super().run()
        finally:
            for q in self.commands:
                q.put(None)
            for p in self.procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()
        v.model_runs += self.worker_runs
        return v

    def _send(self, w: int, chunk: int, states: list[tuple[int, tuple[int, ...], int]]) -> None:
        t = self.e.t
        ks, kv = self.known[w]
        slots = [(i, t.keys[i]) for i in range(ks, len(t.keys))]
        values = [(i, t.values[i]) for i in range(kv, len(t.values))]
        self.known[w] = (len(t.keys), len(t.values))
        self.commands[w].put((chunk, slots, values, states))

    def _level(self, frontier: list[tuple[int, tuple[int, ...], int]], depth: int,
               nxt: list[tuple[int, tuple[int, ...], int]]) -> None:
        self._frontier_states = {idx: s for idx, s, _ in frontier}
        size = max(8, min(256, len(frontier) // (4 * self.jobs) or 1))
        chunks = [frontier[i:i + size] for i in range(0, len(frontier), size)]
        owner: dict[int, int] = {}
        sent = done = 0
        waiting: dict[int, Any] = {}
        while done < len(chunks):
            while sent < len(chunks) and sent - done < 2 * self.jobs and not self.stopped:
                w = sent % self.jobs
                owner[sent] = w
                self._send(w, sent, chunks[sent])
                sent += 1
            if sent == done:
                return  # stopped
            while done not in waiting:
                chunk, defs, replies, runs = self.results.get()
                waiting[chunk] = (defs, replies, runs)
            defs, replies, runs = waiting.pop(done)
            self.worker_runs += runs
            if not self.stopped:
                self._absorb(owner[done], defs, replies, depth, nxt, len(frontier))
            done += 1

    def _absorb(self, w: int, defs: dict[str, dict[int, Any]], replies: list[Any], depth: int,
                nxt: list[tuple[int, tuple[int, ...], int]], frontier: int) -> None:
        t = self.e.t
        for local, key in defs["slots"].items():
            self.slot_of[w][local] = t.slot(key)
        for local, value in defs["values"].items():
            self.id_of[w][local] = t.intern(value)
        slot_of, id_of = self.slot_of[w], self.id_of[w]
        for idx, pos, succs in replies:
            parent = self._frontier_states[idx]
            decoded = [(i, self._apply(parent, changes, slot_of, id_of), tfp, perm, tv, sv, info)
                       for i, changes, tfp, perm, tv, sv, info in succs]
            if pos >= 0:
                i, target, tfp, perm, tv, sv, info = decoded[pos]
                if self._key(target, tfp) not in self.visited:
                    self._take(idx, i, target, tfp, perm, depth, nxt, tv, _const(sv), info)
                    decoded = []
            for i, target, tfp, perm, tv, sv, info in decoded:
                self._take(idx, i, target, tfp, perm, depth, nxt, tv, _const(sv), info)
                if self.stopped:
                    return
            if self._tick(frontier + len(nxt), depth):
                return

    @staticmethod
    def _apply(parent: tuple[int, ...], changes: Sparse, slot_of: dict[int, int],
               id_of: dict[int, int]) -> tuple[int, ...]:
        return apply(parent, [(slot if slot >= 0 else slot_of[-slot], vid if vid >= 0 else id_of[-vid])
                              for slot, vid in changes])


def _const(violations: list[Any]) -> Callable[[], list[Any]]:
    return lambda: violations


def explore_parallel(sc: Scenario, options: Options, factory: KernelFactory | None,
                     progress: Callable[[Progress], None] | None) -> Verdict:
    engine = Engine(sc, factory, memo=options.memo)
    return ParallelExplorer(engine, options, progress).run()
