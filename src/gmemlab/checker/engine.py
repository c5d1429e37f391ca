"""The scenario as a transition system over packed states, with memoized steps.

A packed state (codec.py) is a tuple of interned component ids: the model's
state, each actor's own state (``("a", name)``) and, per file, where its mmap
notifier protocol stands (``("m", inode)``, for promise P5).

A transition runs the model: the packed state is materialized into live
objects that record what is read, the actor's step runs (system.py), and the
state after it is decomposed again.  The step's result (the components it
wrote, the events it recorded) depends only on the components it read, so it
is stored under their values and reused, without running the model, for
every later state that agrees on them: that is what makes exploring the
product of several actors fast (most interleavings repeat steps an actor has
already taken in another combination of the others' states).  The same holds
for the model's promise hooks (observers).  `memo=False` runs the model for
every transition instead; tests show both explore the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from ..model.events import PROTOCOL, Event
from . import promises as pr
from .codec import Key, Recorder, Tables, apply, decompose, decompose_touched, is_model_key, materialize
from .scenario import Scenario
from .system import ActorState, KernelFactory, Program, StepInfo, new_kernel, run_transition

OBSERVERS = ("private_pages", "host_references", "outstanding_references", "mapping_counts",
             "stray_mmap_pending", "pkvm_problems")


@dataclass(frozen=True, slots=True)
class Result:
    """One actor's transition from a state: what it wrote and recorded."""

    writes: tuple[tuple[int, int], ...]
    keys: tuple[tuple[int, tuple[Any, ...], tuple[Any, ...]], ...]  # key-set changes: slot, added, removed
    events: tuple[Event, ...]
    info: StepInfo
    reads: tuple[int, ...]  # slots read (for the partial-order reduction)
    # every slot the step changes (writes and key sets): tested against what the
    # private-page observation read, once per transition (P4)
    touched: frozenset[int] = frozenset()


DISABLED: Any = object()


@dataclass(frozen=True, slots=True)
class Edge:
    """A transition taken from a state: the actor, the successor, what it broke."""

    actor: int
    result: Result
    target: tuple[int, ...]
    violations: tuple[pr.Violation, ...]
    source: tuple[int, ...] = ()

    def changes(self) -> list[tuple[int, int, int]]:
        """The components (slot, old id, new id) the step changed."""
        s, t = self.source, self.target
        slots = {j for j, _ in self.result.writes} | {j for j, _, _ in self.result.keys}
        if len(t) > len(s) or self.result.events:
            # (the notifier protocol's components are the engine's, not the step's)
            slots |= {j for j in range(min(len(s), len(t)), max(len(s), len(t)))}
            slots |= {j for j, (a, b) in enumerate(zip(s, t, strict=False)) if a != b}
        ns, nt = len(s), len(t)
        out = []
        for j in slots:
            a = s[j] if j < ns else 0
            b = t[j] if j < nt else 0
            if a != b:
                out.append((j, a, b))
        return out


