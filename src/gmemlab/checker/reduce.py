"""Reductions that keep the verdict exact: partial orders and symmetry.

Partial-order reduction (ample sets).  In a state s, one actor's step t may be
explored alone, the others' steps postponed, when

* C1: t commutes with everything the other actors can do before this actor
  moves again: t's components (its actual reads and writes at s, which the
  engine records) are disjoint from the footprints of every operation left in
  the others' programs (FOOTPRINTS, a static over-approximation by component
  class), except for actors that cannot move until this one releases the
  mmap_lock it holds;
* C2: t writes nothing a state promise looks at (VISIBLE: what the promise
  hooks read); event promises (P1, P2's events, P5) are judged on the step
  itself, which commutes;
* C3: t leads to a state not yet visited (explore.py checks; otherwise the
  state is fully expanded), so no step is postponed forever around a cycle.

The footprint table is the one piece of knowledge about the model here; every
step the explorer takes is checked against it (a step touching a class its
operation does not declare stops the run with an internal error, so a stale
table cannot silently give a wrong verdict), and tests compare the reduced
search with the full one.

Symmetry: see Symmetries below.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..model.contract import Moves, Space, Touch
from ..model.events import PROTOCOL
from ..model.steps import AccessPlan, ConvertPlan, Steps
from .codec import Key, normal
from .declared import named, where
from .system import ActorState


class ReductionError(RuntimeError):
    """The footprint table does not cover what the model did: a checker bug."""


def klass(key: Key) -> str:
    """A component's class: its key without object ids (e.g. "inodes.refs")."""
    t = key[0]
    if t == "s":
        return str(key[1])
    if t == "k":
        return f"{key[1]}#keys"
    if t in ("e", "o") and key[1] == "pending":
        return f"pending:{key[2]}"
    if t == "e":
        return str(key[1])
    if t == "o":
        return ".".join((key[1], *(str(x) for x in key[3:])))
    if t == "a":
        return f"actor:{key[1]}"
    return "monitor"


ALL = frozenset({"*"})
# The groups the footprints below are written in, as the state's fields declare
# them (model/state.py, model/contract.py): what every step may read (its
# arguments' fds and files, and the locks), page contents and references, host
# page tables and what holds pages (PTEs per virtual page; per file page the
# PTEs and VMAs mapping it and the GUP pins on it), the restricted memfd's
# state, KVM's, the host address space, and what a fault changes.
COMMON = where(touch=Touch.COMMON)
_PAGES = where(touch=Touch.PAGES)
_PTES = where(touch=Touch.HOST_MAPPING)
_RESTRICTED = where(touch=Touch.RESTRICTED)
_KVM = where(touch=Touch.KVM)
_HOST = where(touch=Touch.HOST) | _PTES
_FAULT = where(touch=Touch.FAULT)
# op -> (classes it may read, classes it may write).  Operations not listed
# (and the ones whose effects reach far: mmap, munmap, close, memslots, ...)
# are taken to touch everything: no step is ever postponed across them.
FOOTPRINTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "get_pfn": (COMMON | _RESTRICTED, _PAGES),
    "put_pfn": (COMMON | _RESTRICTED, named("inodes.refs")),
    "wait_unreferenced": (COMMON | _RESTRICTED | _PAGES | named("inodes.pins"), frozenset()),
    # (page-granular designs check VMAs, pins and references, kvm-map zaps PTEs)
    "set_memory_attributes": (COMMON | _RESTRICTED | _KVM | _PTES | named("inodes.refs", "vmas"),
                              named("vms.attributes", "vms.converting", "ptes", "inodes.host_ptes")),
    "guest_access": (COMMON | _RESTRICTED | _KVM | _HOST | _PAGES,
                     _PAGES | named("overlays", "overlays#keys", "overlay_pages")),
    # (a fault allocates the page and installs a PTE)
    "read_mem": (COMMON | _HOST | _PAGES, _FAULT),
    "write_mem": (COMMON | _HOST | _PAGES, _FAULT),
    "file_state": (COMMON | _RESTRICTED | _PAGES | _HOST, frozenset()),
    "notifier_log": (COMMON | _RESTRICTED | named("inodes.restricted.log"), frozenset()),
}
# mmap and munmap of a file that stays open: the host address space, the
# file's mapping state and its notifier protocol (KVM's notifiers included).
_MAP_READS = COMMON | _RESTRICTED | _KVM | _PTES | where(touch=Touch.MAP)
_MAP_WRITES = _PTES | where(touch=Touch.MAP_WRITES)
# Operations after which a munmap may release a file (the last reference to a
# struct file going with its mapping): with them, mmap and munmap touch everything.
RELEASING = frozenset({"close", "dup", "memfd_create", "memfd_restricted", "create_guest_memfd",
                       "create_vm", "create_vcpu", "open_kvm", "set_user_memory_region",
                       "set_user_memory_region2"})


