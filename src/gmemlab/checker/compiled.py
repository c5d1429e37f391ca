"""The breadth-first search in C (csearch.c), fed by the Python engine.

The compiled core runs the search of explore.py (same visiting order, same
parents, same edges, same promise judgements, same stop) over packed states,
applying the transition relation the Python engine has derived from the
model: memoized steps, key-set changes, the notifier protocol, the promise
hooks and the verdicts drawn from them, the partial-order decisions, the
symmetry images and fingerprint terms.  When it meets a case none of these
tables holds, it stops and says which (a NEED code, the state concerned in a
query buffer); this module answers it with the very code the Python search
runs (Engine._run_step, Engine.observe, Engine._protocol, the promises,
PartialOrder, Symmetries, Fingerprints), adds the entry, and lets it go on.
So there is still one model and one definition of each promise; the C code
only replays what they said, keyed on what they read.

The graph stays in the core (csearch.c keeps it compactly: a record of
packed component codes per state, 32-bit parents, the edges as masks and
32-bit targets); traces, counterexamples and P8's report are made by the same
Python code as for the Python search, reading the states they walk through
from the core one at a time.  (keep_graph copies the whole graph into the
Explorer's arrays, as the Python search has them, for the tests.)
"""

from __future__ import annotations

import ctypes
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, overload

from ..model.events import PROTOCOL
from . import promises as pr
from .coverage import StepCoverage
from .engine import DISABLED, OBSERVERS, Engine, Result
from .explore import Explorer, Options, Progress, Verdict
from .fingerprint import MASK, Fingerprints
from .native import Native, load
from .reduce import INVARIANT, VISIBLE, NotSymmetric, klass

RC_DONE, RC_BUDGET = 0, 1
(NEED_GROUP, NEED_STEP, NEED_OBS, NEED_KEYSET, NEED_PROTO, NEED_VERDICT, NEED_SAFE, NEED_VISIBLE,
 NEED_SYM, NEED_TERM) = range(2, 12)
VK_P4, VK_STATE = 1, 2
NOTSYM = -1
BUDGET = 2048  # states expanded between returns to Python (progress, --max-states)
MAX_ACTORS = 30


@dataclass(frozen=True)
class Probe:
    """One actor's transition from a state, as the compiled core takes it."""

    target: tuple[int, ...]
    perm: int
    promises: tuple[str, ...]  # broken by the step (its events, the notifier protocol, P4)
    state_promises: tuple[str, ...]  # broken by the successor itself
    finished: int  # mask of the actors finished in the successor


class NativeError(RuntimeError):
    """The compiled core failed (out of memory, or a table it cannot hold)."""


def unsupported(options: Options, actors: int) -> str:
    """Why the compiled core cannot run this search ('' when it can)."""
    if options.jobs > 1:
        return "--jobs runs the Python engine in several processes"
    if not options.memo:
        return "--no-memo runs the model for every transition, in Python"
    if actors > MAX_ACTORS:
        return f"more than {MAX_ACTORS} actors"
    return ""


def available() -> Native:
    return load()


def _u32(values: Sequence[int]) -> Any:
    return (ctypes.c_uint32 * max(1, len(values)))(*values)


STATE_FIELDS = ("parent", "via", "perm", "depth", "done")  # (gm_state's first columns)
CAN = 6


class Column(Sequence[int]):
    """One figure per state of the graph the core keeps (parent, actor, depth,
    ...), read from it on demand, while the search's core is open."""

    def __init__(self, x: NativeExplorer, field: int, n: int) -> None:
        self.x, self.field, self.n = x, field, n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> list[int]: ...

    def __getitem__(self, i: int | slice) -> int | list[int]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return int(self.x._state(i)[self.field])


