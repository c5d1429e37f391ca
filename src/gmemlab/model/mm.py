"""The host address space: mmap and friends, and host loads and stores.

VMAs are the runs of one RangeMap over virtual page numbers whose value is a
Mapping (file, pgoff - vpage, protection, flags).  The kernel merges two
adjacent VMAs exactly when they map the same struct file at contiguous
offsets with the same flags, and that is exactly when their Mapping values
are equal, so splitting and merging fall out of the range structure: an
mprotect of one page in the middle of a VMA makes three runs, and the
mprotect that restores it makes one again.  map_count is kept alongside and
vm.max_map_count is enforced where the kernel checks it (split_vma, do_mmap,
the first split of munmap), which reproduces the limits Linux shows: two
VMAs per isolated page, ENOMEM for the split past vm.max_map_count, merges
that still succeed there.

What a mapping of a file does is the file's (fileops.py): its mmap may
refuse, its fault handler serves pages or raises SIGBUS (guest_memfd beyond
i_size or without INIT_SHARED, shmem beyond i_size), its vm_operations may
forbid a split or a move and hear a VMA close.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace

from .. import uapi
from ..errors import MemorySignal, UsageError, kernel_error
from . import pages
from .core import Component
from .fileops import FileOps, beyond_size
from .observe import Observer
from .pkvm import Pkvm
from .ptes import HostPtes
from .state import TASK_SIZE, Mapping, OpenFile

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
MMAP_BASE = 0x7F0000000000  # top of the mmap area; allocation goes down from here
MMAP_MIN_ADDR = 0x10000

LEGACY_MAP_MASK = (0x01 | 0x02 | 0x10 | 0x20 | 0x0800 | 0x1000 | 0x4000000 | 0x0100 | 0x2000
                   | 0x4000 | 0x8000 | 0x10000 | 0x20000 | 0x40000)
MAP_TYPE_SHARED_VALIDATE = uapi.MAP_SHARED_VALIDATE

# madvise advice that only changes VMA flags, as (bits set, bits cleared).
VM_RAND_READ, VM_SEQ_READ, VM_DONTCOPY = 1, 2, 4
VM_HUGEPAGE, VM_NOHUGEPAGE, VM_DONTDUMP, VM_WIPEONFORK = 8, 16, 32, 64
FLAG_ADVICE = {
    uapi.MADV_NORMAL: (0, VM_RAND_READ | VM_SEQ_READ),
    uapi.MADV_RANDOM: (VM_RAND_READ, VM_SEQ_READ),
    uapi.MADV_SEQUENTIAL: (VM_SEQ_READ, VM_RAND_READ),
    uapi.MADV_DONTFORK: (VM_DONTCOPY, 0),
    uapi.MADV_DOFORK: (0, VM_DONTCOPY),
    uapi.MADV_HUGEPAGE: (VM_HUGEPAGE, VM_NOHUGEPAGE),
    uapi.MADV_NOHUGEPAGE: (VM_NOHUGEPAGE, VM_HUGEPAGE),
    uapi.MADV_DONTDUMP: (VM_DONTDUMP, 0),
    uapi.MADV_DODUMP: (0, VM_DONTDUMP),
    uapi.MADV_WIPEONFORK: (VM_WIPEONFORK, 0),
    uapi.MADV_KEEPONFORK: (0, VM_WIPEONFORK),
}
NOOP_ADVICE = frozenset({uapi.MADV_WILLNEED, uapi.MADV_MERGEABLE, uapi.MADV_UNMERGEABLE,
                         uapi.MADV_COLD, uapi.MADV_PAGEOUT})


def page_align(n: int) -> int:
    return (n + P - 1) & ~(P - 1) & ((1 << 64) - 1)


@dataclass(frozen=True)
class Fault:
    """A host page fault the kernel cannot serve: SIGBUS or SIGSEGV at addr."""

    signo: int
    addr: int
    why: str


@dataclass(frozen=True)
class MmapPlan:
    """A checked mmap request, before the file's mmap operation has been asked."""

    file: int | None
    first: int
    npages: int
    fixed: bool
    shared: bool
    prot: int
    pgoff: int
    mayexec: bool
    cache: tuple[int, int] | None  # the free-area cache once this is placed


# (store, byte offset in the store, length, mapping) of a served stretch.
Segment = tuple[pages.PageStore, int, int, Mapping]