def footprints(actions: Iterable[Any], releasing: bool) -> list[tuple[frozenset[str], frozenset[str]]]:
    out = []
    for act in actions:
        if act.op in ("mmap", "munmap") and not releasing and \
                not (act.op == "mmap" and "ANONYMOUS" in str(dict(act.args).get("flags", "")).upper()):
            out.append((_MAP_READS, _MAP_WRITES))
        else:
            out.append(FOOTPRINTS.get(act.op, (ALL, ALL)))
    return out


# Key sets that steps change by adding or removing their own keys only (the
# fields keyed by actor): no step interferes with another through them.
COMMUTATIVE = frozenset(c for c in where(space=Space.ACTOR) if c.endswith("#keys"))
# What the state promises' hooks read (model/observe.py): a step writing one
# of these may change a promise's truth and is never explored alone.
VISIBLE = where(visible=True)
# P6 is judged only where every actor has finished, and partial-order reduction
# keeps every such state: its hook's reads need not be visible.
TERMINAL_ONLY = frozenset({"outstanding_references"})


def _private(c: str) -> bool:
    return c.startswith(("actor:", "pending:"))


def _covered(classes: Iterable[str], allowed: frozenset[str]) -> list[str]:
    return [c for c in classes if not _private(c) and c not in COMMUTATIVE and c != "monitor"
            and c not in allowed]


