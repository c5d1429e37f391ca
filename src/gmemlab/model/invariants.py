"""The promises of the page-level designs and of pKVM, checked on a model state.

Each function returns a list of violations (readable strings), empty when
the promise holds, so that a test, the checker or a user can check any
state reached in any way.

* ``ownership_violations``: pKVM's ownership is consistent.  For every
  physical page exactly one of: the host owns it alone; the host owns it and
  one kind of borrower has it (the hypervisor, possibly pinned; non-protected
  guests, as many as host_share_guest_count says; the secure world through
  FF-A); the hypervisor owns it; one protected guest owns it, and the host
  either has nothing or borrows it (the guest shared it back).  Guest leaves
  and the host's records must tell the same story.
* ``host_mapping_violations``: no host mapping covers a page the design
  considers private.  What "covers" means is the design's promise
  (PromisePolicy.host_mapping): a VMA (seed, page-mmap), or a host
  page-table entry (kvm-map and the guest_memfd designs, where a VMA may span
  private pages whose faults fail).  "Private" is the VM's attribute for a
  restricted memfd and for guest_memfd without in-place state, the file's
  own attribute otherwise (a pkvm-inplace page whose unshare is pending is
  not yet private).
* ``bookkeeping_violations``: the per-page counts the designs decide by
  (host PTEs and VMAs per file page, GUP pins) equal a recount from scratch.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import uapi
from ..rangemap import RangeMap
from .designs import Design
from .pkvm import NOPAGE, OWNED, SHARED_BORROWED, SHARED_OWNED, STATE_NAMES
from .policies import HostMappingPromise
from .state import PFN_LIMIT, HypPage, Inode, OpenFile, State

PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
# (guest leaves OWNED, SHARED_OWNED, SHARED_BORROWED, owners as (vm, gfn - pfn))
Leaves = tuple[int, int, int, tuple[tuple[int, int], ...]]
NO_LEAVES: Leaves = (0, 0, 0, ())


def _add_leaf(c: Leaves, state: int, owner: tuple[int, int]) -> Leaves:
    own, so, sb, owners = c
    if state == OWNED:
        return own + 1, so, sb, (*owners, owner)
    if state == SHARED_OWNED:
        return own, so + 1, sb, (*owners, owner)
    return own, so, sb + 1, owners


def _page_problem(p: HypPage, leaves: Leaves) -> str | None:
    own, so, sb, owners = leaves
    host, hyp = STATE_NAMES[p.host], STATE_NAMES[p.hyp]
    if p.pins and p.hyp != SHARED_BORROWED:
        return f"pinned {p.pins} times but hyp is {hyp}"
    if p.guest_shares != sb:
        return f"host_share_guest_count {p.guest_shares} but {sb} guest leaves borrow it"
    if p.host == OWNED:
        if p.hyp != NOPAGE or own or so or sb or p.ffa or p.guest is not None:
            return f"host OWNED but hyp {hyp}, guest leaves {own}/{so}/{sb}, ffa {p.ffa}"
        return None
    if p.host == SHARED_OWNED:
        borrowers = (p.hyp == SHARED_BORROWED) + (sb > 0) + p.ffa
        if borrowers != 1 or own or so or p.guest is not None \
                or p.hyp not in (NOPAGE, SHARED_BORROWED):
            return (f"host SHARED_OWNED with {borrowers} kinds of borrower "
                    f"(hyp {hyp}, guests {sb}, ffa {p.ffa})")
        return None
    if p.host == SHARED_BORROWED:
        if p.hyp != NOPAGE or so != 1 or own or sb or p.ffa or owners != (p.guest,):
            return f"host SHARED_BORROWED but hyp {hyp}, guest leaves {own}/{so}/{sb}, owner {p.guest}"
        return None
    if p.hyp == OWNED:
        if own or so or sb or p.ffa or p.guest is not None:
            return f"hyp OWNED but guest leaves {own}/{so}/{sb}"
        return None
    if own != 1 or so or sb or p.ffa or owners != (p.guest,) or p.hyp != NOPAGE:
        return f"host {host}, hyp {hyp}: owned by {own} guests (record {p.guest}, leaves {owners})"
    return None


def ownership_violations(state: State) -> list[str]:
    pkvm = state.pkvm
    if pkvm is None:
        return []
    leaves: RangeMap[Leaves] = RangeMap(NO_LEAVES, PFN_LIMIT)
    for vm_id, s2 in pkvm.guests.items():
        for s, e, leaf in s2.runs():
            if leaf is not None:
                state_, who = leaf.state, (vm_id, -leaf.delta)
                leaves.update(s + leaf.delta, e + leaf.delta,
                              lambda c, st=state_, w=who: _add_leaf(c, st, w))  # type: ignore[misc]
    out = []
    for s, e, page in pkvm.pages.runs():
        for ls, _le, c in leaves.runs(s, e):
            problem = _page_problem(page, c)
            if problem is not None:
                out.append(f"pfn {ls:#x}: {problem}")
    return out


def _private_pages(state: State, inode: Inode) -> Iterator[tuple[int, int]]:
    if inode.restricted is not None and inode.restricted.destroyed:
        # A destroyed restricted memfd is dead: KVM's get_pfn fails (EIO), so
        # nothing can place a guest's data in its pages, whatever the VM's
        # attributes say.  None of them is private memory.
        return
    if inode.attributes is not None:
        for s, e, a in inode.attributes.runs():
            if a == PRIVATE:
                yield s, e
        return
    for f in state.files.values():
        if f.inode == inode.ino:
            yield from bound_private_runs(state, inode, f)


def bound_private_runs(state: State, inode: Inode, f: OpenFile, first: int = 0,
                       last: int | None = None) -> Iterator[tuple[int, int]]:
    """Runs of f's pages in [first, last) that a memslot binds to a private gfn.

    A guest_memfd's bindings name the memslot of the file's own VM; a
    restricted memfd belongs to no VM, so its bindings name VM and memslot.
    """
    if f.bindings is None:
        return
    end = f.bindings.limit if last is None else min(last, f.bindings.limit)
    for s, e, code in f.bindings.runs(first, end):
        if code is None:
            continue
        vm_id, key = (code >> 32, code & 0xFFFFFFFF) if inode.kind == "restricted" else (inode.vm, code)
        kvm = state.vms.get(vm_id) if vm_id is not None else None
        slot = kvm.memslots.get(key) if kvm is not None else None
        if kvm is None or slot is None:
            continue
        shift = slot.base_gfn - slot.private_pgoff
        for gs, ge, a in kvm.attributes.runs(s + shift, e + shift):
            if a & PRIVATE:
                yield gs - shift, ge - shift


def private_page_runs(state: State, inode: Inode) -> Iterator[tuple[int, int]]:
    """The runs of the inode's pages the design considers private (see above)."""
    return _private_pages(state, inode)