class Engine:
    def __init__(self, scenario: Scenario, factory: KernelFactory | None = None, memo: bool = True) -> None:
        self.scenario = scenario
        self.prog = Program(scenario)
        k = new_kernel(scenario.design, factory)
        self.prog.setup(k)
        k.drain_events()
        self.kernel = k
        self.design = k.design
        self.active = frozenset(scenario.promises) if scenario.promises else k.design.promises()
        self.t = Tables()
        comps: dict[Key, Any] = decompose(k.state)
        for name in self.prog.names:
            comps[("a", name)] = ActorState()
        self.actor_slots = tuple(self.t.slot(("a", n)) for n in self.prog.names)
        # The actors' components of a state, in one C call (the actor slots come
        # first of every slot made later, so every state tuple has them).
        self._actor_ids: Any = _itemgetter(*self.actor_slots) if len(self.actor_slots) > 1 \
            else (lambda s: (s[self.actor_slots[0]],))
        self._finished: dict[tuple[int, ...], int] = {}
        self.initial = self.t.pack_state(comps)
        self.use_memo = memo
        self.memo: dict[Any, list[tuple[tuple[int, ...], Any, dict[tuple[int, ...], Any]]]] = {}
        self._spec: tuple[int, ...] = ()  # the slots read by the last step or observer looked up
        self._private: tuple[tuple[int, ...] | None, Any, frozenset[int]] = (None, None, frozenset())
        self._last_reads: set[int] = set()
        self.observer_reads: dict[str, set[int]] = {}  # slots each promise hook has read
        self._keysets: dict[tuple[int, tuple[Any, ...], tuple[Any, ...]], int] = {}
        self.runs = 0  # model executions (memo misses)
        self.lookups = 0

    # --- transitions ----------------------------------------------------------------------------

    def actor_state(self, s: tuple[int, ...], i: int) -> ActorState:
        st: ActorState = self.t.values[s[self.actor_slots[i]]]
        return st

    def finished(self, s: tuple[int, ...]) -> int:
        """Bitmask of the actors that have finished their program in s."""
        ids = self._actor_ids(s)
        mask = self._finished.get(ids)
        if mask is None:
            mask = 0
            for i, aid in enumerate(ids):
                if self.prog.done(i, self.t.values[aid]):
                    mask |= 1 << i
            self._finished[ids] = mask
        return mask

    def transition(self, s: tuple[int, ...], i: int, padded: tuple[int, ...] | None = None) -> Result | None:
        """Actor i's step from s, or None when it cannot take one."""
        aid = s[self.actor_slots[i]]
        a: ActorState = self.t.values[aid]
        if not a.busy and a.pc >= self.prog.lengths[i]:
            return None
        r = self._lookup((i, aid), s, padded)
        if r is None:
            r = self._run_step(s, i, a)
        return None if r is DISABLED else r

    def _padded(self, s: tuple[int, ...]) -> tuple[int, ...]:
        """s with every slot there is (absent ones 0), for lookups by position."""
        missing = len(self.t.keys) - len(s)
        return s + (0,) * missing if missing > 0 else s

    def _lookup(self, key: Any, s: tuple[int, ...], padded: tuple[int, ...] | None = None) -> Any:
        entries = self.memo.get(key)
        if entries is None:
            return None
        self.lookups += 1
        # A miss may have added slots since the caller padded s.
        sp = padded if padded is not None and len(padded) == len(self.t.keys) else self._padded(s)
        for entry in entries:
            r = entry[2].get(entry[1](sp))
            if r is not None:
                self._spec = entry[0]
                return r
        return None

    def _store(self, key: Any, s: tuple[int, ...], reads: dict[Key, None], result: Any,
               spec: tuple[int, ...] | None = None) -> None:
        if spec is None:
            spec = tuple(sorted({self.t.slot(k) for k in reads}))
        self._spec = spec
        if not self.use_memo:
            return
        # itemgetter of two or more positions gives a tuple, in C.
        getter = _itemgetter(*spec) if len(spec) > 1 else _getter(spec)
        vals = getter(self._padded(s))
        entries = self.memo.setdefault(key, [])
        for known, _, table in entries:
            if known == spec:
                table[vals] = result
                return
        entries.append((spec, getter, {vals: result}))

    def _materialize(self, s: tuple[int, ...]) -> dict[Key, Any]:
        comps = self.t.model_components(s)
        self.kernel.state = materialize(comps, recording=True)
        return comps

    def _run_step(self, s: tuple[int, ...], i: int, a: ActorState) -> Any:
        self.runs += 1
        comps = self._materialize(s)
        k = self.kernel
        with Recorder() as rec:
            res = run_transition(k, self.prog, i, a)
        if res is None:
            self._last_reads = {self.t.slot(k) for k in rec.reads}  # for tests of the memo
            self._store((i, s[self.actor_slots[i]]), s, rec.reads, DISABLED)
            return DISABLED
        new_a, info = res
        events = tuple(k.drain_events())
        post, gone = decompose_touched(k.state, comps, rec)
        t = self.t
        reads = rec.reads
        assigned = rec.assigned
        wrote = rec.written()
        writes, keys = [], []
        for key, v in post.items():
            old = comps.get(key, _MISSING)
            if key[0] == "k":
                # A dict's key set changes as a side effect of inserting or deleting
                # entries, not because the step read it: it is written as a change
                # (keys added, keys removed) to whatever key set the state has.  An
                # assigned entry is added, even if this state already had it.
                if old == v and not assigned:
                    continue  # (the common case: nothing added or removed)
                before = set(old) if old is not _MISSING else set()
                added = (set(v) - before) | {k for k in v if wrote(("e", key[1], k))}
                removed = before - set(v)
                if added or removed:
                    keys.append((t.slot(key), tuple(sorted(added)), tuple(sorted(removed))))
            elif old != v or wrote(key):
                writes.append((t.slot(key), t.intern(v)))
        for key in gone:
            # Which components a deleted record had depends on its nested
            # records: the deletion is valid only where they are the same.
            reads[key] = None
            writes.append((t.slot(key), 0))
        writes.append((self.actor_slots[i], t.intern(new_a)))
        spec = tuple(sorted({t.slot(key) for key in reads}))
        result = Result(tuple(sorted(writes)), tuple(keys), events, info, spec,
                        frozenset([j for j, _ in writes] + [j for j, _, _ in keys]))
        self._store((i, s[self.actor_slots[i]]), s, reads, result, spec)
        return result

    # --- observers (the model's promise hooks) -----------------------------------------------------

    def observe(self, s: tuple[int, ...], name: str) -> Any:
        key = ("obs", name)
        r = self._lookup(key, s)
        if r is not None:
            return r[0]
        self.runs += 1
        self._materialize(s)
        with Recorder() as rec:
            value = getattr(self.kernel, name)()
        self._store(key, s, rec.reads, (value,))
        self.observer_reads.setdefault(name, set()).update(self._spec)
        return value

    def observer(self, s: tuple[int, ...]) -> pr.Observe:
        return lambda name: self.observe(s, name)

    # --- successors and promises ---------------------------------------------------------------

    def apply(self, s: tuple[int, ...], r: Result) -> tuple[int, ...]:
        if not r.keys:
            return apply(s, r.writes)
        writes = list(r.writes)
        for slot, added, removed in r.keys:
            cur = s[slot] if slot < len(s) else 0
            k = (cur, added, removed)
            new = self._keysets.get(k)
            if new is None:
                keys = set(self.t.values[cur]) if cur else set()
                new = self._keysets[k] = self.t.intern(tuple(sorted((keys | set(added)) - set(removed))))
            writes.append((slot, new))
        return apply(s, writes)

    def step(self, s: tuple[int, ...], i: int, r: Result) -> Edge:
        """Apply actor i's transition r to s: the successor, with the violations of
        the promises judged on the step (events, P4, P5, P6 at the end)."""
        target = self.apply(s, r)
        bad: list[pr.Violation] = []
        if r.events:
            bad += pr.event_violations(r.events, self.active)
            target, more = self._protocol(target, r.events)
            bad += more
        if "P4" in self.active and self._private_may_change(s, r):
            bad += pr.newly_private_violations(self.observer(s), self.observer(target))
        return Edge(i, r, target, tuple(bad), s)

    def _private_may_change(self, s: tuple[int, ...], r: Result) -> bool:
        """Whether the step writes something the private-page observation of s read
        (if not, it sees the same after the step, and P4 has nothing to judge)."""
        last, _, slots = self._private
        if last is not s:
            value = self.observe(s, "private_pages")
            self._private = (s, value, frozenset(self._spec))
            slots = self._private[2]
        return not slots.isdisjoint(r.touched)

    def _protocol(self, s: tuple[int, ...],
                  events: tuple[Event, ...]) -> tuple[tuple[int, ...], list[pr.Violation]]:
        writes: dict[int, int] = {}
        bad: list[pr.Violation] = []
        for ev in events:
            if not isinstance(ev, PROTOCOL):
                continue
            slot = self.t.slot(("m", ev.ino))
            cur = writes.get(slot, s[slot] if slot < len(s) else 0)
            p = self.t.values[cur] if cur else pr.EMPTY
            p, broken = pr.protocol_step(p, ev)
            if "P5" in self.active:
                bad += pr.protocol_violations(ev.ino, broken)
            writes[slot] = 0 if p == pr.EMPTY else self.t.intern(p)
        return apply(s, writes.items()), bad

    def state_violations(self, s: tuple[int, ...]) -> list[pr.Violation]:
        """The promises judged on a state alone (P2, P3, P7; P6 once all actors are done)."""
        obs = self.observer(s)
        bad = pr.state_violations(obs, self.active)
        if self.finished(s) == (1 << len(self.actor_slots)) - 1:
            bad += pr.terminal_violations(obs, self.active)
        return bad

    def expand(self, s: tuple[int, ...]) -> list[tuple[int, Result]]:
        out = []
        sp = self._padded(s)
        memo = self.memo
        # transition() inlined for the memo hits, which are nearly all of them:
        # the search spends its time here.
        for i, slot in enumerate(self.actor_slots):
            entries = memo.get((i, s[slot]))
            r = None
            if entries is not None:
                for entry in entries:
                    r = entry[2].get(entry[1](sp))
                    if r is not None:
                        break
            if r is None:
                r = self.transition(s, i, sp)  # finished, or a step never taken from what it reads
                if r is None:
                    continue
            elif r is DISABLED:
                continue
            out.append((i, r))
        return out

    # --- looking inside (reports, tests) -------------------------------------------------------------

    def model_components(self, s: tuple[int, ...]) -> dict[Key, Any]:
        """The model's part of a packed state, unpacked (for tests and reports)."""
        return self.t.components(s, is_model_key)


_MISSING: Any = object()


_itemgetter: Any = itemgetter  # (typed as Any: mypy 2.4 crashes on itemgetter(*spec))


def _getter(spec: tuple[int, ...]) -> Any:
    return lambda sp: tuple(sp[j] for j in spec)