class PartialOrder:
    def __init__(self, engine: Any) -> None:
        self.e = engine
        self.prog = engine.prog
        self._classes: list[str] = []
        self._checked: set[int] = set()
        self._visible_checked = 0
        n = len(self.prog.names)
        releasing = any(act.op in RELEASING or (act.op == "mmap" and "ANONYMOUS" in
                                                 str(dict(act.args).get("flags", "")).upper())
                        for actor in self.prog.actors for act in actor.actions)
        # Each step's footprint, and that of the rest of each actor's program.
        self.own: list[list[tuple[frozenset[str], frozenset[str]]]] = []
        self.future: list[list[tuple[frozenset[str], frozenset[str]]]] = []
        for i in range(n):
            own = footprints(self.prog.actors[i].actions, releasing)
            rows = []
            reads: frozenset[str] = frozenset()
            writes: frozenset[str] = frozenset()
            for r, w in reversed(own):
                reads, writes = reads | r, writes | w
                rows.append((reads, writes))
            rows.reverse()
            rows.append((frozenset(), frozenset()))
            self.own.append(own)
            self.future.append(rows)
        self.mm_ops = Steps.MM_OPS
        self.mm_slot = engine.t.slot(("s", "mm_lock"))

    def cls(self, slot: int) -> str:
        while len(self._classes) <= slot:
            self._classes.append(klass(self.e.t.keys[len(self._classes)]))
        return self._classes[slot]

    def footprint(self, r: Any) -> tuple[set[str], set[str]]:
        reads = {self.cls(j) for j in r.reads}
        writes = {self.cls(j) for j, _ in r.writes} | {self.cls(j) for j, _, _ in r.keys}
        if any(isinstance(ev, PROTOCOL) for ev in r.events):
            writes.add("monitor")
        return reads, writes

    def _validate(self, i: int, pc: int, reads: set[str], writes: set[str]) -> None:
        r, w = self.own[i][pc]
        if "*" in r:
            return
        bad = _covered(writes, w) + _covered(reads, r | w)
        if bad:
            op = self.prog.actors[i].actions[pc].op
            raise ReductionError(f"the partial-order footprint of {op} does not cover {sorted(set(bad))}: "
                                 "update FOOTPRINTS in checker/reduce.py or run with --no-por")

    def _check_visible(self) -> None:
        """Every class a state promise's hook has read must be in VISIBLE."""
        size = sum(len(slots) for slots in self.e.observer_reads.values())
        if size == self._visible_checked:
            return
        self._visible_checked = size
        for name, slots in self.e.observer_reads.items():
            if name in TERMINAL_ONLY:
                continue
            bad = {c for c in map(self.cls, slots) if c not in VISIBLE}
            if bad:
                raise ReductionError(f"the promise hook {name} reads {sorted(bad)}, which the partial-order "
                                     "reduction does not treat as visible: declare them visible=True "
                                     "in model/state.py, or run with --no-por")

    def ample(self, s: tuple[int, ...], succs: list[tuple[int, Any]]) -> tuple[int, Any] | None:
        self._check_visible()
        mm_holder = self.e.t.values[s[self.mm_slot]] if self.mm_slot < len(s) else None
        for i, r in succs:
            a = self.e.actor_state(s, i)
            reads, writes = self.footprint(r)
            if id(r) not in self._checked:
                self._validate(i, a.pc, reads, writes)
                self._checked.add(id(r))
            if self._safe(s, i, reads, writes, mm_holder):
                return i, r
        return None

    def _safe(self, s: tuple[int, ...], i: int, reads: set[str], writes: set[str], mm_holder: Any) -> bool:
        reads, writes = self.relevant(reads, writes)
        if writes & VISIBLE:
            return False
        return all(self.independent(i, reads, writes, mm_holder, b, self.e.actor_state(s, b))
                   for b in range(len(self.prog.names)) if b != i)

    @staticmethod
    def relevant(reads: set[str], writes: set[str]) -> tuple[set[str], set[str]]:
        """What of a step's footprint another actor can conflict with."""
        return ({c for c in reads if not _private(c)},
                {c for c in writes if not _private(c) and c not in COMMUTATIVE})

    def independent(self, i: int, reads: set[str], writes: set[str], mm_holder: Any, b: int,
                    st: ActorState) -> bool:
        """Whether actor i's step (its relevant footprint) commutes with all that
        actor b, in state st, can still do (the compiled core asks per actor)."""
        if self.prog.done(b, st):
            return True
        if not st.busy and mm_holder == self.prog.names[i] and self.prog.action(b, st).op in self.mm_ops:
            return True  # cannot move before actor i releases the mmap_lock
        fr, fw = self.future[b][st.pc]
        if "*" in fr or "*" in fw:
            return False
        return not (writes & (fr | fw) or reads & fw or ("monitor" in writes and "monitor" in fw))


class NotSymmetric(Exception):
    """This state (or scenario) cannot be permuted: it is its own representative."""


def _names(promises: list[str]) -> str:
    return ", ".join(promises) or "no promise"


def _did(edge: Any) -> str:
    info = edge.result.info
    what = {"begin": "begins", "step": "goes on", "end": "ends", "retry": "retries",
            "skip": "is skipped"}.get(info.kind, info.kind)
    return f"{what}: {info.outcome}" if info.outcome is not None else what


class SymmetryBroken(Exception):
    """A declared permutation does not commute with the model's steps: merging a
    state with its image would change the verdict, so the reduction is refused."""


# Component classes a page permutation leaves alone (whole-file or page-free
# facts), and the per-page facts of a file that move with the pages; any other
# class present in a state (but those with a rule of their own below) stops the
# reduction for that state.
INVARIANT = where(Moves.NOT)
PAGE_INDEXED = where(Moves.WITH_PAGES)