def host_mapping_violations(state: State, design: Design) -> list[str]:
    promise = design.promise.host_mapping
    if promise is HostMappingPromise.NONE:
        return []
    out = []
    for inode in state.inodes.values():
        by_vma = promise is HostMappingPromise.NO_VMA
        held = inode.vma_cover if by_vma else inode.host_ptes
        for s, e in _private_pages(state, inode):
            hit = held.find(s, e, bool)
            if hit is not None:
                what = "a VMA covers" if by_vma else "a host PTE maps"
                out.append(f"{what} private page {hit} of inode {inode.ino}")
                break
    return out


def bookkeeping_violations(state: State) -> list[str]:
    ptes: dict[int, RangeMap[int]] = {}
    cover: dict[int, RangeMap[int]] = {}
    pins: dict[int, RangeMap[int]] = {}

    def count(table: dict[int, RangeMap[int]], ino: int, lo: int, hi: int) -> None:
        table.setdefault(ino, RangeMap(0, 1 << 52)).update(lo, hi, lambda n: n + 1)

    for s, e, m in state.vmas.runs():
        if m is None or m.file is None:
            continue
        ino = state.files[m.file].inode
        count(cover, ino, s + m.delta, e + m.delta)
        if m.shared:
            for ps, pe, present in state.ptes.runs(s, e):
                if present:
                    count(ptes, ino, ps + m.delta, pe + m.delta)
    for pin_list in state.gup_pins.values():
        for pin in pin_list:
            for ino, lo, hi in pin.runs:
                count(pins, ino, lo, hi)
    out = []
    for ino, inode in state.inodes.items():
        for name, table, have in (("host_ptes", ptes, inode.host_ptes),
                                  ("vma_cover", cover, inode.vma_cover), ("pins", pins, inode.pins)):
            want = table.get(ino, RangeMap(0, 1 << 52))
            if list(want.runs()) != list(have.runs()):
                out.append(f"inode {ino}: {name} is {list(have.runs())[:4]}, recount "
                           f"{list(want.runs())[:4]}")
    return out


def violations(state: State, design: Design) -> list[str]:
    """Every promise above, on one state."""
    return (ownership_violations(state) + host_mapping_violations(state, design)
            + bookkeeping_violations(state))
