"""In-place conversion on guest_memfd: designs inplace and pkvm-inplace.

inplace follows the mainline track (the series "guest_memfd: In-place conversion support", v8 of 2026-06-18):
the guest_memfd inode keeps a shared/private attribute for every page
(``Inode.attributes``, a RangeMap as the patches' maple tree is), PRIVATE
from creation or SHARED with GUEST_MEMFD_FLAG_INIT_SHARED.  Every page may be
mmap()ed; a host fault on a private page raises SIGBUS, so a private page
never gets a host page-table entry.  KVM_SET_MEMORY_ATTRIBUTES2 on the file
(model-only op set_memory_attributes2) converts a range:

1. validation, EINVAL: flags, unsupported attribute bits, size 0 or wrapping,
   unaligned offset or size, range beyond i_size;
2. the invalidate lock, exclusive; nothing to do if the range already has
   the value;
3. to private only: unmap_mapping_pages (every host PTE of the range goes),
   then the refcount check: a page referenced beyond the page cache (a GUP
   pin, a get_pfn reference) fails the call with EAGAIN, error_offset the
   byte offset of that page, nothing changed;
4. KVM's mappings of bound memslots are zapped and the new value stored.

Contents are preserved both ways; a hole punch frees pages but leaves their
attributes; per-VM attributes are not available (vm_memory_attributes=0:
KVM_SET_MEMORY_ATTRIBUTES is ENOTTY), the guest's private/shared view of a
guest_memfd page is the file's.

pkvm-inplace follows the pKVM lineage (2.F, Fuad Tabba's v7): per page
ALL_SHARED ("shared"), GUEST_SHARED ("private") or NONE_SHARED
("none_shared": the guest unshared while the host still held references).
A conversion to private zaps nothing: pages nobody references become
private at once, the others NONE_SHARED, which neither host nor guest may
fault; when the host drops the last reference (munmap or MADV_DONTNEED of
its PTE, a hole punch's zap of it, gup_unpin, put_pfn) the page becomes
private, as the final folio_put callback does.  Converting back to shared cancels a pending
unshare.

The file itself (its attributes, the faults they refuse) is gmem.py's.
Stepwise (model/steps.py), set_memory_attributes2 is three steps under the
file's invalidate lock: validate and zap, check references, store; host
faults, GUP and get_pfn on the file wait while another actor holds the lock.
"""

from __future__ import annotations

import errno

from .. import uapi
from ..errors import ConversionError, kernel_error
from .core import Component
from .events import PrivateWhileMapped
from .gmem import ATTR_NAMES, NONE_SHARED, PRIVATE, SHARED, GuestMemfd
from .ptes import HostPtes, first_referenced, unreferenced
from .state import Inode, OpenFile

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
U64 = (1 << 64) - 1


