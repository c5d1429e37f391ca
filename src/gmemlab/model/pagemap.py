"""Page-granular host access to the restricted memfd: designs page-mmap and kvm-map.

Both answer pKVM's 2022 objection (a guest shares its DMA pool page by page)
on top of the same restricted memfd, KVM notifier and host address space as
the seed design; they change what the seed restricts.

page-mmap (docs/DESIGNS.md, page-mmap, the fragmentation objection): host
userspace maps any page range of the file, MAP_SHARED, and may split, merge
and move the mappings.  Offset o of a file always goes to the file's
canonical address (the place its first mapping chose for offset 0, plus o),
so a page mapped again after an unmap lands in its hole and merges with its
neighbours.  KVM's notifier refuses a mapping that covers a private gfn
(EPERM).  A page becomes private only when no VMA covers it and nothing
references it (a get_pfn reference or a GUP pin): otherwise EBUSY.  The VMM
therefore munmaps a page before it converts it and mmaps it after, and the
address space fragments as the pool's pages come and go; vm.max_map_count
stops it (ENOMEM) exactly where the kernel would.

kvm-map (2.C, Fuad's suggestion): host userspace cannot mmap the file
(ENODEV); it asks KVM (kvm_map_shared) to map a shared guest range, which
KVM does at the same canonical address, refusing any private gfn (EPERM).
The mapping's faults are KVM's: a private page raises SIGBUS.  A conversion
to private zaps the host page tables of the range (the VMA stays) and is
refused (EBUSY) while a page is referenced.

In both, get_pfn is not refused because the file is mapped, and unmapping
with references out destroys nothing: the seed's two restrictions existed
only to keep whole-file mappings and KVM's references apart.  A guest's
shared access to a gfn bound to the file reaches the file's own page, as
pKVM shares in place.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

from .. import uapi
from ..errors import kernel_error
from .fileops import FileOps
from .invariants import bound_private_runs
from .pfns import PfnOps
from .policies import HostMappingPromise, MapScope
from .ptes import first_referenced
from .restricted import NO_NONZERO_AFTER_LAUNCH
from .state import Inode, Mapping, Memslot, Notifier, OpenFile, Vm

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
FAULTING_OPS = frozenset({"read_mem", "write_mem", "gup_pin", "madvise"})


class PageMapOps(PfnOps):
    def _page_granular(self) -> bool:
        return self.design.mapping.scope is not MapScope.WHOLE_FILE

    # --- which file pages are private ------------------------------------------------------

    def _slot_pages(self, slot: Memslot, first: int, last: int) -> tuple[int, int]:
        """The part of file pages [first, last) that slot binds."""
        return max(first, slot.private_pgoff), min(last, slot.private_pgoff + slot.npages)

    def _private_pages(self, f: OpenFile, first: int, last: int) -> Iterator[tuple[int, int]]:
        """Runs of file pages in [first, last) bound to a private gfn."""
        return bound_private_runs(self.state, self.state.inodes[f.inode], f, first, last)

    # --- mapping: where, and what KVM's notifier says ---------------------------------------------

    def _restricted_file_ops(self) -> FileOps:
        """The restricted memfd's operations, as this design builds it."""
        m, scope = self.design.mapping, self.design.mapping.scope
        whole_file = scope is MapScope.WHOLE_FILE
        return FileOps(
            regular=True, noexec=True, mmap=self._mmap_restricted,
            get_unmapped_area=self._restricted_unmapped_area if scope is MapScope.PAGES else None,
            fallocate=self._fallocate_restricted, setsize=self._ftruncate_restricted,
            fault=self._fault_restricted,
            may_split=self._restricted_may_split if whole_file else None,
            mremap=self._restricted_mremap if whole_file else None,
            close=self._restricted_close if self.design.references.destroy_at_unmap else None,
            refuses_page=self._restricted_refuses_page if m.faults_check_private else None,
            why_sigbus=self._restricted_why_sigbus)

    def _restricted_unmapped_area(self, f: OpenFile, pgoff: int, npages: int, addr: int,
                                  fixed: bool) -> int:
        """Offset o goes to the file's canonical address plus o."""
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        if r is None or r.destroyed or pgoff + npages > inode.size >> SHIFT:
            return addr
        if r.canonical is None:
            if fixed:
                base = (addr >> SHIFT) - pgoff
                r.canonical = base if base >= 0 else None
                return addr
            r.canonical = self.mm.unmapped_area(inode.size >> SHIFT, 0)[0]
        return addr if fixed else (r.canonical + pgoff) << SHIFT

    def _restricted_mmap_checks(self, f: OpenFile, shared: bool, pgoff: int, npages: int) -> Inode:
        mode = self.design.mapping.scope
        if mode is MapScope.WHOLE_FILE:
            return super()._restricted_mmap_checks(f, shared, pgoff, npages)
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        assert r is not None
        if mode is MapScope.KVM_ONLY:
            raise kernel_error(errno.ENODEV, "only KVM maps this file (kvm_map_shared)")
        self._alive(r)
        if not shared:
            raise kernel_error(errno.EINVAL, "a restricted memfd can only be mapped MAP_SHARED")
        if pgoff + npages > inode.size >> SHIFT:
            raise kernel_error(errno.EINVAL, "the mapping reaches beyond the file size")
        r.mmap_range = (pgoff, pgoff + npages)
        return inode

    def _kvm_notifier(self, kvm: Vm, n: Notifier, event: str, first: int, last: int) -> int:
        if event != "mmap_start" or not self._page_granular():
            return super()._kvm_notifier(kvm, n, event, first, last)
        assert n.slot is not None
        slot = kvm.memslots[n.slot]
        assert slot.private_file is not None
        r = self.state.inodes[self.state.files[slot.private_file].inode].restricted
        assert r is not None
        if kvm.type in NO_NONZERO_AFTER_LAUNCH:
            return errno.EOPNOTSUPP
        if kvm.converting:
            return errno.EBUSY
        lo, hi = self._slot_pages(slot, *r.mmap_range)
        shift = slot.base_gfn - slot.private_pgoff
        if lo < hi and any(a & PRIVATE for _, _, a in kvm.attributes.runs(lo + shift, hi + shift)):
            return errno.EPERM
        kvm.mmap_pending.add(n.slot)
        return 0

    # --- kvm-map: KVM maps, and KVM answers the faults -----------------------------------------

    def kvm_map_shared(self, vm: int, gpa: int, size: int,
                       prot: int = uapi.PROT_READ | uapi.PROT_WRITE) -> int:
        kvm = self.core.vm_of(vm)
        if self.design.mapping.scope is not MapScope.KVM_ONLY:
            raise kernel_error(errno.ENOTTY, f"KVM maps no guest memory for the host in design "
                               f"{self.design.name}")
        if size == 0 or gpa & (P - 1) or size & (P - 1) or gpa + size >= 1 << 64:
            raise kernel_error(errno.EINVAL, "gpa and size must be page-aligned, size non-zero")
        if prot & ~(uapi.PROT_READ | uapi.PROT_WRITE | uapi.PROT_EXEC):
            raise kernel_error(errno.EINVAL, "unknown PROT_ bits")
        if prot & uapi.PROT_EXEC:
            raise kernel_error(errno.EPERM, "guest memory is never executable by the host")
        first, last = gpa >> SHIFT, (gpa + size) >> SHIFT
        key = kvm.gfn_slots[first] if first < kvm.gfn_slots.limit else None
        slot = kvm.memslots.get(key) if key is not None else None
        if slot is None or slot.private_file is None or last > slot.base_gfn + slot.npages:
            raise kernel_error(errno.EINVAL, "the range is not within one memslot bound to a "
                               "restricted memfd")
        f = self.state.files[slot.private_file]
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        self._alive(inode.restricted)
        if kvm.converting:
            raise kernel_error(errno.EBUSY, "a conversion of this VM is running")
        if any(a & PRIVATE for _, _, a in kvm.attributes.runs(first, last)):
            raise kernel_error(errno.EPERM, "KVM does not map private memory for the host")
        r = inode.restricted
        if r.canonical is None:
            r.canonical = self.mm.unmapped_area(inode.size >> SHIFT, 0)[0]
        pgoff = slot.private_pgoff + first - slot.base_gfn
        vfirst, vlast = r.canonical + pgoff, r.canonical + pgoff + last - first
        mapping = Mapping(file=f.id, delta=pgoff - vfirst, prot=prot, shared=True, maywrite=True,
                          mayexec=False)
        holes = []
        for s, e, m in self.state.vmas.runs(vfirst, vlast):
            if m is None:
                holes.append((s, e))
            elif m != mapping:
                raise kernel_error(errno.EEXIST, f"{s << SHIFT:#x} is mapped by something else")
        if holes and self.state.map_count > self.state.max_map_count:
            raise kernel_error(errno.ENOMEM, "vm.max_map_count exceeded")
        for s, e in holes:
            self.mm.assign(s, e, mapping)
        return vfirst << SHIFT

    def _fault_restricted(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        served: int = super()._fault_restricted(f, first, last, write)
        if not self.design.mapping.faults_check_private:
            return served
        stop = next((s for s, _ in self._private_pages(f, first, served)), None)
        return served if stop is None else max(first, stop)

    def _restricted_refuses_page(self, f: OpenFile, index: int) -> str | None:
        if any(True for _ in self._private_pages(f, index, index + 1)):
            return f"page {index} is private: KVM refuses the host's fault"
        return None

    def _design_blocker(self, actor: str, pending: Any) -> str | None:
        # kvm-map's faults ask KVM, which holds them off while it converts
        # (the mmu_invalidate sequence): a fault waits rather than fail.
        if self.design.mapping.faults_check_private and pending.op in FAULTING_OPS \
                and any(v.converting for v in self.state.vms.values()):
            return "a host fault waits for KVM's conversion to finish"
        return super()._design_blocker(actor, pending)

    # --- binding and conversion ------------------------------------------------------------------

    def _bind_restricted(self, kvm: Vm, slot: Memslot, f: OpenFile, offset: int) -> None:
        if self._page_granular():
            inode = self.state.inodes[f.inode]
            first = offset >> SHIFT
            last = first + slot.npages
            valid = (inode.restricted is not None and not inode.restricted.destroyed
                     and not offset & (P - 1) and offset + (slot.npages << SHIFT) <= inode.size
                     and f.bindings is not None and f.bindings.all_equal(first, last, None))
            if valid:
                shift = slot.base_gfn - first
                for s, e, a in kvm.attributes.runs(first + shift, last + shift):
                    if a & PRIVATE and not inode.vma_cover.all_equal(s - shift, e - shift, 0):
                        raise kernel_error(errno.EPERM, "a mapped page of the file would back a "
                                           "private gfn")
        super()._bind_restricted(kvm, slot, f, offset)
        slot.gmem_only = self.design.mapping.shared_access_in_place

    def _conversion_check(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        if not self._page_granular():
            super()._conversion_check(kvm, first, last, attributes)
            return
        if not attributes & PRIVATE:
            return  # to shared needs nothing: the VMM maps the page afterwards
        for slot in self._restricted_slots(kvm, first, last):
            assert slot.private_file is not None
            inode = self.state.inodes[self.state.files[slot.private_file].inode]
            shift = slot.base_gfn - slot.private_pgoff
            lo, hi = max(first, slot.base_gfn), min(last, slot.base_gfn + slot.npages)
            changing = [(s - shift, e - shift) for s, e, a in kvm.attributes.runs(lo, hi)
                        if not a & PRIVATE]
            if not changing:
                continue
            if self.design.mapping.scope is MapScope.PAGES:
                # A mapping is being set up until its VMA is in place, which is
                # after KVM's mmap_end (when the memslot stops being pending): the
                # file's lock, held across the whole mmap, says so.  Going by
                # mmap_pending alone left a window in which a page turned private
                # just before a VMA covered it (the checker's counterexample to P4
                # and P1, scenarios/page_mmap_share.toml).
                if slot.key in kvm.mmap_pending or inode.ino in self.state.file_locks:
                    raise kernel_error(errno.EBUSY, f"a mapping of memslot {slot.id}'s file is "
                                       "being set up")
                for s, e in changing:
                    covered = inode.vma_cover.find(s, e, bool)
                    if covered is not None:
                        raise kernel_error(errno.EBUSY, f"a VMA covers file page {covered}")
            else:
                # KVM zaps the host's page tables of the range, then checks.
                self.state.counters["host_pte_zaps"] += 1
                self.state.counters["tlb_flushes"] += 1
                for s, e in changing:
                    self.ptes.zap_file(inode.ino, s, e)
            for s, e in changing:
                held = first_referenced(inode, s, e, with_ptes=False)
                if held is not None:
                    self.state.counters["refused"] += 1
                    raise kernel_error(errno.EBUSY, f"file page {held} is referenced "
                                       "(get_pfn or a GUP pin)")

    def _audit_private(self, kvm: Vm, first: int, last: int) -> None:
        if not self._page_granular():
            super()._audit_private(kvm, first, last)
            return
        promise = self.design.promise.host_mapping
        for slot in self._restricted_slots(kvm, first, last):
            assert slot.private_file is not None
            inode = self.state.inodes[self.state.files[slot.private_file].inode]
            lo, hi = self._slot_pages(slot, first - slot.base_gfn + slot.private_pgoff,
                                      last - slot.base_gfn + slot.private_pgoff)
            held = inode.vma_cover if promise is HostMappingPromise.NO_VMA else inode.host_ptes
            hit = held.find(lo, hi, bool)
            if hit is not None:
                self.state.audit.append(("private_while_mapped", inode.ino, hit))
