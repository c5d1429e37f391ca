"""The 2022 restricted memfd (designs seed and seed-as-written).

What Sean Christopherson proposed on 2022-09-19 (docs/DESIGNS.md, "The
restricted memfd, as intended"): host userspace may mmap() the restricted
memfd, but

1. only the whole file, in one mapping (offset 0, length = size, MAP_SHARED);
2. get_pfn() is refused while the file is mapped;
3. notifiers may veto the mapping: under the file's lock, mmap_start goes to
   each notifier in order; if one fails, the ones that succeeded get
   mmap_abort in reverse order and the error is returned; otherwise every
   notifier gets mmap_end;
4. the mapping cannot be split (partial munmap/mprotect/madvise) or mremap'd;
5. unmapping with references outstanding destroys the file (every later use
   fails with EIO); without, a new mapping may follow.  wait_unreferenced()
   lets userspace wait for the references to go, as restriction 5 suggests.

KVM takes part as a notifier registered by each memslot binding: it refuses
the mapping on SNP and TDX VMs (EOPNOTSUPP: no non-zero memory after the
pre-boot phase), unless every gfn of its memslot is shared (EPERM), and while
a conversion is running (EBUSY); conversely a conversion of a range bound to a
mapped file, or to one whose mapping is being set up, is refused (EBUSY).

The design's policies decide the two places where the sketch as written
differs from the text (whether has_mapping is set: MappingPolicy; whether
mmap_end reaches every notifier: NotifyPolicy), and the page-granular
designs (page-mmap, kvm-map: MappingPolicy.scope) change what the seed
restricts:

page-mmap (the fragmentation objection, pKVM's DMA pool shared page by
page): host userspace maps any page range of the file, MAP_SHARED, and may
split, merge and move the mappings.  Offset o of a file always goes to the
file's canonical address (the place its first mapping chose for offset 0,
plus o), so a page mapped again after an unmap lands in its hole and merges
with its neighbours.  KVM's notifier refuses a mapping that covers a private
gfn (EPERM).  The VMM munmaps a page before it converts it and mmaps it
after, and the address space fragments as the pool's pages come and go;
vm.max_map_count stops it (ENOMEM) exactly where the kernel would.

kvm-map (Fuad's suggestion): host userspace cannot mmap the file (ENODEV);
KVM maps shared guest ranges for it (kvm_map_shared, restricted_kvm.py) at
the same canonical address, and the mappings' faults are KVM's: a private
page raises SIGBUS.

In both, get_pfn is not refused because the file is mapped, and unmapping
with references out destroys nothing: the seed's two restrictions existed
only to keep whole-file mappings and KVM's references apart
(ReferencePolicy).  A guest's shared access to a gfn bound to the file
reaches the file's own page, as pKVM shares in place.

The notifier protocol is notifiers.py's; KVM's rules for conversions of
memslots bound to the file, restricted_kvm.py's.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

from .. import uapi
from ..errors import UsageError, kernel_error
from ..interface import FileState
from ..rangemap import RangeMap
from .core import Component
from .events import GetPfnWhileMapped
from .fileops import Backing, FileOps, beyond_size
from .gmem import GuestMemfd
from .invariants import bound_private_runs
from .mm import AddressSpace
from .notifiers import EVENTS, FALLIBLE, MmapProgress, Notifiers
from .observe import audit_stale_use
from .policies import MapScope, PrivateFile
from .state import GFN_LIMIT, Inode, Mapping, Memslot, Notifier, OpenFile, RestrictedState, Vm, total_refs

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE


def alive(r: RestrictedState) -> None:
    if r.destroyed:
        raise kernel_error(errno.EIO, "the restricted memfd was destroyed at unmap")


class RestrictedMemfd(Component):
    """The restricted memfd: the file, its mappings, and the pages KVM takes."""

    gmem: GuestMemfd
    notifiers: Notifiers
    mm: AddressSpace

    def connect(self, gmem: GuestMemfd, notifiers: Notifiers, mm: AddressSpace) -> None:
        self.gmem, self.notifiers, self.mm = gmem, notifiers, mm

    def file_ops(self) -> FileOps:
        """The restricted memfd's operations, as this design builds them: the
        page-granular designs' mappings may split and move, only page-mmap
        places them at the canonical address, only a design that destroys the
        file at unmap listens to a VMA's close, and only kvm-map's faults ask
        KVM whether a page is private."""
        m = self.design.mapping
        whole_file = m.scope is MapScope.WHOLE_FILE
        return FileOps(
            regular=True, noexec=True, mmap=self.mmap,
            get_unmapped_area=self.get_unmapped_area if m.scope is MapScope.PAGES else None,
            fallocate=self.fallocate, setsize=self.setsize, fault=self.fault,
            may_split=self.may_split if whole_file else None,
            mremap=self.mremap if whole_file else None,
            close=self.close if self.design.references.destroy_at_unmap else None,
            refuses_page=self.refuses_page if m.faults_check_private else None,
            why_sigbus=self.why_sigbus, bind=self.bind, unbind=self.unbind,
            private_backing=self.private_backing, get_pfn=self.get_pfn, put_pfn=self.put_pfn)

    # --- creation, size, allocation -----------------------------------------------------

    def memfd_restricted(self, flags: int = 0) -> int:
        if self.design.kvm.private_file is not PrivateFile.RESTRICTED:
            raise kernel_error(errno.ENOSYS, f"memfd_restricted does not exist in design "
                               f"{self.design.name}")
        if flags:
            raise kernel_error(errno.EINVAL, "memfd_restricted takes no flags")
        inode = self.core.new_inode("restricted", uapi.S_IFREG | 0o600)
        inode.restricted = RestrictedState()
        f = self.core.new_file("restricted", inode)
        f.bindings = RangeMap(None, GFN_LIMIT)
        return self.core.install(f)

    def restricted(self, fd: int) -> tuple[OpenFile, Inode, RestrictedState]:
        """The restricted memfd behind fd; EBADF or EINVAL for any other fd."""
        f = self.core.file(fd)
        inode = self.state.inodes[f.inode]
        if inode.restricted is None:
            raise kernel_error(errno.EINVAL, f"fd {fd} is a {f.kind} fd, not a restricted memfd")
        return f, inode, inode.restricted

    def setsize(self, f: OpenFile, length: int) -> None:
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        alive(inode.restricted)
        if inode.size:
            raise kernel_error(errno.EPERM, "the size of a restricted memfd is set once")
        if length & (P - 1):
            raise kernel_error(errno.EINVAL, "the size must be page-aligned")
        inode.size = length

    def fallocate(self, f: OpenFile, mode: int, offset: int, length: int) -> None:
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        assert r is not None
        alive(r)

        # invalidate_start, zap and free, invalidate_end (v9/v10 order: no
        # window in which KVM could still map a freed page); allocation
        # notifies nobody.
        def tell(event: str) -> Callable[[OpenFile, int, int], None]:
            def call(_: OpenFile, first: int, last: int) -> None:
                for n in list(r.notifiers):
                    self.notifiers.notify(inode, n, event, first, last)
            return call

        self.gmem.fallocate_range(f, mode, offset, length, tell("invalidate_start"),
                                  tell("invalidate_end"))

    # --- notifiers -------------------------------------------------------------------------

    def add_notifier(self, fd: int, name: str, fail: dict[str, Any] | None = None) -> int:
        r = self.restricted(fd)[2]
        if not name or ":" in name:
            raise UsageError("add_notifier: name must be non-empty and contain no ':'")
        if any(n.name == name for n in r.notifiers):
            raise UsageError(f"add_notifier: a notifier {name!r} is already registered")
        failures: list[tuple[str, int]] = []
        for event, value in (fail or {}).items():
            if event not in EVENTS:
                raise UsageError(f"add_notifier: unknown event {event!r} (events: {', '.join(EVENTS)})")
            if event not in FALLIBLE:
                raise UsageError(f"add_notifier: {event} returns nothing and cannot fail")
            try:
                number = uapi.errno_number(value)
            except ValueError:
                raise UsageError(f"add_notifier: {value!r} is not an errno value") from None
            if number <= 0 or (number not in errno.errorcode and number != uapi.EHWPOISON):
                raise UsageError(f"add_notifier: {value!r} is not an errno value")
            failures.append((event, number))
        r.notifiers.append(Notifier(name=name, fail=tuple(failures)))
        return 0

    def notifier_log(self, fd: int) -> list[str]:
        return list(self.restricted(fd)[2].log)

    # --- mmap: with the notifiers' consent ----------------------------------------------------

    def mmap(self, f: OpenFile, shared: bool, prot: int, pgoff: int, npages: int) -> None:
        """memfd_restricted_mmap, all of it at once: the checks, then the
        notifier protocol step by step until it is done."""
        inode = self.mmap_checks(f, shared, pgoff, npages)
        progress = MmapProgress()
        while not progress.done:
            progress = self.notifiers.mmap_protocol_step(inode, progress)
        if progress.error:
            raise kernel_error(progress.error, f"notifier {progress.refused_by} refused the mapping")

    def mmap_checks(self, f: OpenFile, shared: bool, pgoff: int, npages: int) -> Inode:
        """What the file's mmap checks before it tells the notifiers."""
        scope = self.design.mapping.scope
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        assert r is not None
        if scope is MapScope.WHOLE_FILE:
            alive(r)
            if not shared:
                raise kernel_error(errno.EINVAL, "a restricted memfd can only be mapped MAP_SHARED")
            if pgoff:
                raise kernel_error(errno.EINVAL, "a restricted memfd is mapped from offset 0")
            if npages << SHIFT != inode.size:
                raise kernel_error(errno.EINVAL,
                                   f"the whole file ({inode.size:#x} bytes) must be mapped")
            # Under the file's lock from here on.
            if r.has_mapping:
                raise kernel_error(errno.EINVAL, "the restricted memfd is already mapped")
            return inode
        if scope is MapScope.KVM_ONLY:
            raise kernel_error(errno.ENODEV, "only KVM maps this file (kvm_map_shared)")
        alive(r)
        if not shared:
            raise kernel_error(errno.EINVAL, "a restricted memfd can only be mapped MAP_SHARED")
        if pgoff + npages > inode.size >> SHIFT:
            raise kernel_error(errno.EINVAL, "the mapping reaches beyond the file size")
        r.mmap_range = (pgoff, pgoff + npages)
        return inode

    def get_unmapped_area(self, f: OpenFile, pgoff: int, npages: int, addr: int,
                          fixed: bool) -> int:
        """page-mmap: offset o goes to the file's canonical address plus o."""
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

    # --- its mappings: faults, splits, moves, closes ------------------------------------------

    def private_pages(self, f: OpenFile, first: int, last: int) -> Iterator[tuple[int, int]]:
        """Runs of file pages in [first, last) bound to a private gfn."""
        return bound_private_runs(self.state, self.state.inodes[f.inode], f, first, last)

    def fault(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        if inode.restricted.destroyed:
            return first
        served = max(first, min(last, inode.size >> SHIFT))
        if not self.design.mapping.faults_check_private:
            return served
        # kvm-map: KVM answers the fault, and refuses a private page.
        stop = next((s for s, _ in self.private_pages(f, first, served)), None)
        return served if stop is None else max(first, stop)

    def refuses_page(self, f: OpenFile, index: int) -> str | None:
        if any(True for _ in self.private_pages(f, index, index + 1)):
            return f"page {index} is private: KVM refuses the host's fault"
        return None

    def why_sigbus(self, f: OpenFile, index: int) -> str:
        inode = self.state.inodes[f.inode]
        if inode.restricted is not None and inode.restricted.destroyed:
            return "the restricted memfd was destroyed"
        return beyond_size(inode, index) or "the file cannot serve this page"

    def may_split(self, m: Mapping, vpage: int) -> None:
        raise kernel_error(errno.EINVAL, "a restricted memfd mapping cannot be split")

    def mremap(self, m: Mapping) -> None:
        raise kernel_error(errno.EINVAL, "a restricted memfd mapping cannot be mremap'd")

    def close(self, m: Mapping) -> None:
        """memfd_restricted_close: destroy the file if references are out."""
        assert m.file is not None
        inode = self.state.inodes[self.state.files[m.file].inode]
        r = inode.restricted
        assert r is not None
        if total_refs(inode):
            r.destroyed = True
            self.state.counters["files_destroyed"] += 1
        else:
            r.has_mapping = False

    # --- references ----------------------------------------------------------------------------

    def get_pfn(self, f: OpenFile, index: int) -> int:
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        assert r is not None
        alive(r)
        if index >= inode.size >> SHIFT:
            raise kernel_error(errno.EINVAL, f"page {index} is beyond the file size")
        if r.has_mapping:
            raise kernel_error(errno.EBUSY, "get_pfn is refused while the file is mapped")
        if f.mapped_pages:
            self.state.audit.append(GetPfnWhileMapped(inode.ino, index))
        audit_stale_use(self.state, inode, "get_pfn", index)
        return self.take_page(inode, index)

    def take_page(self, inode: Inode, index: int) -> int:
        """One reference on page index, allocating it (zeroed) if needed; its pfn."""
        return self.core.reference(inode, index)

    def put_pfn(self, f: OpenFile, index: int) -> int:
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        self.core.unreference(inode, index)
        return 0

    def wait_unreferenced(self, fd: int, timeout: int = 0) -> int:
        """0 once no reference is outstanding.  The model runs one actor at a
        time, so references cannot go while the caller waits: ETIMEDOUT.  (In
        the checker, this is a step that can only happen when they are gone.)"""
        _, inode, r = self.restricted(fd)
        alive(r)
        if total_refs(inode):
            raise kernel_error(errno.ETIMEDOUT, f"{total_refs(inode)} references outstanding")
        return 0

    def file_state(self, fd: int) -> FileState:
        _, inode, r = self.restricted(fd)
        mapped = sum(1 for _, _, m in self.mm.mapping_runs(0, self.state.vmas.limit)
                     if m.file is not None and self.state.files[m.file].inode == inode.ino)
        return FileState(size=inode.size, mapped=mapped, destroyed=r.destroyed,
                         refs=total_refs(inode), has_mapping=r.has_mapping)

    # --- KVM's side: binding and private accesses ----------------------------------------------

    def bind(self, kvm: Vm, slot: Memslot, f: OpenFile, offset: int) -> None:
        inode = self.state.inodes[f.inode]
        if self.design.mapping.scope is not MapScope.WHOLE_FILE:
            # Page-granular: a page some VMA covers may not back a private gfn.
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
        r = inode.restricted
        assert r is not None and f.bindings is not None
        alive(r)
        if offset > (1 << 63) - 1 or offset & (P - 1) or offset + (slot.npages << SHIFT) > inode.size:
            raise kernel_error(errno.EINVAL, "offset unaligned or range beyond the file size")
        first, last = offset >> SHIFT, (offset >> SHIFT) + slot.npages
        if not f.bindings.all_equal(first, last, None):
            raise kernel_error(errno.EINVAL, "the file range is already bound to a memslot")
        if r.has_mapping and not self.notifiers.slot_all_shared(kvm, slot):
            # The text leaves binding after mmap open; allowing it would let a
            # mapped file back private memory, which mmap_start exists to forbid.
            raise kernel_error(errno.EPERM, "the file is mapped and the memslot has private gfns")
        slot.private_file, slot.private_pgoff, slot.private_bound = f.id, first, True
        # A restricted memfd belongs to no VM: its bindings name VM and memslot.
        f.bindings.set(first, last, kvm.id << 32 | slot.key)
        f.holders += 1
        r.notifiers.append(Notifier(name=f"kvm:slot{slot.id}", vm=kvm.id, slot=slot.key))
        slot.gmem_only = self.design.mapping.shared_access_in_place

    def unbind(self, kvm: Vm, slot: Memslot) -> None:
        assert slot.private_file is not None
        f = self.state.files[slot.private_file]
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None and f.bindings is not None
        f.bindings.set(slot.private_pgoff, slot.private_pgoff + slot.npages, None)
        inode.restricted.notifiers = [n for n in inode.restricted.notifiers
                                      if not (n.vm == kvm.id and n.slot == slot.key)]
        kvm.mmap_pending.discard(slot.key)
        slot.private_file = None
        f.holders -= 1
        self.core.maybe_release(f)

    def private_backing(self, kvm: Vm, slot: Memslot, gfn: int) -> Backing:
        """KVM's fault takes the page through get_pfn and drops the reference
        once the access is done."""
        backing = self.private_backing_get(kvm, slot, gfn)
        if not isinstance(backing, int):
            assert slot.private_file is not None
            inode = self.state.inodes[self.state.files[slot.private_file].inode]
            self.core.unreference(inode, backing[1])
        return backing

    def private_backing_get(self, kvm: Vm, slot: Memslot, gfn: int) -> Backing:
        """KVM's get_pfn on the restricted memfd behind gfn: the page, with a
        reference held, or the errno get_pfn fails with."""
        assert slot.private_file is not None
        f = self.state.files[slot.private_file]
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        assert r is not None
        index = slot.private_pgoff + gfn - slot.base_gfn
        if r.destroyed:
            return errno.EIO
        if r.has_mapping:
            return errno.EBUSY  # get_pfn refused
        if f.mapped_pages:
            self.state.audit.append(GetPfnWhileMapped(inode.ino, index))
        audit_stale_use(self.state, inode, "guest access", index)
        self.take_page(inode, index)
        return inode.pages, index
