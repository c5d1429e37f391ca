"""Host page-table entries and the references they hold.

A VMA says what a virtual page *may* map; a host PTE says that the page is
mapped now, and in the kernel a PTE of a shared file mapping holds a
reference on the folio.  Several designs turn on the difference:

* in-place conversion (docs/DESIGNS.md, inplace) zaps PTEs with
  unmap_mapping_pages and then refuses while references beyond the page cache
  remain (a GUP pin, a get_pfn reference);
* pKVM's variant counts PTEs among those references, and finishes an unshare
  when the last of them goes;
* kvm-map zaps the PTEs of a range that becomes private but keeps the VMA.

So the model keeps, as runs, which virtual pages have a PTE
(``State.ptes``) and, per file page, how many PTEs of shared mappings map it
(``Inode.host_ptes``).  A PTE appears when a host access (or GUP, or
MADV_POPULATE) faults the page in, moves with mremap, and goes with munmap,
MADV_DONTNEED, a hole punch or truncation, and unmap_mapping_range.  VMAs
covering each file page are counted in ``Inode.vma_cover`` by mm.py's
``assign``.  When references beyond the page cache go away, the core is
told (Core.refs_dropped): in-place conversion may be waiting for them.
"""

from __future__ import annotations

from .core import Component
from .state import Inode, Mapping


class HostPtes(Component):
    """Which virtual pages have a PTE, and the references they hold on file pages."""

    def mapping_inode(self, m: Mapping) -> Inode | None:
        """The inode whose page cache m's PTEs reference (shared file mappings)."""
        if m.file is None or not m.shared:
            return None
        return self.state.inodes[self.state.files[m.file].inode]

    def install(self, first: int, last: int, m: Mapping) -> None:
        """Virtual pages [first, last) of mapping m were faulted in."""
        ptes = self.state.ptes
        _, end, present = ptes.run_at(first)
        if present and end >= last:
            return  # the common case: already faulted in
        new = [(s, e) for s, e, present in ptes.runs(first, last) if not present]
        ptes.set(first, last, True)
        inode = self.mapping_inode(m)
        if inode is not None:
            for s, e in new:
                inode.host_ptes.update(s + m.delta, e + m.delta, lambda n: n + 1)

    def clear(self, first: int, last: int) -> None:
        """Drop the PTEs of virtual pages [first, last), while their VMAs are
        still in place (they say which file pages lose a reference)."""
        ptes = self.state.ptes
        _, end, any_present = ptes.run_at(first)
        if not any_present and end >= last:
            return  # nothing was faulted in
        present = [(s, e) for s, e, p in ptes.runs(first, last) if p]
        dropped: list[tuple[Inode, int, int]] = []
        for s, e in present:
            for vs, ve, m in self.state.vmas.runs(s, e):
                inode = self.mapping_inode(m) if m is not None else None
                if inode is None or m is None:
                    continue
                inode.host_ptes.update(vs + m.delta, ve + m.delta, lambda n: n - 1)
                dropped.append((inode, vs + m.delta, ve + m.delta))
        ptes.set(first, last, False)
        for inode, lo, hi in dropped:
            self.core.refs_dropped(inode, lo, hi)

    def move(self, first: int, last: int, target: int) -> None:
        """mremap moves the PTEs with the pages: the references stay."""
        ptes = self.state.ptes
        present = [(s, e) for s, e, p in ptes.runs(first, last) if p]
        ptes.set(first, last, False)
        for s, e in present:
            ptes.set(s - first + target, e - first + target, True)

    def zap_file(self, ino: int, first: int, last: int) -> None:
        """unmap_mapping_range over every mapping of the inode (the reverse
        map walk the kernel does); free when no PTE maps the range."""
        inode = self.state.inodes.get(ino)
        if inode is None or inode.host_ptes.all_equal(first, last, 0):
            return
        for s, e, m in list(self.state.vmas.runs()):
            if m is None or self.mapping_inode(m) is not inode:
                continue
            lo, hi = max(s, first - m.delta), min(e, last - m.delta)
            if lo < hi:
                self.clear(lo, hi)


# --- references beyond the page cache ----------------------------------------------


def first_referenced(inode: Inode, first: int, last: int, with_ptes: bool) -> int | None:
    """The first page of [first, last) that someone beyond the page cache
    holds: a get_pfn reference, a GUP pin, or (with_ptes) a host PTE."""
    maps = [inode.refs, inode.pins] + ([inode.host_ptes] if with_ptes else [])
    hits = [m.find(first, last, bool) for m in maps]
    found = [h for h in hits if h is not None]
    return min(found) if found else None


def unreferenced(inode: Inode, first: int, last: int, with_ptes: bool) -> list[tuple[int, int]]:
    """The runs of [first, last) nobody beyond the page cache references."""
    maps = [inode.refs, inode.pins] + ([inode.host_ptes] if with_ptes else [])
    free = [(first, last)]
    for m in maps:
        nxt: list[tuple[int, int]] = []
        for lo, hi in free:
            nxt += [(s, e) for s, e, n in m.runs(lo, hi) if not n]
        free = nxt
    return free