class Symmetries:
    """Symmetry reduction over interchangeable pages.

    A scenario's [[symmetry]] says that permuting some pages of the file $f
    (with the gfns bound to them) together with the actors working on them
    maps the scenario onto itself.  Then states that differ by such a
    permutation have the same future up to renaming, and the promises do not
    care which page is which: the explorer keeps one representative per orbit
    (the image with the smallest fingerprint).  The declaration is verified:
    each actor's program must be the permuted program of its image, and the
    initial state must be a fixpoint.  A state holding something the
    permutation cannot carry (a mapping of part of the pages, a page-indexed
    component it does not know) is its own representative, which only costs
    reduction, never exactness.
    """

    def __init__(self, engine: Any) -> None:
        self.e = engine
        n = len(engine.prog.names)
        self.perms: list[tuple[int, ...]] = [tuple(range(n))]
        self.pages: list[dict[int, int]] = [{}]
        self._memo: dict[tuple[int, int, int, int], tuple[int, int]] = {}
        self._vmas_slot = engine.t.slot(("s", "vmas"))
        self._ptes_slot = engine.t.slot(("s", "ptes"))
        self._moving: list[int] = []
        self._seen = 0
        sc = engine.scenario
        if not sc.symmetry:
            return
        from itertools import permutations, product

        names = list(engine.prog.names)
        decls = []
        for sym in sc.symmetry:
            decls.append([(tuple(names.index(a) for a in sym.actors), sym.pages, order)
                          for order in permutations(range(len(sym.pages)))])
        for combo in product(*decls):
            actor = list(range(n))
            page: dict[int, int] = {}
            for idx, pages, order in combo:
                for x, y in enumerate(order):
                    actor[idx[x]] = idx[y]
                    page[pages[x]] = pages[y]
            g = tuple(actor)
            if g != tuple(range(n)):
                self.perms.append(g)
                self.pages.append(page)
        self._context()
        self._check_programs()
        s0 = engine.initial
        for gi in range(1, len(self.perms)):
            if self._image(s0, gi)[0] != s0:
                raise NotSymmetric(f"the setup is not symmetric under {self._show(gi)}")

    def _show(self, gi: int) -> str:
        names = self.e.prog.names
        return ", ".join(f"{names[a]}->{names[b]}" for a, b in enumerate(self.perms[gi]) if a != b) + \
            "; pages " + ", ".join(f"{a}->{b}" for a, b in sorted(self.pages[gi].items()) if a != b)

    # --- what the permutation acts on ---------------------------------------------------------

    def _context(self) -> None:
        """The file's inode and the gfn of every page of it, from the initial state."""
        comps = self.e.t.components(self.e.initial)
        env = self.e.prog.env
        if not isinstance(env.get("f"), int):
            raise NotSymmetric("symmetry needs the file $f of a configured setup")
        fid = comps[("e", "fds", env["f"])]
        self.fid = fid
        self.ino = comps[("o", "files", fid, "inode")]
        self.gfn_of: dict[int, dict[int, int]] = {}  # vm -> page -> gfn
        for key, value in comps.items():
            if key[0] == "o" and key[1] == "vms" and len(key) == 4 and key[3] == "memslots":
                from .codec import unpack

                for slot in unpack(value).values():
                    if slot.private_file == fid:
                        for p in range(slot.private_pgoff, slot.private_pgoff + slot.npages):
                            self.gfn_of.setdefault(key[2], {})[p] = slot.base_gfn + p - slot.private_pgoff
        self.page_of = {vm: {g: p for p, g in m.items()} for vm, m in self.gfn_of.items()}
        changing = {"set_user_memory_region", "set_user_memory_region2", "close", "dup"}
        for actor in self.e.prog.actors:
            for act in actor.actions:
                if act.op in changing:
                    raise NotSymmetric(f"actor {actor.name} changes memslots or files ({act.op})")

    def _check_programs(self) -> None:
        for gi in range(1, len(self.perms)):
            for a, actor in enumerate(self.e.prog.actors):
                image = self.e.prog.actors[self.perms[gi][a]]
                mine = [self._norm_action(act, gi) for act in actor.actions]
                theirs = [self._norm_action(act, 0) for act in image.actions]
                if mine != theirs:
                    raise NotSymmetric(f"actor {actor.name}'s program, with its pages permuted, is not "
                                       f"actor {image.name}'s ({self._show(gi)})")

    def _norm_action(self, act: Any, gi: int) -> Any:
        from ..spelling import REF, resolve

        args = {}
        env = self.e.prog.env
        for k, v in act.args:
            value: Any = v
            if isinstance(v, str) and v.startswith("$"):
                m = REF.match(v.strip())
                if m and m.group(1) in env:
                    value = resolve(v, env)
            args[k] = value
        page = self.pages[gi]
        P = 4096
        if act.op in ("get_pfn", "put_pfn") and isinstance(args.get("index"), int):
            args["index"] = page.get(args["index"], args["index"])
        for key in ("gpa", "address"):
            if isinstance(args.get(key), int):
                args[key] = self._gpa(args[key], gi, args.get("size", args.get("length", 1)))
        if isinstance(args.get("addr"), str):
            m = REF.match(args["addr"].strip())
            if m and m.group("offset") and not m.group("field"):
                off = int(m.group("offset"), 0) * (1 if m.group("sign") == "+" else -1)
                length = args.get("length", P) if isinstance(args.get("length"), int) else P
                if (off + length - 1) // P == off // P:
                    p = off // P
                    args["addr"] = (m.group(1), page.get(p, p) * P + off % P)
        return (act.op, tuple(sorted((k, repr(v)) for k, v in args.items())), act.bind, act.retry, act.needs,
                act.must_succeed)

    def _gpa(self, gpa: int, gi: int, size: Any) -> int:
        page = self.pages[gi]
        for _vm, pages in self.page_of.items():
            gfn = gpa >> 12
            if gfn in pages and (not isinstance(size, int) or ((gpa & 4095) + size + 4095) >> 12 == 1):
                q = page.get(pages[gfn], pages[gfn])
                return (self.gfn_of[_vm][q] << 12) | (gpa & 4095)
        return gpa

    # --- proving the declaration against the model -----------------------------------------------

    def verify(self, s: tuple[int, ...], succs: Sequence[tuple[int, Any]]) -> int:
        """Check that every permutation g commutes with the model's steps from s:
        actor g(a) can step from g(s) exactly when a can from s, to the image of
        a's successor, breaking the same promises; and g(s) breaks the promises s
        does.  Checked at every stored state for every g, this makes the orbits
        a bisimulation (the group is closed, so the rest of each orbit follows).
        Raises SymmetryBroken; returns how many permutations could carry s."""
        if len(self.perms) == 1:
            return 0
        e = self.e
        mine = {i: e.step(s, i, r) for i, r in succs}
        names = e.prog.names
        mine_bad = sorted({v.promise for v in e.state_violations(s)})
        carried = 0
        for gi in range(1, len(self.perms)):
            try:
                img, _ = self._image(s, gi)
            except NotSymmetric:
                continue  # s is its own representative: nothing is merged with it
            carried += 1
            g = self.perms[gi]
            theirs = {i: e.step(img, i, r) for i, r in e.expand(img)}
            their_bad = sorted({v.promise for v in e.state_violations(img)})
            if their_bad != mine_bad:
                raise SymmetryBroken(f"under {self._show(gi)} the state breaks {_names(mine_bad)} "
                                     f"but its image breaks {_names(their_bad)}")
            for a in range(len(names)):
                edge, other = mine.get(a), theirs.get(g[a])
                if (edge is None) != (other is None):
                    can, cannot = (names[a], names[g[a]]) if other is None else (names[g[a]], names[a])
                    raise SymmetryBroken(f"under {self._show(gi)} actor {can} can take its next step "
                                         f"and its image {cannot} cannot")
                if edge is None or other is None:
                    continue
                what = f"actor {names[a]}'s next step ({e.prog.action(a, e.actor_state(s, a)).op})"
                try:
                    want, _ = self._image(edge.target, gi)
                except NotSymmetric:
                    raise SymmetryBroken(f"under {self._show(gi)}, {what} leads to a state the "
                                         "permutation cannot carry, from one it can") from None
                got = normal(list(other.target))
                if got != want:
                    raise SymmetryBroken(f"under {self._show(gi)}, {what} ({_did(edge)}) and "
                                         f"{names[g[a]]}'s from the image state ({_did(other)}) do not "
                                         f"lead to images of each other: they differ in "
                                         f"{self._differing(want, got)}")
                a_bad = sorted({v.promise for v in edge.violations})
                b_bad = sorted({v.promise for v in other.violations})
                if a_bad != b_bad:
                    raise SymmetryBroken(f"under {self._show(gi)}, {what} breaks {_names(a_bad)} "
                                         f"and {names[g[a]]}'s from the image state {_names(b_bad)}")
        return carried

    def _differing(self, x: tuple[int, ...], y: tuple[int, ...]) -> str:
        keys = self.e.t.keys
        n = max(len(x), len(y))
        classes = sorted({klass(keys[j]) for j in range(n)
                          if (x[j] if j < len(x) else 0) != (y[j] if j < len(y) else 0)})
        return ", ".join(classes)

    # --- permuting states -----------------------------------------------------------------------

    def actor_perm(self, p: int) -> tuple[int, ...]:
        return self.perms[p]

    def canonical(self, s: tuple[int, ...], fp: int, fps: Any) -> tuple[tuple[int, ...], int, int]:
        if len(self.perms) == 1:
            return s, fp, 0
        from .fingerprint import Fingerprints

        if fps is None:
            fps = self._fps = getattr(self, "_fps", None) or Fingerprints(self.e.t)
            fp = fps.of(s)
            exact = False
        else:
            exact = True
        best, best_fp, best_g = s, fp, 0
        for gi in range(1, len(self.perms)):
            try:
                image, changes = self._image(s, gi)
            except NotSymmetric:
                return s, (fp if exact else 0), 0
            ifp = fps.update(fp, changes)
            if ifp < best_fp:
                best, best_fp, best_g = image, ifp, gi
        return best, (best_fp if exact else 0), best_g

    def _affected(self) -> list[int]:
        """The slots a permutation may change: every component whose class is not
        known to be invariant (the others are copied as they are)."""
        keys = self.e.t.keys
        while self._seen < len(keys):
            if klass(keys[self._seen]) not in INVARIANT:
                self._moving.append(self._seen)
            self._seen += 1
        return self._moving

    def _image(self, s: tuple[int, ...], gi: int) -> tuple[tuple[int, ...], list[tuple[int, int, int]]]:
        """s permuted by group element gi, and the components (slot, old, new) that differ."""
        from .codec import normal

        t = self.e.t
        affected = list(self._affected())
        n = len(s)
        out = list(s)
        placed = []
        vmas = s[self._vmas_slot] if self._vmas_slot < n else 0
        for slot in affected:
            vid = s[slot] if slot < n else 0
            if not vid:
                continue
            # Host PTEs are indexed by virtual page: where the pages are mapped
            # (the VMAs) is part of how they move.
            k = (gi, slot, vid, vmas) if slot == self._ptes_slot else (gi, slot, vid, 0)
            r = self._memo.get(k)
            if r is None:
                if slot == self._ptes_slot:
                    value = self._permute_ptes(t.values[vid], t.values[vmas], gi)
                    r = (slot, t.intern(value))
                else:
                    key, value = self._permute(t.keys[slot], t.values[vid], gi)
                    r = (t.slot(key), t.intern(value))
                self._memo[k] = r
            placed.append(r)
        for slot in affected:
            if slot < n:
                out[slot] = 0
        for ns, nv in placed:
            if ns >= len(out):
                out.extend([0] * (ns + 1 - len(out)))
            out[ns] = nv
        image = normal(out)
        m = len(image)
        changes = []
        for slot in self._affected():
            a = s[slot] if slot < n else 0
            b = image[slot] if slot < m else 0
            if a != b:
                changes.append((slot, a, b))
        return image, changes

    def _permute(self, key: Any, value: Any, gi: int) -> tuple[Any, Any]:
        from .codec import pack, unpack

        names = self.e.prog.names
        sigma = {names[a]: names[b] for a, b in enumerate(self.perms[gi])}
        page = self.pages[gi]
        c = klass(key)
        if key[0] == "a":
            return ("a", sigma[key[1]]), value
        if c.startswith("pending:"):
            return (key[0], "pending", sigma[key[2]]), self._pending(value, gi)
        if c == "pending#keys":
            return key, tuple(sorted(sigma.get(a, a) for a in value))
        if c in ("mm_lock", "file_locks"):
            return key, sigma.get(value, value) if isinstance(value, str) else value
        if value is None:
            return key, value  # an absent record or map holds no page
        if key[0] == "o" and key[1] == "inodes" and key[2] == self.ino and c in PAGE_INDEXED:
            rm = unpack(value)
            old = {p: rm[p] for p in page}
            for p, q in page.items():
                v = old[p]
                if c == "inodes.pfns" and v is not None:
                    v = v + p - q  # the pfn stays with the page's contents
                rm.set(q, q + 1, v)
            return key, pack(rm)
        if c == "frames":
            # pfn -> (inode, page - pfn): a frame keeps its contents, which moved.
            rm = unpack(value)
            for first, last, v in list(rm.runs()):
                if v is None or v[0] != self.ino:
                    continue
                for pfn in range(first, last):
                    index = pfn + v[1]
                    if index in page:
                        rm.set(pfn, pfn + 1, (self.ino, page[index] - pfn))
            return key, pack(rm)
        if c == "inodes.restricted.mmap_range":
            lo, hi = value[1] if isinstance(value, tuple) and value[0] == "T" else value
            covered = {p for p in page if lo <= p < hi}
            if covered and len(covered) != len(page):
                raise NotSymmetric("an mmap in progress covers some of the interchangeable pages only")
            return key, value
        if c == "vms.attributes":
            gfns = self.gfn_of.get(key[2], {})
            rm = unpack(value)
            old = {p: rm[gfns[p]] for p in page if p in gfns}
            for p, q in page.items():
                if p in gfns and q in gfns:
                    rm.set(gfns[q], gfns[q] + 1, old[p])
            return key, pack(rm)
        if c == "files.bindings" and key[2] == self.fid:
            rm = unpack(value)
            if len({rm[p] for p in page}) > 1:
                raise NotSymmetric("interchangeable pages in different memslots")
            return key, value
        if c == "vmas":
            self._check_vmas(unpack(value), page)
            return key, value
        if c in ("overlays", "overlay_pages"):
            raise NotSymmetric("a private mapping holds copies of pages")
        if c in INVARIANT or key[0] == "m":
            return key, value
        if c in PAGE_INDEXED or c in ("files.bindings", "vms.attributes"):
            return key, value  # another file's pages
        raise NotSymmetric(f"no rule to permute {c}")

    def _permute_ptes(self, ptes: Any, vmas: Any, gi: int) -> Any:
        from .codec import pack, unpack

        rm, page = unpack(ptes), self.pages[gi]
        for s, e, m in unpack(vmas).runs():
            if m is None or m.file != self.fid:
                continue
            old = {p: rm[p - m.delta] for p in page if s <= p - m.delta < e}
            for p, v in old.items():
                q = page[p] - m.delta
                rm.set(q, q + 1, v)
        return pack(rm)

    def _check_vmas(self, vmas: Any, page: dict[int, int]) -> None:
        for s, e, m in vmas.runs():
            if m is None or m.file != self.fid:
                continue
            covered = {p for p in page if s + m.delta <= p < e + m.delta}
            if covered and len(covered) != len(page):
                raise NotSymmetric("a mapping covers some of the interchangeable pages only")

    def _pending(self, p: Any, gi: int) -> Any:
        from dataclasses import replace

        page = self.pages[gi]
        if p.op in ("mmap", "munmap"):
            return p
        args = dict(p.args)
        if p.op == "guest_access":
            args["gpa"] = self._gpa(args["gpa"], gi, args["length"])
            plan = p.plan
            if isinstance(plan, AccessPlan):
                q = page.get(plan.index, plan.index)
                gfns = self.gfn_of.get(plan.vm, {})
                plan = replace(plan, gfn=gfns.get(q, plan.gfn) if plan.index in page else plan.gfn,
                               index=q)
            return replace(p, args=tuple(sorted(args.items())), plan=plan)
        if p.op == "set_memory_attributes":
            first = args["address"] >> 12
            last = (args["address"] + args["size"]) >> 12
            pages = {self.page_of.get(vm, {}).get(g) for vm in self.page_of for g in range(first, last)}
            pages.discard(None)
            moved = pages & set(page)
            if not moved:
                return p
            if last - first != 1:
                if moved == set(page):
                    return p
                raise NotSymmetric("a conversion covers some of the interchangeable pages only")
            args["address"] = self._gpa(args["address"], gi, args["size"])
            plan = p.plan
            if isinstance(plan, ConvertPlan):
                g = args["address"] >> 12
                plan = replace(plan, first=g, last=g + 1)
            return replace(p, args=tuple(sorted(args.items())), plan=plan)
        if p.op in ("get_pfn", "put_pfn"):
            args["index"] = page.get(args["index"], args["index"])
            return replace(p, args=tuple(sorted(args.items())))
        raise NotSymmetric(f"no rule to permute an operation {p.op} in progress")
