"""KVM's rules for memslots bound to a 2022 restricted memfd.

Conversions and mapping are mutually exclusive (KVM's rule 2 in the seed): a
conversion of a range bound to a mapped file, or to one whose mapping is being
set up (the memslot is pending, notifiers.py), is refused with EBUSY.  The
page-granular designs convert page by page instead: to private only when no
VMA covers the page (page-mmap; while an mmap of the file is being set up,
EBUSY) or after zapping the host's page tables of the range (kvm-map), and
never while something beyond the page cache references it (EBUSY).

KVM also tells the checker (audit events) when a page turns private under a
host mapping, and in kvm-map maps shared guest memory for the host
(kvm_map_shared) at the file's canonical address.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from .. import uapi
from ..errors import kernel_error
from .core import Component
from .events import PrivateWhileMapped
from .mm import AddressSpace
from .notifiers import slot_pages
from .policies import HostMappingPromise, MapScope
from .ptes import HostPtes, first_referenced
from .restricted import alive
from .state import Inode, Mapping, Memslot, Vm

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE


class RestrictedKvm(Component):
    """What KVM checks, records and maps for memslots bound to a restricted memfd."""

    mm: AddressSpace
    ptes: HostPtes

    def connect(self, mm: AddressSpace, ptes: HostPtes) -> None:
        self.mm, self.ptes = mm, ptes

    def restricted_slots(self, kvm: Vm, first: int, last: int) -> Iterator[Memslot]:
        """The memslots over gfns [first, last) bound to a restricted memfd."""
        keys = {k for _, _, k in kvm.gfn_slots.runs(first, min(last, kvm.gfn_slots.limit))
                if k is not None}
        for key in sorted(keys):
            slot = kvm.memslots[key]
            if slot.private_file is not None and \
                    self.state.files[slot.private_file].kind == "restricted":
                yield slot

    # --- conversions (KVM_SET_MEMORY_ATTRIBUTES) ------------------------------------------------

    def conversion_check(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        """Refuse converting gfns [first, last) to attributes where a bound file forbids it."""
        if self.design.mapping.scope is MapScope.WHOLE_FILE:
            self._whole_file_check(kvm, first, last)
            return
        if not attributes & PRIVATE:
            return  # to shared needs nothing: the VMM maps the page afterwards
        for slot in self.restricted_slots(kvm, first, last):
            assert slot.private_file is not None
            inode = self.state.inodes[self.state.files[slot.private_file].inode]
            shift = slot.base_gfn - slot.private_pgoff
            lo, hi = max(first, slot.base_gfn), min(last, slot.base_gfn + slot.npages)
            changing = [(s - shift, e - shift) for s, e, a in kvm.attributes.runs(lo, hi)
                        if not a & PRIVATE]
            if not changing:
                continue
            if self.design.mapping.scope is MapScope.PAGES:
                if self.mapping_in_progress(kvm, slot, inode.ino):
                    raise kernel_error(errno.EBUSY, f"a mapping of memslot {slot.id}'s file is "
                                       "being set up")
                covered = self.covering_vma(inode, changing)
                if covered is not None:
                    raise kernel_error(errno.EBUSY, f"a VMA covers file page {covered}")
            else:
                self.zap_host(inode, changing)
            held = self.referenced(inode, changing)
            if held is not None:
                self.state.counters["refused"] += 1
                raise kernel_error(errno.EBUSY, f"file page {held} is referenced "
                                   "(get_pfn or a GUP pin)")

    def mapping_in_progress(self, kvm: Vm, slot: Memslot, ino: int) -> bool:
        """page-mmap: whether a mapping of the slot's file is being set up.  It is
        until its VMA is in place, which is after KVM's mmap_end (when the
        memslot stops being pending): the file's lock, held across the whole
        mmap, says so.  Going by mmap_pending alone left a window in which a
        page turned private just before a VMA covered it (the checker's
        counterexample to P4 and P1, scenarios/page_mmap_share.toml; the mutant
        page-convert-before-vma)."""
        return slot.key in kvm.mmap_pending or ino in self.state.file_locks

    @staticmethod
    def covering_vma(inode: Inode, changing: list[tuple[int, int]]) -> int | None:
        """page-mmap: the first file page of the runs a VMA covers, if any."""
        for s, e in changing:
            covered = inode.vma_cover.find(s, e, bool)
            if covered is not None:
                return covered
        return None

    def zap_host(self, inode: Inode, changing: list[tuple[int, int]]) -> None:
        """kvm-map: KVM zaps the host's page tables of the runs before it checks."""
        self.state.counters["host_pte_zaps"] += 1
        self.state.counters["tlb_flushes"] += 1
        for s, e in changing:
            self.ptes.zap_file(inode.ino, s, e)

    @staticmethod
    def referenced(inode: Inode, changing: list[tuple[int, int]]) -> int | None:
        """The first file page of the runs held beyond the page cache (a get_pfn
        reference or a GUP pin), if any."""
        for s, e in changing:
            held = first_referenced(inode, s, e, with_ptes=False)
            if held is not None:
                return held
        return None

    def _whole_file_check(self, kvm: Vm, first: int, last: int) -> None:
        """Conversions and mapping are mutually exclusive (KVM's rule 2)."""
        for slot in self.restricted_slots(kvm, first, last):
            assert slot.private_file is not None
            r = self.state.inodes[self.state.files[slot.private_file].inode].restricted
            assert r is not None
            # A destroyed file stays "mapped" (its close hook left has_mapping
            # set) but can never be accessed or mapped again: nothing to protect
            # (unless the design says otherwise: seed-destroyed-blocks).
            live = not r.destroyed or self.design.references.destroyed_blocks_conversions
            if live and (r.has_mapping or slot.key in kvm.mmap_pending):
                raise kernel_error(errno.EBUSY, f"memslot {slot.id} is bound to a mapped "
                                   "restricted memfd")

    # --- the promises the checker watches ------------------------------------------------------

    def audit_private(self, kvm: Vm, first: int, last: int) -> None:
        """Record file pages that became private under a host mapping: one
        covered by a VMA (whole-file and page-mmap: the VMA can fault it in) or
        by a host PTE (kvm-map), as the design's promise counts them."""
        if self.design.mapping.scope is MapScope.WHOLE_FILE:
            for slot in self.restricted_slots(kvm, first, last):
                assert slot.private_file is not None
                f = self.state.files[slot.private_file]
                if f.mapped_pages:
                    lo = max(first, slot.base_gfn)
                    self.state.audit.append(PrivateWhileMapped(f.inode,
                                                               slot.private_pgoff + lo - slot.base_gfn))
            return
        promise = self.design.promise.host_mapping
        for slot in self.restricted_slots(kvm, first, last):
            assert slot.private_file is not None
            inode = self.state.inodes[self.state.files[slot.private_file].inode]
            lo, hi = slot_pages(slot, first - slot.base_gfn + slot.private_pgoff,
                                last - slot.base_gfn + slot.private_pgoff)
            held = inode.vma_cover if promise is HostMappingPromise.NO_VMA else inode.host_ptes
            hit = held.find(lo, hi, bool)
            if hit is not None:
                self.state.audit.append(PrivateWhileMapped(inode.ino, hit))

    # --- kvm-map: KVM maps shared guest memory for the host -------------------------------------

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
        alive(inode.restricted)
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