class InPlace(Component):
    """KVM_SET_MEMORY_ATTRIBUTES2 on a guest_memfd, and unshares that wait."""

    gmem: GuestMemfd
    ptes: HostPtes

    def connect(self, gmem: GuestMemfd, ptes: HostPtes) -> None:
        self.gmem, self.ptes = gmem, ptes

    # --- KVM_SET_MEMORY_ATTRIBUTES2 -----------------------------------------------------

    def checks(self, fd: int, offset: int, size: int, attributes: int,
               flags: int) -> tuple[OpenFile, Inode, int, int]:
        """The ioctl's validation (step 1); the file, its inode and the page range."""
        f = self.core.file(fd)
        inode = self.state.inodes[f.inode]
        if f.kind != "gmem" or inode.attributes is None:
            # Not a guest_memfd ioctl here: /dev/kvm and vCPU fds answer EINVAL,
            # the rest ENOTTY (as any unknown ioctl).
            raise kernel_error(errno.EINVAL if f.kind in ("kvm", "vcpu") else errno.ENOTTY,
                               f"KVM_SET_MEMORY_ATTRIBUTES2 needs a guest_memfd of an in-place "
                               f"design (fd {fd} is a {f.kind} fd in {self.design.name})")
        kvm = self.state.vms.get(inode.vm) if inode.vm is not None else None
        if flags:
            raise kernel_error(errno.EINVAL, "flags must be 0")
        if kvm is None or not self.design.kvm.has_private_mem(kvm.type):
            raise kernel_error(errno.EINVAL, "the file's VM has no private memory")
        if attributes & ~PRIVATE:
            raise kernel_error(errno.EINVAL, f"attributes {attributes:#x} outside {PRIVATE:#x}")
        if size == 0 or offset + size > U64:
            raise kernel_error(errno.EINVAL, "size 0 or range wraps")
        if offset & (P - 1) or size & (P - 1):
            raise kernel_error(errno.EINVAL, "offset and size must be page-aligned")
        if offset + size > inode.size:
            raise kernel_error(errno.EINVAL, "range beyond the file size")
        return f, inode, offset >> SHIFT, (offset + size) >> SHIFT

    def set_memory_attributes2(self, fd: int, offset: int, size: int, attributes: int,
                               flags: int = 0) -> int:
        f, inode, first, last = self.checks(fd, offset, size, attributes, flags)
        if self.noop(inode, first, last, attributes):
            return 0
        if self.zaps(attributes):
            self.zap(inode, first, last)
            self.refcheck(inode, first, last)
        self.store(f, inode, first, last, attributes)
        return 0

    def noop(self, inode: Inode, first: int, last: int, attributes: int) -> bool:
        """Nothing to do: the range already has the value (step 2)."""
        assert inode.attributes is not None
        if attributes & PRIVATE:
            return inode.attributes.find(first, last, lambda a: a == SHARED) is None
        return inode.attributes.all_equal(first, last, SHARED)

    def zaps(self, attributes: int) -> bool:
        """Whether the conversion zaps and checks references (to private, unless deferred)."""
        return bool(attributes & PRIVATE) and not self.design.conversion.defers

    def zap(self, inode: Inode, first: int, last: int) -> None:
        """unmap_mapping_pages: no host PTE of the range survives."""
        self.state.counters["host_pte_zaps"] += 1
        self.state.counters["tlb_flushes"] += 1
        self.ptes.zap_file(inode.ino, first, last)

    def refcheck(self, inode: Inode, first: int, last: int) -> None:
        """EAGAIN, with error_offset, if a page is referenced beyond the page cache."""
        held = first_referenced(inode, first, last, with_ptes=False)
        if held is not None:
            self.state.counters["refused"] += 1
            offset = max(held, first) << SHIFT
            raise ConversionError(errno.EAGAIN, f"page {held} is referenced beyond the page cache "
                                  f"(error_offset {offset:#x})", offset)

    def store(self, f: OpenFile, inode: Inode, first: int, last: int, attributes: int) -> None:
        """KVM's mappings are zapped and the new value stored (step 4)."""
        assert inode.attributes is not None
        self.gmem.invalidate(f, first, last)
        if not attributes & PRIVATE:
            inode.attributes.set(first, last, SHARED)
            return
        if not self.design.conversion.defers:
            inode.attributes.set(first, last, PRIVATE)
        else:
            # clear_shared: free pages are private now, held ones wait.
            changing = [(s, e) for s, e, a in inode.attributes.runs(first, last) if a == SHARED]
            for s, e in changing:
                inode.attributes.set(s, e, NONE_SHARED)
                for lo, hi in self.unreferenced(inode, s, e):
                    inode.attributes.set(lo, hi, PRIVATE)
            if inode.attributes.find(first, last, lambda a: a == NONE_SHARED) is not None:
                self.state.counters["deferred"] += 1
        mapped = inode.host_ptes.find(first, last, bool)
        if mapped is not None and inode.attributes[mapped] == PRIVATE:
            self.state.audit.append(PrivateWhileMapped(inode.ino, mapped))

    def refs_dropped(self, inode: Inode, first: int, last: int) -> None:
        """References on [first, last) went away (Core.refs_dropped): the final
        folio_put of pkvm-inplace, where a pending unshare completes."""
        if inode.attributes is not None and self.design.conversion.defers:
            pending = [(s, e) for s, e, a in inode.attributes.runs(first, last) if a == NONE_SHARED]
            for s, e in pending:
                for lo, hi in self.unreferenced(inode, s, e):
                    inode.attributes.set(lo, hi, PRIVATE)

    def unreferenced(self, inode: Inode, first: int, last: int) -> list[tuple[int, int]]:
        """pkvm-inplace's refcount check: the runs of [first, last) that nobody
        beyond the page cache holds, a host PTE included (an unshare of these
        completes at once, the others wait for their final folio_put)."""
        return unreferenced(inode, first, last, with_ptes=True)

    def page_attr(self, fd: int, index: int) -> str:
        f = self.core.file(fd)
        inode = self.state.inodes[f.inode]
        if f.kind != "gmem" or inode.attributes is None:
            raise kernel_error(errno.EINVAL, f"fd {fd} has no per-page attributes in design "
                               f"{self.design.name}")
        if index >= inode.size >> SHIFT:
            raise kernel_error(errno.EINVAL, f"page {index} is beyond the file size")
        return ATTR_NAMES[inode.attributes[index]]

