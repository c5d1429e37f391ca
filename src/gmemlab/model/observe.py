"""What the checker sees of the model: promise hooks and events.

The checker (gmemlab.checker) judges its promises on a few facts the model
states here, once, for every design: which file pages are private, which have
host references, which references are outstanding, how many mappings each
file has, and whether KVM still waits for an mmap to end.  Where a design
keeps such a fact (the VM's attributes or, in place, the file's; a VMA or a
PTE as the host's reference, as its PromisePolicy says), the hook reads it
from there, so that the checker stays design-agnostic.

`observe` and `audit_log` are also model-only case operations: a case file
replaying a counterexample (steps.py's actor_begin / actor_step) asserts the
state it ends in with them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .. import uapi
from ..interface import Observation
from .core import Component
from .events import Event, HostAccessPrivate, HostAccessUnowned, StaleUse
from .invariants import ownership_violations, private_page_runs
from .pkvm import NOPAGE
from .policies import HostMappingPromise
from .state import Inode, Mapping, State, total_refs

SHIFT = uapi.PAGE_SHIFT
Runs = tuple[tuple[int, int, int], ...]
CountedRuns = tuple[tuple[int, int, int, int], ...]


def _merge(pages: dict[int, list[tuple[int, int]]]) -> Runs:
    """Runs per inode, sorted and merged."""
    out: list[tuple[int, int, int]] = []
    for ino in sorted(pages):
        for s, e in sorted(pages[ino]):
            if out and out[-1][0] == ino and out[-1][2] >= s:
                out[-1] = (ino, out[-1][1], max(out[-1][2], e))
            else:
                out.append((ino, s, e))
    return tuple(out)


def _count(pieces: dict[int, list[tuple[int, int, int]]]) -> CountedRuns:
    """Sum counted intervals (first, last, n) per inode into disjoint runs."""
    out: list[tuple[int, int, int, int]] = []
    for ino in sorted(pieces):
        deltas: dict[int, int] = defaultdict(int)
        for s, e, n in pieces[ino]:
            deltas[s] += n
            deltas[e] -= n
        level, start = 0, 0
        for point in sorted(deltas):
            if level:
                if out and out[-1][0] == ino and out[-1][2] == start and out[-1][3] == level:
                    out[-1] = (ino, out[-1][1], point, level)
                else:
                    out.append((ino, start, point, level))
            level += deltas[point]
            start = point
    return tuple(out)


def audit_stale_use(state: State, inode: Inode, what: str, index: int = -1) -> None:
    """Record a use of a restricted memfd that was unmapped with references
    outstanding: a new mapping, or a page handed out by get_pfn (promise P9)."""
    r = inode.restricted
    if r is not None and r.unmapped_referenced:
        state.audit.append(StaleUse(inode.ino, what, index))


class Observer(Component):
    """The facts and events the checker's promises are judged on."""

    # --- events ----------------------------------------------------------------------

    def drain_events(self) -> list[Event]:
        """The audit events since the last drain, and forget them.

        The restricted memfds' notifier logs are emptied too: they repeat the
        "notify" events, and a state the checker explores must not carry the
        history of how it was reached.
        """
        events = self.state.audit
        self.state.audit = []
        for inode in self.state.inodes.values():
            if inode.restricted is not None and inode.restricted.log:
                inode.restricted.log = []
        return events

    def audit_host_access(self, segments: list[Any], write: bool) -> None:
        """Record host loads and stores that reach the bytes of a private page
        (promise P1), for every design: whatever a design calls private, as its
        private_pages() says."""
        touched: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for store, offset, n, m in segments:
            f = self.state.files.get(m.file) if m.file is not None else None
            if f is None or store is not self.state.inodes[f.inode].pages:
                continue  # anonymous memory, or a private copy of the file's page
            touched[f.inode].append((offset >> SHIFT, ((offset + n - 1) >> SHIFT) + 1))
        if not touched:
            return
        for ino, s, e in self.private_pages():
            for first, last in touched.get(ino, ()):
                for index in range(max(s, first), min(e, last)):
                    self.state.audit.append(HostAccessPrivate(ino, index, write))
        if self.state.pkvm is not None:
            self._audit_unowned(touched, write)

    def _audit_unowned(self, touched: dict[int, list[tuple[int, int]]], write: bool) -> None:
        """Host accesses that reached a frame whose pKVM host state is NOPAGE
        (given to a guest or the hypervisor), whatever let them through."""
        pkvm = self.state.pkvm
        assert pkvm is not None
        for ino, ranges in touched.items():
            inode = self.state.inodes[ino]
            for first, last in ranges:
                for s, e, delta in inode.pfns.runs(first, last):
                    if delta is None:
                        continue
                    hit = pkvm.pages.find(s + delta, e + delta, lambda p: p.host == NOPAGE)
                    if hit is not None:
                        self.state.audit.append(HostAccessUnowned(ino, hit - delta, write))

    def audit_unmap(self, m: Mapping) -> None:
        """A restricted memfd's mapping goes: remember if references are out
        (what the design then does is its own; P9 judges the result)."""
        assert m.file is not None
        inode = self.state.inodes[self.state.files[m.file].inode]
        if inode.restricted is not None and total_refs(inode):
            inode.restricted.unmapped_referenced = True

    # --- promise hooks --------------------------------------------------------------------

    def private_pages(self) -> Runs:
        """File pages the design considers private: the VM's attribute for the
        gfns bound to a restricted memfd or a guest_memfd, the file's own
        attribute in the in-place designs (invariants.private_page_runs)."""
        pages: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for inode in self.state.inodes.values():
            pages[inode.ino].extend(private_page_runs(self.state, inode))
        return _merge(pages)

    def host_references(self) -> CountedRuns:
        """Host references per file page: what the design's host-mapping promise
        counts (PromisePolicy.host_mapping: a VMA covering the page for the
        whole-file and page-mmap designs, whose VMAs may fault it in at any time;
        a host page-table entry for the others), plus long-term GUP pins."""
        by_vma = self.design.promise.host_mapping is not HostMappingPromise.NO_PTE
        pieces: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for inode in self.state.inodes.values():
            held = inode.vma_cover if by_vma else inode.host_ptes
            for table in (held, inode.pins):
                for s, e, n in table.runs():
                    if n:
                        pieces[inode.ino].append((s, e, n))
        return _count(pieces)

    def outstanding_references(self) -> CountedRuns:
        """References taken beyond the page cache's own: get_pfn references and
        long-term GUP pins."""
        pieces: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for inode in self.state.inodes.values():
            for table in (inode.refs, inode.pins):
                for s, e, n in table.runs():
                    if n:
                        pieces[inode.ino].append((s, e, n))
        return _count(pieces)

    def mapping_counts(self) -> tuple[tuple[int, int], ...]:
        """(inode, number of VMAs mapping it), for every mapped file of the kind
        that backs guest memory in this design (restricted memfd, guest_memfd)."""
        kind = self.design.kvm.private_file.value
        counts: dict[int, int] = defaultdict(int)
        for _, _, m in self.state.vmas.runs():
            f = self.state.files.get(m.file) if m is not None and m.file is not None else None
            if f is not None and f.kind == kind:
                counts[f.inode] += 1
        return tuple(sorted(counts.items()))

    def mmaps_in_progress(self) -> tuple[int, ...]:
        """Inodes whose mmap is between its checks and its end (the notifier protocol)."""
        inos = set()
        for p in self.state.pending.values():
            if p.op == "mmap" and p.phase != "begin" and p.plan is not None and \
                    p.plan.file in self.state.files:
                inos.add(self.state.files[p.plan.file].inode)
        return tuple(sorted(inos))

    def kvm_mmap_pending(self) -> tuple[tuple[int, int, int], ...]:
        """(VM, memslot key, inode) for every memslot whose KVM notifier saw
        mmap_start and neither mmap_end nor mmap_abort."""
        out = []
        for kvm in self.state.vms.values():
            for key in kvm.mmap_pending:
                slot = kvm.memslots.get(key)
                f = self.state.files.get(slot.private_file) if slot is not None and \
                    slot.private_file is not None else None
                out.append((kvm.id, key, f.inode if f is not None else -1))
        return tuple(sorted(out))

    def stray_mmap_pending(self) -> tuple[tuple[int, int, int], ...]:
        """The (VM, memslot, inode) KVM still waits for although no mmap of that
        file is in progress.  A restricted memfd's lock is held across an mmap's
        notifier calls and, between steps, only there (model/steps.py)."""
        locked = set(self.state.file_locks)
        return tuple(e for e in self.kvm_mmap_pending() if e[2] not in locked)

    def pkvm_problems(self) -> tuple[str, ...]:
        """Violations of pKVM's page-ownership rules (invariants.ownership_violations:
        each page owned by exactly one component, or shared by an owner and one
        kind of borrower, guest leaves and the host's records telling the same
        story).  None while no pKVM hypercall has run."""
        return tuple(ownership_violations(self.state))

    # --- model-only operations -------------------------------------------------------------

    def observe(self) -> Observation:
        return Observation(private_pages=self.private_pages(),
                           host_references=self.host_references(),
                           outstanding_references=self.outstanding_references(),
                           mappings=self.mapping_counts(),
                           mmaps_in_progress=self.mmaps_in_progress(),
                           mmap_pending=self.kvm_mmap_pending(),
                           stray_mmap_pending=self.stray_mmap_pending(),
                           pkvm_problems=self.pkvm_problems())

    def audit_log(self, kind: str = "") -> list[list[Any]]:
        if not kind:
            return [e.as_list() for e in self.state.audit]
        return [e.fields() for e in self.state.audit if e.kind == kind]