class AddressSpace(Component):
    """The process's VMAs and PTEs: mmap and friends, faults, host loads and stores."""

    ptes: HostPtes
    pkvm: Pkvm
    observer: Observer

    def connect(self, ptes: HostPtes, pkvm: Pkvm, observer: Observer) -> None:
        self.ptes, self.pkvm, self.observer = ptes, pkvm, observer

    def use_file_ops(self, ops: dict[str, FileOps]) -> None:
        """The kinds' tables, and which vm_operations any kind has at all: a
        design none of whose files refuse splits never looks at a file to split."""
        self.ops = ops
        self.checks_split = any(o.may_split is not None for o in ops.values())
        self.checks_mremap = any(o.mremap is not None for o in ops.values())
        self.tells_close = any(o.close is not None for o in ops.values())

    # --- VMA bookkeeping ----------------------------------------------------------

    def _count_vmas(self, first: int, last: int) -> int:
        return sum(1 for _, _, m in self.state.vmas.runs(max(first, 0), last) if m is not None)

    def assign(self, first: int, last: int, value: Mapping | None) -> None:
        """Set vpages [first, last) to value, keeping map_count, per-file
        mapped-page counts and the split/merge counters exact."""
        vmas = self.state.vmas
        lo, hi = max(first - 1, 0), min(last + 1, vmas.limit)
        before = self._count_vmas(lo, hi)
        for s, e, m in vmas.runs(first, last):
            if m is not None and m.file is not None:
                self.state.files[m.file].mapped_pages -= e - s
                self._cover(m, s, e, -1)
            if m is not None and m.overlay is not None:
                self.state.overlay_pages[m.overlay] -= e - s
        splits = sum(1 for point in (first, last)
                     if point < vmas.limit and _inside(vmas.run_at(point), point))
        vmas.set(first, last, value)
        if value is not None and value.file is not None:
            self.state.files[value.file].mapped_pages += last - first
            self._cover(value, first, last, 1)
        if value is not None and value.overlay is not None:
            self.state.overlay_pages[value.overlay] = \
                self.state.overlay_pages.get(value.overlay, 0) + last - first
        if value is None:
            self._hole_freed(first, last)
        after = self._count_vmas(lo, hi)
        self.state.map_count += after - before
        counters = self.state.counters
        counters["vma_splits"] += splits
        if value is not None:
            s, e, _ = vmas.run_at(first)
            counters["vma_merges"] += (s < first) + (e > last)

    def _cover(self, m: Mapping, first: int, last: int, change: int) -> None:
        """Count VMAs covering the file pages behind virtual pages [first, last)."""
        assert m.file is not None
        inode = self.state.inodes[self.state.files[m.file].inode]
        inode.vma_cover.update(first + m.delta, last + m.delta, lambda n: n + change)

    def mapping_runs(self, first: int, last: int) -> list[tuple[int, int, Mapping]]:
        return [(s, e, m) for s, e, m in self.state.vmas.runs(first, last) if m is not None]

    def vma_of(self, vpage: int) -> tuple[int, int, Mapping] | None:
        s, e, m = self.state.vmas.run_at(vpage)
        return (s, e, m) if m is not None else None

    def _unmapped_files(self, mappings: list[Mapping]) -> None:
        """Release files whose last mapping went away."""
        for fid in {m.file for m in mappings if m.file is not None}:
            f = self.state.files.get(fid)
            if f is not None:
                self.core.maybe_release(f)

    def may_split(self, m: Mapping, vpage: int) -> None:
        """vm_ops->may_split of the mapping's file; ordinary mappings always may."""
        if self.checks_split and m.file is not None:
            may_split = self.ops[self.state.files[m.file].kind].may_split
            if may_split is not None:
                may_split(m, vpage)

    def _split_check(self) -> None:
        if self.state.map_count >= self.state.max_map_count:
            raise kernel_error(errno.ENOMEM, "vm.max_map_count reached")

    # --- placing ----------------------------------------------------------------------

    def _free(self, first: int, last: int) -> bool:
        return last <= self.state.vmas.limit and self.state.vmas.all_equal(first, last, None)

    def unmapped_area(self, npages: int, hint: int) -> tuple[int, tuple[int, int] | None]:
        """get_unmapped_area, top-down below MMAP_BASE as x86-64 does: the
        highest free range that fits.  Returns the first page and the
        free-area cache to keep once the mapping is in place."""
        if hint:
            first = (hint + P - 1) >> SHIFT
            if first << SHIFT >= MMAP_MIN_ADDR and self._free(first, first + npages) \
                    and (first + npages) << SHIFT <= TASK_SIZE:
                return first, None
        floor, ceiling = MMAP_MIN_ADDR >> SHIFT, MMAP_BASE >> SHIFT
        st = self.state
        # Below the cache nothing is mapped higher up that could fit, unless a
        # hole above it is at least cached_hole big: then search from the top.
        start = ceiling if npages <= st.cached_hole or not st.free_area else st.free_area
        for s, e, m in self.state.vmas.runs_reversed(floor, start):
            if m is None and e - s >= npages:
                found = e - npages
                # Every hole between here and where the search began is
                # smaller than npages (this is the highest fit).
                hole = npages - 1 if start == ceiling else max(st.cached_hole, npages - 1)
                return found, (found, hole)
        raise kernel_error(errno.ENOMEM, "no free range of that size")

    def _hole_freed(self, first: int, last: int) -> None:
        """A range was unmapped: the holes above the free-area cache grew."""
        st = self.state
        if st.free_area and last > st.free_area:
            s, e, _ = st.vmas.run_at(first)
            st.cached_hole = max(st.cached_hole, min(e, MMAP_BASE >> SHIFT) - s)

    # --- mmap -------------------------------------------------------------------------

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int = 0,
             addr: int = 0) -> int:
        plan = self.mmap_plan(fd, length, prot, flags, offset, addr)
        if plan.file is not None:
            try:
                f = self.state.files[plan.file]
                mmap = self.ops[f.kind].mmap
                assert mmap is not None  # its absence was refused by mmap_plan
                mmap(f, plan.shared, plan.prot, plan.pgoff, plan.npages)
            except OSError:
                self.mmap_refused(plan)
                raise
        return self.mmap_install(plan)

    def mmap_refused(self, plan: MmapPlan) -> None:
        """__mmap_region has already unmapped (and zapped) what MAP_FIXED
        replaces when the file's mmap fails: vms_abort_munmap_vmas cannot
        reattach it and leaves a gap (mm/vma.c)."""
        if plan.fixed:
            self._unmap_range(plan.first, plan.first + plan.npages)

    def mmap_plan(self, fd: int, length: int, prot: int, flags: int, offset: int,
                  addr: int) -> MmapPlan:
        """Everything do_mmap checks before it calls the file's mmap; changes nothing."""
        if offset & (P - 1):
            raise kernel_error(errno.EINVAL, "offset not page-aligned")
        pgoff = (offset & ((1 << 64) - 1)) >> SHIFT
        anonymous = bool(flags & uapi.MAP_ANONYMOUS)
        f = None if anonymous else self.core.file(fd)
        if length == 0:
            raise kernel_error(errno.EINVAL, "length 0")
        size = page_align(length)
        if size == 0 or size > TASK_SIZE:
            raise kernel_error(errno.ENOMEM, "length too large")
        npages = size >> SHIFT
        if pgoff + npages >= 1 << 64:
            raise kernel_error(errno.EOVERFLOW, "offset + length overflows")
        if self.state.map_count > self.state.max_map_count:
            raise kernel_error(errno.ENOMEM, "vm.max_map_count exceeded")
        fixed = bool(flags & (uapi.MAP_FIXED | uapi.MAP_FIXED_NOREPLACE))
        ops = None
        if f is not None:
            ops = self.ops[f.kind]
            if ops.get_unmapped_area is not None:  # the file places its mappings itself
                addr = ops.get_unmapped_area(f, pgoff, npages, addr, fixed)
        cache = None
        if fixed:
            if addr & (P - 1):
                raise kernel_error(errno.EINVAL, "MAP_FIXED address not page-aligned")
            if addr + size > TASK_SIZE:
                raise kernel_error(errno.ENOMEM, "MAP_FIXED range beyond user space")
            first = addr >> SHIFT
        else:
            first, cache = self.unmapped_area(npages, addr)
        if flags & uapi.MAP_FIXED_NOREPLACE and not flags & uapi.MAP_FIXED \
                and not self._free(first, first + npages):
            raise kernel_error(errno.EEXIST, "MAP_FIXED_NOREPLACE range is in use")
        maptype = flags & uapi.MAP_TYPE
        # Unlike mprotect, mmap does not validate prot: unknown bits are dropped.
        prot &= uapi.PROT_READ | uapi.PROT_WRITE | uapi.PROT_EXEC
        if fixed and self.mapping_runs(first, first + npages):
            self._unmap_checks(first, first + npages)
        mayexec = True
        if f is None:
            if maptype not in (uapi.MAP_SHARED, uapi.MAP_PRIVATE):
                raise kernel_error(errno.EINVAL, "map type must be SHARED or PRIVATE")
            shared = maptype == uapi.MAP_SHARED
        else:
            inode = self.state.inodes[f.inode]
            if inode.mode & 0o170000 == uapi.S_IFREG and npages > ((1 << 63) - 1 - pgoff * P) // P:
                raise kernel_error(errno.EOVERFLOW, "offset beyond the maximum file size")
            if maptype == uapi.MAP_SHARED_VALIDATE and flags & ~LEGACY_MAP_MASK & ~0x100000:
                raise kernel_error(errno.EOPNOTSUPP, "unknown flag with MAP_SHARED_VALIDATE")
            if maptype not in (uapi.MAP_SHARED, uapi.MAP_SHARED_VALIDATE, uapi.MAP_PRIVATE):
                raise kernel_error(errno.EINVAL, "map type must be SHARED or PRIVATE")
            shared = maptype != uapi.MAP_PRIVATE
            assert ops is not None
            if ops.noexec:
                if prot & uapi.PROT_EXEC:
                    raise kernel_error(errno.EPERM, "PROT_EXEC on a noexec mount")
                mayexec = False
            if ops.mmap is None:  # do_mmap: no f_op->mmap at all
                raise kernel_error(errno.ENODEV, f"a {f.kind} file cannot be mapped")
        return MmapPlan(file=f.id if f is not None else None, first=first, npages=npages,
                        fixed=fixed, shared=shared, prot=prot, pgoff=pgoff, mayexec=mayexec,
                        cache=cache)

    def mmap_install(self, plan: MmapPlan) -> int:
        """The part of mmap_region after the file's mmap said yes: the new VMA."""
        first, npages = plan.first, plan.npages
        overlay = None
        if not plan.shared:
            overlay = self.state.new_id()
            self.state.overlays[overlay] = pages.new_store()
        if plan.file is not None:
            mapping = Mapping(file=plan.file, delta=plan.pgoff - first, prot=plan.prot,
                              shared=plan.shared, maywrite=True, mayexec=plan.mayexec,
                              overlay=overlay)
        elif plan.shared:
            inode = self.core.new_inode("shmem", uapi.S_IFREG | 0o777, size=npages * P)
            f = self.core.new_file("shmem", inode)
            mapping = Mapping(file=f.id, delta=-first, prot=plan.prot, shared=True,
                              maywrite=True, mayexec=True)
        else:
            mapping = Mapping(file=None, delta=0, prot=plan.prot, shared=False, maywrite=True,
                              mayexec=True, overlay=overlay)
        if plan.fixed:
            self._unmap_range(first, first + npages)
        self.assign(first, first + npages, mapping)
        if plan.cache is not None:
            self.state.free_area, self.state.cached_hole = plan.cache
        return first << SHIFT

    # --- munmap -------------------------------------------------------------------------

    def munmap(self, addr: int, length: int) -> int:
        if addr & (P - 1) or addr > TASK_SIZE or length > TASK_SIZE - addr:
            raise kernel_error(errno.EINVAL, "bad address or length")
        size = page_align(length)
        if size == 0:
            raise kernel_error(errno.EINVAL, "length 0")
        first, last = addr >> SHIFT, (addr + size) >> SHIFT
        if self.mapping_runs(first, last):
            self._unmap_checks(first, last)
            self._unmap_range(first, last)
        return 0

    def _unmap_checks(self, first: int, last: int) -> None:
        """What vms_gather_munmap_vmas checks before it splits anything."""
        vma = self.vma_of(first)
        if vma is not None and vma[0] < first:
            if last < vma[1] and self.state.map_count >= self.state.max_map_count:
                raise kernel_error(errno.ENOMEM, "splitting would exceed vm.max_map_count")
            self.may_split(vma[2], first)
        tail = self.vma_of(last - 1)
        if tail is not None and tail[1] > last:
            self.may_split(tail[2], last)

    def _unmap_range(self, first: int, last: int) -> None:
        runs = self.mapping_runs(first, last)
        if not runs:
            return
        self.ptes.clear(first, last)
        self.assign(first, last, None)
        self.state.counters["host_pte_zaps"] += 1
        self.state.counters["tlb_flushes"] += 1
        self._close(runs)
        self._unmapped_files([m for _, _, m in runs])
        self._drop_unused_overlays({m.overlay for _, _, m in runs if m.overlay is not None})

    def _close(self, runs: list[tuple[int, int, Mapping]]) -> None:
        """vm_ops->close of each removed mapping's file; nothing for ordinary files."""
        if not self.tells_close:
            return
        for _, _, m in runs:
            if m.file is not None:
                kind = self.state.files[m.file].kind
                if kind == "restricted":
                    self.observer.audit_unmap(m)
                close = self.ops[kind].close
                if close is not None:
                    close(m)

    def _drop_unused_overlays(self, overlays: set[int]) -> None:
        for overlay in overlays:
            if not self.state.overlay_pages.get(overlay):
                self.state.overlays.pop(overlay, None)
                self.state.overlay_pages.pop(overlay, None)

    # --- mprotect -------------------------------------------------------------------------

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        if addr & (P - 1):
            raise kernel_error(errno.EINVAL, "address not page-aligned")
        if length == 0:
            return 0
        size = page_align(length)
        end = addr + size
        if size == 0 or end <= addr:
            raise kernel_error(errno.ENOMEM, "range wraps")
        if prot & ~(uapi.PROT_READ | uapi.PROT_WRITE | uapi.PROT_EXEC | 0x8):
            raise kernel_error(errno.EINVAL, "unknown PROT_ bits")
        prot &= uapi.PROT_READ | uapi.PROT_WRITE | uapi.PROT_EXEC
        first, last = addr >> SHIFT, min(end >> SHIFT, self.state.vmas.limit)
        vma = self.vma_of(first) if first < self.state.vmas.limit else None
        if vma is None:
            raise kernel_error(errno.ENOMEM, "start of range is not mapped")
        pos = first
        while pos < last:
            vma = self.vma_of(pos)
            if vma is None:
                raise kernel_error(errno.ENOMEM, "range has a hole")
            s, e, m = vma
            stop = min(e, last)
            if (prot & uapi.PROT_WRITE and not m.maywrite) or (prot & uapi.PROT_EXEC and not m.mayexec):
                raise kernel_error(errno.EACCES, "protection beyond what the mapping may have")
            if m.prot != prot:
                self.modify(s, e, pos, stop, replace(m, prot=prot, tag=0))
            pos = stop
        if (end >> SHIFT) > last:
            raise kernel_error(errno.ENOMEM, "range beyond user space")
        self.state.counters["tlb_flushes"] += 1
        return 0

    def modify(self, s: int, e: int, first: int, last: int, new: Mapping) -> None:
        """vma_modify: split [s, e) at first and last (each split checked
        against max_map_count, as split_vma does), then change [first, last)."""
        old = self.state.vmas[first]
        assert old is not None
        if first > s:
            self.may_split(old, first)
            self._split_check()
        if last < e:
            self.may_split(old, last)
            if first > s:
                # Both splits needed: the first one happens before the second
                # is checked, and stays if the second fails.
                if self.state.map_count + 1 >= self.state.max_map_count:
                    self.assign(first, e, replace(old, tag=self.state.new_id()))
                    raise kernel_error(errno.ENOMEM, "vm.max_map_count reached")
            else:
                self._split_check()
        self.assign(first, last, new)

    # --- madvise -----------------------------------------------------------------------------

    def madvise(self, addr: int, length: int, advice: int) -> int:
        valid = set(FLAG_ADVICE) | NOOP_ADVICE | {uapi.MADV_DONTNEED, uapi.MADV_FREE,
                                                  uapi.MADV_REMOVE, uapi.MADV_COLLAPSE,
                                                  uapi.MADV_POPULATE_READ, uapi.MADV_POPULATE_WRITE}
        if advice not in valid:
            raise kernel_error(errno.EINVAL, f"unknown advice {advice}")
        if addr & (P - 1):
            raise kernel_error(errno.EINVAL, "address not page-aligned")
        size = page_align(length)
        if length and not size:
            raise kernel_error(errno.EINVAL, "length wraps")
        end = addr + size
        if end >= 1 << 64:
            raise kernel_error(errno.EINVAL, "range wraps")
        if end == addr:
            return 0
        first, last = addr >> SHIFT, min(end >> SHIFT, self.state.vmas.limit)
        unmapped = (end >> SHIFT) > last
        pos = first
        while pos < last:
            vma = self.vma_of(pos)
            if vma is None:
                unmapped = True
                nxt = self.state.vmas.find(pos, last, lambda m: m is not None)
                if nxt is None:
                    break
                pos = nxt
                continue
            s, e, m = vma
            stop = min(e, last)
            self._advise(s, e, pos, stop, m, advice)
            pos = stop
        if unmapped:
            raise kernel_error(errno.ENOMEM, "range has unmapped pages")
        return 0

    def _advise(self, s: int, e: int, first: int, last: int, m: Mapping, advice: int) -> None:
        f = self.state.files.get(m.file) if m.file is not None else None
        if advice in FLAG_ADVICE:
            if advice in (18, 19) and (m.shared or m.file is not None):
                raise kernel_error(errno.EINVAL, "WIPEONFORK needs private anonymous memory")
            set_bits, clear_bits = FLAG_ADVICE[advice]
            new_advice = (m.advice | set_bits) & ~clear_bits
            if new_advice != m.advice:
                self.modify(s, e, first, last, replace(m, advice=new_advice, tag=0))
        elif advice == uapi.MADV_DONTNEED:
            self.ptes.clear(first, last)
            self._drop_private(m, first, last)
            self.state.counters["host_pte_zaps"] += 1
        elif advice == uapi.MADV_FREE:
            if f is not None:
                raise kernel_error(errno.EINVAL, "MADV_FREE needs anonymous memory")
            self._drop_private(m, first, last)
        elif advice == uapi.MADV_REMOVE:
            if f is None:
                raise kernel_error(errno.EINVAL, "MADV_REMOVE needs a file mapping")
            if not (m.shared and m.maywrite):
                raise kernel_error(errno.EACCES, "MADV_REMOVE needs a shared writable mapping")
            offset = (first + m.delta) << SHIFT
            self._remove_range(f, offset, (last - first) << SHIFT)
        elif advice == uapi.MADV_COLLAPSE:
            if f is not None and f.kind != "memfd":
                raise kernel_error(errno.EINVAL, f"a {f.kind} mapping cannot be collapsed")
        elif advice in (uapi.MADV_POPULATE_READ, uapi.MADV_POPULATE_WRITE):
            write = advice == uapi.MADV_POPULATE_WRITE
            _, fault = self.resolve(first << SHIFT, (last - first) << SHIFT, write)
            if fault is not None:
                raise kernel_error(errno.EFAULT if fault.signo == uapi.SIGBUS else errno.ENOMEM,
                                   fault.why)

    def _remove_range(self, f: OpenFile, offset: int, length: int) -> None:
        mode = uapi.FALLOC_FL_PUNCH_HOLE | uapi.FALLOC_FL_KEEP_SIZE
        handler = self.ops[f.kind].fallocate
        if handler is None:
            raise kernel_error(errno.EOPNOTSUPP, "the file cannot punch holes")
        handler(f, mode, offset, length)

    def _drop_private(self, m: Mapping, first: int, last: int) -> None:
        if m.overlay is not None:
            pages.punch(self.state.overlays[m.overlay], first + m.delta, last + m.delta)

    # --- mremap -----------------------------------------------------------------------------

    def mremap(self, addr: int, old_length: int, new_length: int, flags: int = 0,
               new_address: int = 0) -> int:
        if flags & ~(uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED | uapi.MREMAP_DONTUNMAP):
            raise kernel_error(errno.EINVAL, "unknown MREMAP_ flag")
        if flags & uapi.MREMAP_FIXED and not flags & uapi.MREMAP_MAYMOVE:
            raise kernel_error(errno.EINVAL, "MREMAP_FIXED needs MREMAP_MAYMOVE")
        if flags & uapi.MREMAP_DONTUNMAP and (not flags & uapi.MREMAP_MAYMOVE
                                             or old_length != new_length):
            raise kernel_error(errno.EINVAL, "MREMAP_DONTUNMAP needs MAYMOVE and equal lengths")
        if addr & (P - 1):
            raise kernel_error(errno.EINVAL, "address not page-aligned")
        old_size, new_size = page_align(old_length), page_align(new_length)
        if new_size == 0:
            raise kernel_error(errno.EINVAL, "new length 0")
        if flags & uapi.MREMAP_DONTUNMAP:
            raise UsageError("mremap: MREMAP_DONTUNMAP is not modelled")
        if flags & uapi.MREMAP_FIXED:
            if new_address & (P - 1) or new_size > TASK_SIZE or new_address > TASK_SIZE - new_size:
                raise kernel_error(errno.EINVAL, "bad new address")
            if addr < new_address + new_size and new_address < addr + old_size:
                raise kernel_error(errno.EINVAL, "old and new ranges overlap")
        first = addr >> SHIFT
        vma = self.vma_of(first) if addr < TASK_SIZE else None
        if vma is None:
            raise kernel_error(errno.EFAULT, "old address is not mapped")
        s, e, m = vma
        if old_size == 0:
            raise UsageError("mremap: duplicating a mapping (old_length 0) is not modelled")
        old_last = first + (old_size >> SHIFT)
        if old_last > e:
            raise kernel_error(errno.EFAULT, "old range is not within one mapping")
        self._mremap(m)
        new_npages = new_size >> SHIFT
        if flags & uapi.MREMAP_FIXED:
            self._unmap_range(new_address >> SHIFT, (new_address >> SHIFT) + new_npages)
            return self._move(s, e, first, old_last, m, new_address >> SHIFT, new_npages)
        if new_size <= old_size:
            if new_size < old_size:
                self.munmap(addr + new_size, old_size - new_size)
            return addr
        grow_first, grow_last = old_last, first + new_npages
        if old_last == e and self._free(grow_first, grow_last) and grow_last << SHIFT <= TASK_SIZE:
            self.assign(grow_first, grow_last, m)
            return addr
        if not flags & uapi.MREMAP_MAYMOVE:
            raise kernel_error(errno.ENOMEM, "cannot grow in place")
        target, cache = self.unmapped_area(new_npages, 0)
        moved = self._move(s, e, first, old_last, m, target, new_npages)
        if cache is not None:
            self.state.free_area, self.state.cached_hole = cache
        return moved

    def _mremap(self, m: Mapping) -> None:
        """vm_ops->mremap of the mapping's file; ordinary mappings may move."""
        if self.checks_mremap and m.file is not None:
            mremap = self.ops[self.state.files[m.file].kind].mremap
            if mremap is not None:
                mremap(m)

    def _move(self, s: int, e: int, first: int, last: int, m: Mapping, target: int,
              npages: int) -> int:
        if self.state.map_count >= self.state.max_map_count - 3:
            raise kernel_error(errno.ENOMEM, "vm.max_map_count reached")
        if first > s:
            self.may_split(m, first)
        if last < e:
            self.may_split(m, last)
        moved = replace(m, delta=m.delta + first - target, tag=0)
        self.ptes.move(first, last, target)
        self.assign(first, last, None)
        self.assign(target, target + npages, moved)
        self.state.counters["host_pte_zaps"] += 1
        return target << SHIFT

    # --- host loads and stores ----------------------------------------------------------------

    def resolve(self, addr: int, length: int, write: bool) -> tuple[list[Segment], Fault | None]:
        """Fault in [addr, addr+length) page by page, in order.

        Returns the segments (store, byte offset in the store, length, mapping)
        that were served, and the fault that stopped the walk (None if it
        covered the whole range): a real access would have touched the
        earlier pages before taking the signal.
        """
        end = addr + length
        segments: list[Segment] = []
        pos = addr
        while pos < end:
            vpage = pos >> SHIFT
            if pos >= TASK_SIZE:
                return segments, Fault(uapi.SIGSEGV, pos, "address beyond user space")
            _s, e, m = self.state.vmas.run_at(vpage)
            if m is None:
                return segments, Fault(uapi.SIGSEGV, pos, "no mapping")
            if (write and not m.prot & uapi.PROT_WRITE) or m.prot == uapi.PROT_NONE:
                return segments, Fault(uapi.SIGSEGV, pos, "the mapping's protection forbids it")
            stop = min(e << SHIFT, end)
            first_pg, last_pg = vpage + m.delta, ((stop - 1) >> SHIFT) + 1 + m.delta
            store, served = self._fault_range(m, first_pg, last_pg, write)
            ok_end = min(stop, (served - m.delta) << SHIFT)
            if ok_end > pos:
                self.ptes.install(vpage, ((ok_end - 1) >> SHIFT) + 1, m)
                segments.append((store, ((vpage + m.delta) << SHIFT) + (pos & (P - 1)),
                                 ok_end - pos, m))
            if ok_end < stop:
                return segments, Fault(uapi.SIGBUS, ok_end, self.why_sigbus(m, ok_end))
            pos = stop
        return segments, None

    def _fault_range(self, m: Mapping, first: int, last: int, write: bool) -> tuple[pages.PageStore, int]:
        """Serve faults on file pages [first, last) of m; returns the store
        holding them and the first page that could not be served (last if
        all were)."""
        if m.file is None:
            assert m.overlay is not None
            return self.state.overlays[m.overlay], last
        f = self.state.files[m.file]
        handler = self.ops[f.kind].fault
        if handler is None:
            return self.state.inodes[f.inode].pages, first
        served: int = handler(f, first, last, write)
        inode = self.state.inodes[f.inode]
        served = self.pkvm.stage2_limit(inode, first, served)
        if served > first:
            self.state.counters["pages_zeroed"] += pages.allocate(inode.pages, first, served)
        return inode.pages, served

    def why_sigbus(self, m: Mapping, addr: int) -> str:
        """Why a host fault at addr on m could not be served.  Asked in this
        order: the file holding the page back (private), the hypervisor's
        stage-2 (the page belongs to a guest), the file's own reason (its size,
        its state)."""
        f = self.state.files.get(m.file) if m.file is not None else None
        if f is None:
            return "the file cannot serve this page"
        index = (addr >> SHIFT) + m.delta
        ops = self.ops[f.kind]
        reason = ops.refuses_page(f, index) if ops.refuses_page is not None else None
        if reason is None and self.state.pkvm is not None:
            reason = self.pkvm.why_sigbus(self.state.inodes[f.inode], index)
        if reason is not None:
            return reason
        if ops.why_sigbus is not None:
            return ops.why_sigbus(f, index)
        return beyond_size(self.state.inodes[f.inode], index) or "the file cannot serve this page"

    def _host_access(self, addr: int, length: int, write: bool, data: bytes | None = None,
                     fill: int | None = None) -> bytes:
        """A load (data and fill None) or a store, through the host mappings."""
        segments, fault = self.resolve(addr, length, write)
        self.observer.audit_host_access(segments, write)
        out = bytearray()
        pos = 0
        for store, offset, n, m in segments:
            if write:
                chunk = None if data is None else data[pos:pos + n]
                self.store(store, offset, n, m, chunk, fill)
            else:
                out += self.load(store, offset, n, m)
            pos += n
        if fault is not None:
            raise MemorySignal(fault.signo, fault.addr, fault.why)
        return bytes(out)

    def load(self, store: pages.PageStore, offset: int, n: int, m: Mapping) -> bytes:
        if m.shared or m.file is None:
            return pages.read(store, offset, n)
        assert m.overlay is not None
        overlay = self.state.overlays[m.overlay]
        out = bytearray(pages.read(store, offset, n))
        for s, e, page in overlay.runs(offset >> SHIFT, ((offset + n - 1) >> SHIFT) + 1):
            if page is None:
                continue
            lo, hi = max(s << SHIFT, offset), min(e << SHIFT, offset + n)
            out[lo - offset:hi - offset] = pages.read(overlay, lo, hi - lo)
        return bytes(out)

    def store(self, store: pages.PageStore, offset: int, n: int, m: Mapping,
              data: bytes | None, fill: int | None) -> None:
        target = store
        if not m.shared and m.file is not None:
            assert m.overlay is not None
            target = self.state.overlays[m.overlay]
            # Copy-on-write: the private copy starts as the file's pages.
            for s, e, page in target.runs(offset >> SHIFT, ((offset + n - 1) >> SHIFT) + 1):
                if page is None:
                    pages.copy(store, target, s, e)
        if data is not None:
            pages.write(target, offset, data)
        else:
            assert fill is not None
            pages.fill(target, offset, n, fill)

    def vma_count(self) -> int:
        return self.state.map_count

    def set_max_map_count(self, value: int) -> int:
        if value < 0:
            raise kernel_error(errno.EINVAL, "vm.max_map_count cannot be negative")
        self.state.max_map_count = value
        return 0

    def read_mem(self, addr: int, length: int) -> bytes:
        if length == 0:
            return b""
        return self._host_access(addr, length, write=False)

    def write_mem(self, addr: int, data: bytes = b"", fill: int | None = None,
                  length: int | None = None) -> int:
        n = length if fill is not None and length is not None else len(data)
        if n:
            self._host_access(addr, n, write=True, data=None if fill is not None else data,
                              fill=fill)
        return n


def _inside(run: tuple[int, int, Mapping | None], point: int) -> bool:
    s, e, m = run
    return m is not None and s < point < e
