"""guest_memfd: creation, fallocate, mmap, faults, binding, get_pfn and release.

Follows virt/kvm/guest_memfd.c: the inode owns the memory (a page store),
the file owns the bindings (file page index -> memslot), binding takes no
file reference, and release clears every binding's file pointer instead of
deleting the memslot.

kvm_gmem_get_pfn is offered as the model-only get_pfn and put_pfn (the names
the 2022 restricted memfd gave them), so that a pKVM case can donate a
guest_memfd page to a guest whatever the design.  The reference it takes is
one beyond the page cache: the in-place designs count it when they decide
whether a page may become private.

In the in-place designs the inode keeps each page's shared/private state
(Inode.attributes, set up here at creation); a host fault on a page the file
holds private raises SIGBUS.  Converting pages is inplace.py's.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Any

from .. import uapi
from ..errors import kernel_error
from ..rangemap import RangeMap
from . import pages
from .core import Component
from .fileops import Backing, FileOps, beyond_size
from .pages import PAGE_INDEX_LIMIT
from .policies import PrivateFile
from .ptes import HostPtes
from .state import GFN_LIMIT, Memslot, OpenFile, Vm

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
LOFF_MAX = (1 << 63) - 1
# The in-place designs' shared/private state of a file page (Inode.attributes).
SHARED = 0
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
# Model-only: an unshare waiting for the host's last reference (NONE_SHARED).
NONE_SHARED = PRIVATE | 1 << 32
ATTR_NAMES = {SHARED: "shared", PRIVATE: "private", NONE_SHARED: "none_shared"}

# What punching a hole tells KVM about file pages [first, last), before and after.
Invalidate = Callable[[OpenFile, int, int], Any]


class GuestMemfd(Component):
    """The guest_memfd file and what KVM asks of it."""

    ptes: HostPtes

    def connect(self, ptes: HostPtes) -> None:
        self.ptes = ptes

    def file_ops(self) -> FileOps:
        """kvm_gmem_fops and kvm_gmem_vm_ops, and KVM's kvm_gmem_* calls."""
        return FileOps(regular=True, noexec=True, mmap=self.mmap, fallocate=self.fallocate,
                       release=self.release, fault=self.fault, refuses_page=self.refuses_page,
                       why_sigbus=self.why_sigbus, bind=self.bind, unbind=self.unbind,
                       private_backing=self.private_backing, get_pfn=self.get_pfn,
                       put_pfn=self.put_pfn)

    def create_guest_memfd(self, vm: int, size: int, flags: int = 0,
                           reserved: Sequence[int] = ()) -> int:
        # kvm_gmem_create; reserved[] is not checked by the kernel.
        kvm = self.core.vm_of(vm)
        if self.design.kvm.private_file is not PrivateFile.GUEST_MEMFD:
            raise kernel_error(errno.ENOTTY, f"KVM_CREATE_GUEST_MEMFD does not exist in design "
                               f"{self.design.name}")
        if flags & ~self.design.gmem_flags(kvm.type):
            raise kernel_error(errno.EINVAL, f"flags {flags:#x} outside the supported "
                               f"{self.design.gmem_flags(kvm.type):#x}")
        if size > LOFF_MAX or size == 0 or size & (P - 1):
            raise kernel_error(errno.EINVAL, "size must be positive and page-aligned")
        inode = self.core.new_inode("gmem", uapi.S_IFREG | 0o600, size=size)
        inode.flags = flags
        inode.vm = kvm.id
        if self.design.conversion.in_place:
            start = SHARED if inode.flags & uapi.GUEST_MEMFD_FLAG_INIT_SHARED else PRIVATE
            inode.attributes = RangeMap(start, PAGE_INDEX_LIMIT)
        f = self.core.new_file("gmem", inode, vm=kvm)
        f.bindings = RangeMap(None, GFN_LIMIT)
        return self.core.install(f)

    # --- fallocate ----------------------------------------------------------------

    def fallocate(self, f: OpenFile, mode: int, offset: int, length: int) -> None:
        self.fallocate_range(f, mode, offset, length, self.invalidate)

    def fallocate_range(self, f: OpenFile, mode: int, offset: int, length: int,
                        invalidate: Invalidate, invalidated: Invalidate | None = None) -> None:
        """kvm_gmem_fallocate, which the 2022 restricted memfd shares: KEEP_SIZE
        only, page-aligned, allocation within the size, punching anywhere.
        A punch calls invalidate before the pages go and invalidated after."""
        if not mode & uapi.FALLOC_FL_KEEP_SIZE:
            raise kernel_error(errno.EOPNOTSUPP, "needs FALLOC_FL_KEEP_SIZE")
        if mode & ~(uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE):
            raise kernel_error(errno.EOPNOTSUPP, "only KEEP_SIZE|PUNCH_HOLE")
        if offset & (P - 1) or length & (P - 1):
            raise kernel_error(errno.EINVAL, "offset and length must be page-aligned")
        inode = self.state.inodes[f.inode]
        first, last = offset >> SHIFT, (offset + length) >> SHIFT
        if mode & uapi.FALLOC_FL_PUNCH_HOLE:
            # No size check: punching at or beyond EOF succeeds.
            invalidate(f, first, last)
            self.state.counters["host_pte_zaps"] += 1
            self.ptes.zap_file(inode.ino, first, last)
            self.state.counters["pages_freed"] += pages.punch(inode.pages, first, last)
            self.core.free_pfns(inode, first, last)
            if invalidated is not None:
                invalidated(f, first, last)
            return
        if offset + length > inode.size:
            raise kernel_error(errno.EINVAL, "allocation beyond the file size")
        self.state.counters["pages_allocated"] += pages.allocate(inode.pages, first, last)

    def invalidate(self, f: OpenFile, first: int, last: int) -> None:
        """kvm_gmem_invalidate_begin/end: zap KVM mappings of bound slots."""
        assert f.bindings is not None
        if any(key is not None for _, _, key in f.bindings.runs(first, last)):
            self.state.counters["kvm_zaps"] += 1
            self.state.counters["tlb_flushes"] += 1

    # --- mmap and faults ----------------------------------------------------------------

    def mmap(self, f: OpenFile, shared: bool, prot: int, pgoff: int, npages: int) -> None:
        if not self.design.kvm.gmem_mmap:
            raise kernel_error(errno.ENODEV, "this guest_memfd has no mmap operation")
        inode = self.state.inodes[f.inode]
        if not inode.flags & uapi.GUEST_MEMFD_FLAG_MMAP:
            raise kernel_error(errno.ENODEV, "guest_memfd created without GUEST_MEMFD_FLAG_MMAP")
        if not shared:
            raise kernel_error(errno.EINVAL, "guest_memfd mappings must be MAP_SHARED")

    def fault(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        # kvm_gmem_fault_user_mapping
        inode = self.state.inodes[f.inode]
        if inode.attributes is not None:
            # In place: every page may be mapped, a page the file holds private
            # raises SIGBUS.
            last = max(first, min(last, inode.size >> SHIFT))
            hit = inode.attributes.find(first, last, lambda a: a != SHARED)
            return last if hit is None else hit
        if not inode.flags & uapi.GUEST_MEMFD_FLAG_INIT_SHARED:
            return first
        return max(first, min(last, inode.size >> SHIFT))

    def refuses_page(self, f: OpenFile, index: int) -> str | None:
        inode = self.state.inodes[f.inode]
        if inode.attributes is not None and index < inode.size >> SHIFT \
                and inode.attributes[index] != SHARED:
            return (f"guest_memfd page {index} is {ATTR_NAMES[inode.attributes[index]]}: "
                    "host faults on it raise SIGBUS")
        return None

    def why_sigbus(self, f: OpenFile, index: int) -> str:
        return beyond_size(self.state.inodes[f.inode], index) or \
            "guest_memfd without GUEST_MEMFD_FLAG_INIT_SHARED refuses host faults"

    # --- KVM's side: binding, private accesses, get_pfn ---------------------------------------

    def bind(self, kvm: Vm, slot: Memslot, f: OpenFile, offset: int) -> None:
        """kvm_gmem_bind, errno in order."""
        if f.vm != kvm.id:
            raise kernel_error(errno.EINVAL, "the guest_memfd belongs to another VM")
        inode = self.state.inodes[f.inode]
        if offset > LOFF_MAX or offset & (P - 1) or offset + (slot.npages << SHIFT) > inode.size:
            raise kernel_error(errno.EINVAL, "offset unaligned or range beyond the file size")
        first = offset >> SHIFT
        last = first + slot.npages
        assert f.bindings is not None
        if not f.bindings.all_equal(first, last, None):
            raise kernel_error(errno.EINVAL, "the file range is already bound to a memslot")
        slot.private_file = f.id
        slot.private_pgoff = first
        slot.gmem_only = self.design.kvm.gmem_only_slots and bool(
            inode.flags & uapi.GUEST_MEMFD_FLAG_MMAP)
        f.bindings.set(first, last, slot.key)

    def unbind(self, kvm: Vm, slot: Memslot) -> None:
        assert slot.private_file is not None
        f = self.state.files[slot.private_file]
        if f.bindings is not None:
            f.bindings.set(slot.private_pgoff, slot.private_pgoff + slot.npages, None)
        slot.private_file = None

    def private_backing(self, kvm: Vm, slot: Memslot, gfn: int) -> Backing:
        """kvm_gmem_get_pfn for a guest access: the page, allocated if need be."""
        assert slot.private_file is not None
        f = self.state.files[slot.private_file]
        index = slot.private_pgoff + gfn - slot.base_gfn
        store = self.state.inodes[f.inode].pages
        self.state.counters["pages_zeroed"] += pages.allocate(store, index, index + 1)
        return store, index

    def get_pfn(self, f: OpenFile, index: int) -> int:
        inode = self.state.inodes[f.inode]
        if index >= inode.size >> SHIFT:
            raise kernel_error(errno.EINVAL, f"page {index} is beyond the file size")
        return self.core.reference(inode, index)

    def put_pfn(self, f: OpenFile, index: int) -> int:
        self.core.unreference(self.state.inodes[f.inode], index)
        return 0

    def release(self, f: OpenFile) -> None:
        """kvm_gmem_release: bindings lose their file; slots stay."""
        assert f.vm is not None and f.bindings is not None
        kvm = self.state.vms[f.vm]
        keys = {key for _, _, key in f.bindings.runs() if key is not None}
        for key in keys:
            kvm.memslots[key].private_file = None
        if keys:
            self.state.counters["kvm_zaps"] += 1
            self.state.counters["tlb_flushes"] += 1
        f.bindings = None