class NativeExplorer(Explorer):
    """The search of Explorer, run by the compiled core."""

    engine_name = "c"
    keep_graph = False  # copy the whole graph into the Explorer's arrays (the tests compare them)

    def __init__(self, engine: Engine, options: Options, native: Native,
                 progress: Callable[[Progress], None] | None = None) -> None:
        super().__init__(engine, options, progress)
        assert native.lib is not None
        self.lib: Any = native.lib
        e = engine
        self.n = len(e.prog.names)
        self.results: list[Any] = [None]  # result id -> Result (0: disabled)
        self.rid_of: dict[int, int] = {}  # id(Result) -> result id
        self.rid_actor: list[int] = [-1]  # result id -> the actor whose step it is
        self.mslots: list[list[int]] = [[]]
        self.changes: list[tuple[Any, Any]] = []  # key-set change id -> (added, removed)
        self.change_of: dict[tuple[Any, Any], int] = {}
        self.ovals: list[Any] = []  # observation id -> value
        self.oval_of: dict[Any, int] = {}
        self.vlists: list[tuple[pr.Violation, ...]] = [()]
        self.vlist_of: dict[tuple[pr.Violation, ...], int] = {(): 0}
        self.terms = self.fps or Fingerprints(e.t)
        self.synced = 0
        a = e.active
        wanted = (("mapping_counts", "P2" in a or "P3" in a), ("private_pages", "P2" in a),
                  ("stray_mmap_pending", "P5" in a), ("pkvm_problems", "P7" in a))
        self.state_obs = [o for o, on in wanted if on]
        self.ctx: Any = None
        self._row = (ctypes.c_int64 * 8)()
        self._erow = (ctypes.c_int64 * (3 * MAX_ACTORS))()
        self._max_depth = 0
        # The store, when the search has run: bytes of one state's record, of
        # the whole store at its largest, sweeps of P8's fixpoint.
        self.record_bytes = 0
        self.store_bytes = 0
        self.sweeps = 0

    # --- the tables the core reads -------------------------------------------------------------------

    def _config(self) -> list[int]:
        e, sym = self.e, self.sym
        perms = [tuple(range(self.n))]
        if sym is not None:
            perms = [sym.actor_perm(p) for p in range(len(sym.perms))]
        if len(perms) > 64:
            raise NativeError("more than 64 symmetry permutations")
        mm = self.por.mm_slot if self.por is not None else -1
        vmas = sym._vmas_slot if sym is not None else -1
        ptes = sym._ptes_slot if sym is not None else -1
        obs = OBSERVERS.index
        cfg = [self.n, *e.actor_slots, int(self.o.all_promises), int(self.por is not None),
               int("P4" in e.active), int("P6" in e.active), self.o.max_states, obs("private_pages"),
               obs("host_references"), obs("outstanding_references"), len(self.state_obs),
               *(obs(o) for o in self.state_obs), mm, vmas, ptes, len(perms)]
        for g in perms:
            cfg += list(g)
        return cfg

    def _sync_slots(self) -> None:
        """Tell the core about slots made since it last heard (it widens its states)."""
        keys = self.e.t.keys
        if len(keys) == self.synced:
            return
        moving = self.sym is not None and len(self.sym.perms) > 1
        flags = bytes(1 if moving and klass(k) not in INVARIANT else 0 for k in keys)
        self._check(self.lib.gm_set_slots(self.ctx, len(keys), flags))
        self.synced = len(keys)

    def _check(self, rc: int) -> None:
        if rc:
            raise NativeError("the compiled core ran out of memory" if rc == -1
                              else "more than 4,294,967,294 states: the compiled core numbers them in 32 bits"
                              if rc == -3 else f"the compiled core failed (code {rc})")

    def _oid(self, value: Any) -> int:
        try:
            key: Any = value
            hash(key)
        except TypeError:
            from .codec import pack

            key = ("unhashable", pack(value))
        i = self.oval_of.get(key)
        if i is None:
            i = self.oval_of[key] = len(self.ovals)
            self.ovals.append(value)
        return i

    def _vlist(self, violations: Sequence[pr.Violation]) -> int:
        key = tuple(violations)
        v = self.vlist_of.get(key)
        if v is None:
            v = self.vlist_of[key] = len(self.vlists)
            self.vlists.append(key)
            codes = [pr.ORDER.index(x.promise) for x in key]
            self._check(self.lib.gm_add_vlist(self.ctx, v, len(codes), _u32(codes)))
        return v

    def _rid(self, r: Any, actor: int) -> int:
        """The core's id of a step result (registering it the first time)."""
        if r is DISABLED:
            return 0
        rid = self.rid_of.get(id(r))
        if rid is not None:
            return rid
        assert isinstance(r, Result)
        e = self.e
        rid = self.rid_of[id(r)] = len(self.results)
        self.results.append(r)
        self.rid_actor.append(actor)
        ev = self._vlist(pr.event_violations(r.events, e.active)) if r.events else 0
        mslots: list[int] = []
        for x in r.events:
            if isinstance(x, PROTOCOL):
                m = e.t.slot(("m", x.ino))
                if m not in mslots:
                    mslots.append(m)
        self.mslots.append(mslots)
        keys = []
        for slot, added, removed in r.keys:
            ch = self.change_of.get((added, removed))
            if ch is None:
                ch = self.change_of[(added, removed)] = len(self.changes)
                self.changes.append((added, removed))
            keys += [slot, ch]
        writes = [x for w in r.writes for x in w]
        touched = sorted(r.touched)
        self._sync_slots()
        self._check(self.lib.gm_add_result(self.ctx, rid, len(r.writes), _u32(writes), len(r.keys),
                                           _u32(keys),
                                           ev, len(mslots), _u32(mslots), len(touched), _u32(touched)))
        return rid

    def _rule(self, kind: int, aid: int, s: tuple[int, ...], value: int) -> None:
        """What the engine's memo just learnt or recalled for s (Engine._spec)."""
        spec = self.e._spec
        sp = self.e._padded(s)
        self._sync_slots()
        self._check(self.lib.gm_add_rule(self.ctx, kind, aid, len(spec), _u32(spec),
                                         _u32([sp[j] for j in spec]), value))

    def _query(self) -> tuple[int, ...]:
        """The state the core asks about, as the Python engine keeps states."""
        w = self.lib.gm_width(self.ctx)
        ids = list(self.lib.gm_query(self.ctx)[:w])
        n = len(ids)
        while n and not ids[n - 1]:
            n -= 1
        return tuple(ids[:n])

    # --- answers to the core's questions ---------------------------------------------------------------

    def _answer(self, rc: int) -> None:
        io = self.lib.gm_io(self.ctx)
        e, t, lib, ctx = self.e, self.e.t, self.lib, self.ctx
        if rc == NEED_GROUP:
            i, aid = io[0], io[1]
            self._check(lib.gm_add_group(ctx, i, aid, int(e.prog.done(i, t.values[aid]))))
        elif rc == NEED_STEP:
            i = io[0]
            s = self._query()
            aid = s[e.actor_slots[i]]
            a = t.values[aid]
            done = e.prog.done(i, a)
            self._check(lib.gm_add_group(ctx, i, aid, int(done)))
            if not done:
                r = e._lookup((i, aid), s)
                if r is None:
                    r = e._run_step(s, i, a)
                self._rule(i, aid, s, self._rid(r, i))
        elif rc == NEED_OBS:
            o = io[0]
            s = self._query()
            runs = e.runs
            value = e.observe(s, OBSERVERS[o])
            self._rule(self.n + o, 0, s, self._oid(value))
            if e.runs != runs:
                lib.gm_set_visible_dirty(ctx, 1)  # the hooks may have read something new
        elif rc == NEED_KEYSET:
            cur, ch = io[1], io[2]
            added, removed = self.changes[ch]
            k = (cur, added, removed)
            new = e._keysets.get(k)
            if new is None:  # (Engine.apply)
                keys = set(t.values[cur]) if cur else set()
                new = e._keysets[k] = t.intern(tuple(sorted((keys | set(added)) - set(removed))))
            self._check(lib.gm_add_keyset(ctx, cur, ch, new))
        elif rc == NEED_PROTO:
            rid = io[0]
            s = self._query()
            after, bad = e._protocol(s, self.results[rid].events)
            ms = self.mslots[rid]
            vals = [s[m] if m < len(s) else 0 for m in ms]
            writes = [x for m in ms for x in (m, after[m] if m < len(after) else 0)]
            vl = self._vlist(bad)
            self._sync_slots()
            self._check(lib.gm_add_proto(ctx, rid, len(ms), _u32(vals), len(ms), _u32(writes), vl))
        elif rc == NEED_VERDICT:
            key = [io[1 + j] for j in range(io[0])]
            self._check(lib.gm_add_verdict(ctx, len(key), _u32(key), self._vlist(self._judge(key))))
        elif rc == NEED_SAFE:
            self._safe(io[0], io[1], io[2], self._query())
        elif rc == NEED_VISIBLE:
            assert self.por is not None
            self.por._check_visible()
            lib.gm_set_visible_dirty(ctx, 0)
        elif rc == NEED_SYM:
            self._symmetry(io[0], io[1], io[2], io[3])
        elif rc == NEED_TERM:
            h = self.terms.term(io[0], io[1]) & MASK
            self._check(lib.gm_add_term(ctx, io[0], io[1], h & (2**64 - 1), h >> 64))
        else:
            self._check(rc)

    def _judge(self, key: list[int]) -> list[pr.Violation]:
        """The promises on observations (Engine.step's P4, Engine.state_violations)."""
        v = self.ovals
        if key[0] == VK_P4:
            before, after, refs = v[key[1]], v[key[2]], v[key[3]]
            seen = {"private_pages": after, "host_references": refs}
            return pr.newly_private_violations(lambda name: before, seen.__getitem__)
        terminal = bool(key[1])
        values = dict(zip(self.state_obs, (v[x] for x in key[2:]), strict=False))
        if terminal and "P6" in self.e.active:
            values["outstanding_references"] = v[key[-1]]
        bad = pr.state_violations(values.__getitem__, self.e.active)
        if terminal:
            bad += pr.terminal_violations(values.__getitem__, self.e.active)
        return bad

    def _safe(self, rid: int, i: int, b: int, s: tuple[int, ...]) -> None:
        """PartialOrder._safe for actor i's step rid, in parts: its own (b < 0,
        validating the step's footprint the first time), or its independence
        of actor b in s."""
        por, e = self.por, self.e
        assert por is not None
        r = self.results[rid]
        reads, writes = por.footprint(r)
        if b < 0:
            if id(r) not in por._checked:
                por._validate(i, e.actor_state(s, i).pc, reads, writes)
                por._checked.add(id(r))
            ok = not por.relevant(reads, writes)[1] & VISIBLE
            key = [rid, i, 0xFFFFFFFF]
        else:
            mm = s[por.mm_slot] if por.mm_slot < len(s) else 0
            aid = s[e.actor_slots[b]] if e.actor_slots[b] < len(s) else 0
            ok = por.independent(i, *por.relevant(reads, writes), e.t.values[mm] if mm else None, b,
                                 e.actor_state(s, b))
            key = [rid, i, mm, b, aid]
        self._check(self.lib.gm_add_safe(self.ctx, len(key), _u32(key), int(ok)))

    def _symmetry(self, gi: int, slot: int, vid: int, vmas: int) -> None:
        """One component's image under permutation gi (Symmetries._image)."""
        sym, t = self.sym, self.e.t
        assert sym is not None
        value: int
        try:
            if slot == sym._ptes_slot:
                image = sym._permute_ptes(t.values[vid], t.values[vmas], gi)
                value = (slot << 32) | t.intern(image)
            else:
                key, image = sym._permute(t.keys[slot], t.values[vid], gi)
                value = (t.slot(key) << 32) | t.intern(image)
        except NotSymmetric:
            value = NOTSYM
        self._sync_slots()
        self._check(self.lib.gm_add_sym(self.ctx, _u32([gi, slot, vid, vmas]), value))

    # --- the search ------------------------------------------------------------------------------------

    def run(self) -> Verdict:
        start = time.perf_counter()
        lib = self.lib
        self.open()
        try:
            s0 = self.e.initial
            lib.gm_set_initial(self.ctx, _u32(s0), len(s0))
            self._start = self._last_report = start
            while True:
                rc = lib.gm_run(self.ctx, BUDGET)
                if rc == RC_DONE:
                    break
                if rc == RC_BUDGET:
                    self._report()
                else:
                    self._answer(rc)
            stats = self._stats()
            self._collect(stats)
            verdict = self._verdict(start, bool(stats[2]))
            stats = self._stats()
            self.record_bytes, self.store_bytes, self.sweeps = stats[6], stats[7], stats[8]
            if self.keep_graph:
                self._export(stats)
            return verdict
        finally:
            self.close()

    def coverage(self) -> tuple[StepCoverage, ...]:
        """Explorer.coverage, from the core's count of the transitions it took
        per step result (each result is one actor's step ending one way)."""
        if self.ctx is not None and not self.tally.counts:
            counts = (ctypes.c_int64 * len(self.results))()
            self._check(self.lib.gm_counts(self.ctx, len(self.results), counts))
            for rid in range(1, len(self.results)):
                if counts[rid]:
                    self.tally.add(self.rid_actor[rid], self.results[rid].info, counts[rid])
        return super().coverage()

    # --- one state at a time (the agreement tests) -------------------------------------------------------

    def open(self) -> None:
        """Set the core up (run() then searches; the tests probe() states one by one)."""
        cfg = self._config()
        self.ctx = self.lib.gm_new((ctypes.c_int64 * len(cfg))(*cfg))
        if not self.ctx:
            raise NativeError("the compiled core cannot hold this scenario")
        self._sync_slots()

    def close(self) -> None:
        if self.ctx is not None:
            self.lib.gm_free(self.ctx)
            self.ctx = None

    def probe(self, s: tuple[int, ...]) -> list[Probe | None]:
        """Every actor's transition from s as the core takes it (None: the actor
        cannot move): the representative successor, its permutation, the
        promises the step and the successor break, and the finished actors."""
        maxv = int(self.lib.gm_maxv())
        while True:
            self._sync_slots()
            w = int(self.lib.gm_width(self.ctx))
            state = (ctypes.c_uint32 * w)(*s, *([0] * (w - len(s))))
            info = (ctypes.c_int64 * (self.n * (maxv + 4)))()
            targets = (ctypes.c_uint32 * (self.n * w))()
            rc = self.lib.gm_probe(self.ctx, state, info, targets)
            if rc == 0:
                break
            self._answer(rc)
        out: list[Probe | None] = []
        for i in range(self.n):
            row = info[i * (maxv + 4):(i + 1) * (maxv + 4)]
            if not row[0]:
                out.append(None)
                continue
            t = list(targets[i * w:(i + 1) * w])
            while t and not t[-1]:
                t.pop()
            promises = tuple(v.promise for vl in row[1:maxv + 1] if vl for v in self.vlists[vl])
            state_promises = tuple(v.promise for v in self.vlists[row[maxv + 3]])
            out.append(Probe(tuple(t), row[maxv + 1], promises, state_promises, row[maxv + 2]))
        return out

    def _stats(self) -> Any:
        stats = (ctypes.c_int64 * 16)()
        self.lib.gm_stats(self.ctx, stats)
        return stats

    def _report(self) -> None:
        if self.progress is None or time.perf_counter() - self._last_report <= 0.2:
            return
        stats = self._stats()
        self._last_report = time.perf_counter()
        self.progress(Progress(stats[0], stats[1], stats[3], stats[4], self._last_report - self._start))

    # --- the graph, as the core keeps it -------------------------------------------------------------------

    def _state(self, x: int) -> Any:
        """gm_state's row for state x: parent, via, perm, depth, done, edges out, can."""
        self._check(self.lib.gm_state(self.ctx, x, self._row))
        return self._row

    def _edges(self, x: int) -> list[tuple[int, int, int]]:
        """The edges out of state x in the order taken: (actor, target, permutation)."""
        k = self.lib.gm_edges(self.ctx, x, self._erow)
        self._check(min(k, 0))
        e = self._erow
        return [(e[3 * q], e[3 * q + 1], e[3 * q + 2]) for q in range(k)]

    def _collect(self, stats: Any) -> None:
        """The graph's columns (read from the core), the violations into the findings."""
        ns = stats[0]
        self.transitions = stats[1]
        self._max_depth = stats[4]
        columns: Any = [Column(self, f, ns) for f in range(len(STATE_FIELDS))]
        self.parent, self.via, self.perm, self.depth, self.done = columns
        nfound = stats[5]
        log = (ctypes.c_int64 * (4 * max(1, nfound)))()
        self.lib.gm_found(self.ctx, log)
        for k in range(nfound):
            vl, pos, state, actor = log[4 * k: 4 * k + 4]
            self._violation(self.vlists[vl][pos], state, actor if actor >= 0 else None)

    def _export(self, stats: Any) -> None:
        """The whole graph into the Explorer's arrays (Explorer's types), from the core."""
        ns, ne = stats[0], stats[1]

        def column(which: int, code: str, count: int) -> array[int]:
            buf = (ctypes.c_int64 * max(1, count))()
            self._check(self.lib.gm_export(self.ctx, which, buf))
            return array(code, buf[:count])

        self.parent, self.via, self.perm = column(0, "q", ns), column(1, "h", ns), column(2, "h", ns)
        self.depth, self.done = column(3, "l", ns), column(4, "q", ns)
        self.src, self.dst = column(5, "q", ne), column(6, "q", ne)
        self.edge_actor, self.edge_perm = column(7, "h", ne), column(8, "h", ne)

    def max_depth(self) -> int:
        return self._max_depth

    def _can_finish(self) -> tuple[Sequence[int], tuple[int, int, int] | None]:
        if self.ctx is None:
            return super()._can_finish()
        out = (ctypes.c_int64 * 4)()
        self._check(self.lib.gm_liveness(self.ctx, out))
        can = Column(self, CAN, len(self.parent))
        return can, ((out[1], out[2], out[3]) if out[0] else None)

    def _deadlocked(self, st: int) -> bool:
        return not self._state(st)[5]

    def _out_edges(self) -> Callable[[int], Sequence[tuple[int, int, int]]]:
        return self._edges  # the core keeps them per state
