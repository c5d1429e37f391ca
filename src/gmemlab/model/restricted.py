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

The design object decides the two places where the sketch as written differs
from the text: whether has_mapping is set, and whether mmap_end reaches every
notifier.  Nothing else branches on the design.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from .. import uapi
from ..errors import UsageError, kernel_error
from ..interface import FileState
from ..rangemap import RangeMap
from . import pages
from .fileops import beyond_size
from .kvm import KvmOps
from .policies import MmapEndTo
from .state import GFN_LIMIT, Inode, Mapping, Memslot, Notifier, OpenFile, RestrictedState, Vm

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
EVENTS = ("mmap_start", "mmap_end", "mmap_abort", "invalidate_start", "invalidate_end")
# Only mmap_start returns an int in the sketch; the others are void.
FALLIBLE = ("mmap_start",)
NO_NONZERO_AFTER_LAUNCH = frozenset({uapi.KVM_X86_SNP_VM, uapi.KVM_X86_TDX_VM})


@dataclass(frozen=True)
class MmapProgress:
    """Where a restricted mmap's notifier protocol stands (held by the caller
    between steps, so that the checker can interleave other work)."""

    phase: str = "start"  # start -> end, or start -> abort
    cursor: int = 0  # the next notifier to call
    error: int = 0
    refused_by: str = ""
    done: bool = False


class RestrictedOps(KvmOps):
    # --- creation, size, allocation -----------------------------------------------------

    def memfd_restricted(self, flags: int = 0) -> int:
        if self.design.kvm.private_file.value != "restricted":
            raise kernel_error(errno.ENOSYS, f"memfd_restricted does not exist in design "
                               f"{self.design.name}")
        if flags:
            raise kernel_error(errno.EINVAL, "memfd_restricted takes no flags")
        inode = self.core.new_inode("restricted", uapi.S_IFREG | 0o600)
        inode.restricted = RestrictedState()
        f = self.core.new_file("restricted", inode)
        f.bindings = RangeMap(None, GFN_LIMIT)
        return self.core.install(f)

    def _restricted(self, fd: int) -> tuple[OpenFile, Inode, RestrictedState]:
        """The restricted memfd behind fd; EBADF or EINVAL for any other fd."""
        f = self.core.file(fd)
        inode = self.state.inodes[f.inode]
        if inode.restricted is None:
            raise kernel_error(errno.EINVAL, f"fd {fd} is a {f.kind} fd, not a restricted memfd")
        return f, inode, inode.restricted

    @staticmethod
    def _alive(r: RestrictedState) -> None:
        if r.destroyed:
            raise kernel_error(errno.EIO, "the restricted memfd was destroyed at unmap")

    def _ftruncate_restricted(self, f: OpenFile, length: int) -> None:
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        self._alive(inode.restricted)
        if inode.size:
            raise kernel_error(errno.EPERM, "the size of a restricted memfd is set once")
        if length & (P - 1):
            raise kernel_error(errno.EINVAL, "the size must be page-aligned")
        inode.size = length

    def _fallocate_restricted(self, f: OpenFile, mode: int, offset: int, length: int) -> None:
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        assert r is not None
        self._alive(r)

        # invalidate_start, zap and free, invalidate_end (v9/v10 order: no
        # window in which KVM could still map a freed page); allocation
        # notifies nobody.
        def tell(event: str) -> Callable[[OpenFile, int, int], None]:
            def call(_: OpenFile, first: int, last: int) -> None:
                for n in list(r.notifiers):
                    self._notify(inode, n, event, first, last)
            return call

        self._private_fallocate(f, mode, offset, length, tell("invalidate_start"),
                                tell("invalidate_end"))

    # --- notifiers -------------------------------------------------------------------------

    def add_notifier(self, fd: int, name: str, fail: dict[str, Any] | None = None) -> int:
        r = self._restricted(fd)[2]
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
        return list(self._restricted(fd)[2].log)

    def _notify(self, inode: Inode, n: Notifier, event: str, first: int = 0, last: int = 0) -> int:
        """Deliver one event to one notifier; the errno it returns (0: fine)."""
        r = inode.restricted
        assert r is not None
        if n.vm is None:
            r.log.append(f"{n.name}:{event}")
            err = dict(n.fail).get(event, 0)
        else:
            err = self._kvm_notifier(self.state.vms[n.vm], n, event, first, last)
        # Every notifier's view of the protocol, KVM's included (whose calls the
        # log does not show): the checker's promise P5 is judged on these.
        self.state.audit.append(("notify", inode.ino, n.name, event, err))
        return err

    def _kvm_notifier(self, kvm: Vm, n: Notifier, event: str, first: int, last: int) -> int:
        """KVM's side of the protocol, for the memslot n.slot."""
        assert n.slot is not None
        slot = kvm.memslots[n.slot]
        if event == "mmap_start":
            if kvm.type in NO_NONZERO_AFTER_LAUNCH:
                return errno.EOPNOTSUPP  # no non-zero memory may enter an SNP/TDX guest
            if kvm.converting:
                return errno.EBUSY
            if not self._slot_all_shared(kvm, slot):
                return errno.EPERM
            kvm.mmap_pending.add(n.slot)
        elif event in ("mmap_end", "mmap_abort"):
            kvm.mmap_pending.discard(n.slot)
        elif event == "invalidate_start" and last > slot.private_pgoff and \
                first < slot.private_pgoff + slot.npages:
            self.state.counters["kvm_zaps"] += 1
            self.state.counters["tlb_flushes"] += 1
        return 0

    @staticmethod
    def _slot_all_shared(kvm: Vm, slot: Memslot) -> bool:
        return not any(a & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE for _, _, a in
                       kvm.attributes.runs(slot.base_gfn, slot.base_gfn + slot.npages))

    # --- mmap: the whole file, once, with the notifiers' consent ------------------------------

    def _mmap_restricted(self, f: OpenFile, shared: bool, prot: int, pgoff: int, npages: int) -> None:
        """memfd_restricted_mmap, all of it at once: the checks, then the
        notifier protocol step by step until it is done."""
        inode = self._restricted_mmap_checks(f, shared, pgoff, npages)
        progress = MmapProgress()
        while not progress.done:
            progress = self._mmap_protocol_step(inode, progress)
        if progress.error:
            raise kernel_error(progress.error, f"notifier {progress.refused_by} refused the mapping")

    def _restricted_mmap_checks(self, f: OpenFile, shared: bool, pgoff: int, npages: int) -> Inode:
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        assert r is not None
        self._alive(r)
        if not shared:
            raise kernel_error(errno.EINVAL, "a restricted memfd can only be mapped MAP_SHARED")
        if pgoff:
            raise kernel_error(errno.EINVAL, "a restricted memfd is mapped from offset 0")
        if npages << SHIFT != inode.size:
            raise kernel_error(errno.EINVAL, f"the whole file ({inode.size:#x} bytes) must be mapped")
        # Under the file's lock from here on.
        if r.has_mapping:
            raise kernel_error(errno.EINVAL, "the restricted memfd is already mapped")
        return inode

    def _mmap_protocol_step(self, inode: Inode, p: MmapProgress) -> MmapProgress:
        """One notifier call of the mmap protocol (the file lock is held)."""
        r = inode.restricted
        assert r is not None
        notifiers = r.notifiers
        if p.phase == "start":
            if p.cursor < len(notifiers):
                n = notifiers[p.cursor]
                err = self._notify(inode, n, "mmap_start")
                if err:
                    return replace(p, phase="abort", cursor=p.cursor - 1, error=err,
                                   refused_by=n.name)
                return replace(p, cursor=p.cursor + 1)
            to_all = self.design.notify.mmap_end is MmapEndTo.EVERY_NOTIFIER
            first = 0 if to_all else max(len(notifiers) - 1, 0)
            if self.design.mapping.sets_has_mapping:
                # Every notifier accepted: the mapping is committed before any of
                # them hears mmap_end.  Set after the mmap_end calls, it would leave
                # a window in which KVM no longer sees the mapping as starting and
                # the file not yet as mapped, and a conversion slips through (the
                # checker's counterexample to P2 and P4, docs/CHECKER.md).
                r.has_mapping = True
            return replace(p, phase="end", cursor=first)
        if p.phase == "abort":
            if p.cursor >= 0:
                self._notify(inode, notifiers[p.cursor], "mmap_abort")
                return replace(p, cursor=p.cursor - 1)
            return self._mmap_protocol_done(inode, p)
        if p.cursor < len(notifiers):  # phase "end"
            self._notify(inode, notifiers[p.cursor], "mmap_end")
            return replace(p, cursor=p.cursor + 1)
        return self._mmap_protocol_done(inode, p)

    def _mmap_protocol_done(self, inode: Inode, p: MmapProgress) -> MmapProgress:
        # The protocol is over (the file lock is about to go): by now every
        # notifier must have heard how its mmap_start ended (promise P5).
        self.state.audit.append(("mmap_done", inode.ino, p.error))
        return replace(p, done=True)

    def _fault_restricted(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        if inode.restricted.destroyed:
            return first
        return max(first, min(last, inode.size >> SHIFT))

    def _restricted_why_sigbus(self, f: OpenFile, index: int) -> str:
        inode = self.state.inodes[f.inode]
        if inode.restricted is not None and inode.restricted.destroyed:
            return "the restricted memfd was destroyed"
        return beyond_size(inode, index) or "the file cannot serve this page"

    def _restricted_may_split(self, m: Mapping, vpage: int) -> None:
        raise kernel_error(errno.EINVAL, "a restricted memfd mapping cannot be split")

    def _restricted_mremap(self, m: Mapping) -> None:
        raise kernel_error(errno.EINVAL, "a restricted memfd mapping cannot be mremap'd")

    def _restricted_close(self, m: Mapping) -> None:
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

    def get_pfn(self, fd: int, index: int) -> int:
        _, inode, r = self._restricted(fd)
        self._alive(r)
        if index >= inode.size >> SHIFT:
            raise kernel_error(errno.EINVAL, f"page {index} is beyond the file size")
        if r.has_mapping:
            raise kernel_error(errno.EBUSY, "get_pfn is refused while the file is mapped")
        f = self.core.file(fd)
        if f.mapped_pages:
            self.state.audit.append(("get_pfn_while_mapped", inode.ino, index))
        return self._take_page(inode, index)

    def _take_page(self, inode: Inode, index: int) -> int:
        """One reference on page index, allocating it (zeroed) if needed; its pfn."""
        self.state.counters["pages_zeroed"] += pages.allocate(inode.pages, index, index + 1)
        pfn = self.core.assign_pfn(inode, index)
        inode.refs.set(index, index + 1, inode.refs[index] + 1)
        return pfn

    def put_pfn(self, fd: int, index: int) -> int:
        _, inode, _ = self._restricted(fd)
        if index >= inode.refs.limit or inode.refs[index] == 0:
            raise kernel_error(errno.EINVAL, f"no reference is held on page {index}")
        inode.refs.set(index, index + 1, inode.refs[index] - 1)
        self._host_refs_dropped(inode, index, index + 1)
        return 0

    def wait_unreferenced(self, fd: int, timeout: int = 0) -> int:
        """0 once no reference is outstanding.  The model runs one actor at a
        time, so references cannot go while the caller waits: ETIMEDOUT.  (In
        the checker, this is a step that can only happen when they are gone.)"""
        _, inode, r = self._restricted(fd)
        self._alive(r)
        if total_refs(inode):
            raise kernel_error(errno.ETIMEDOUT, f"{total_refs(inode)} references outstanding")
        return 0

    def file_state(self, fd: int) -> FileState:
        _, inode, r = self._restricted(fd)
        mapped = sum(1 for _, _, m in self.mm.mapping_runs(0, self.state.vmas.limit)
                     if m.file is not None and self.state.files[m.file].inode == inode.ino)
        return FileState(size=inode.size, mapped=mapped, destroyed=r.destroyed,
                         refs=total_refs(inode), has_mapping=r.has_mapping)

    # --- KVM: binding, conversion, pre-boot population ----------------------------------------

    def _bind_restricted(self, kvm: Vm, slot: Memslot, f: OpenFile, offset: int) -> None:
        inode = self.state.inodes[f.inode]
        r = inode.restricted
        assert r is not None and f.bindings is not None
        self._alive(r)
        if offset > (1 << 63) - 1 or offset & (P - 1) or offset + (slot.npages << SHIFT) > inode.size:
            raise kernel_error(errno.EINVAL, "offset unaligned or range beyond the file size")
        first, last = offset >> SHIFT, (offset >> SHIFT) + slot.npages
        if not f.bindings.all_equal(first, last, None):
            raise kernel_error(errno.EINVAL, "the file range is already bound to a memslot")
        if r.has_mapping and not self._slot_all_shared(kvm, slot):
            # The text leaves binding after mmap open; allowing it would let a
            # mapped file back private memory, which mmap_start exists to forbid.
            raise kernel_error(errno.EPERM, "the file is mapped and the memslot has private gfns")
        slot.private_file, slot.private_pgoff, slot.private_bound = f.id, first, True
        # A restricted memfd belongs to no VM: its bindings name VM and memslot.
        f.bindings.set(first, last, kvm.id << 32 | slot.key)
        f.holders += 1
        r.notifiers.append(Notifier(name=f"kvm:slot{slot.id}", vm=kvm.id, slot=slot.key))

    def _unbind_restricted(self, kvm: Vm, slot: Memslot) -> None:
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

    def _conversion_check(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        """Conversions and mapping are mutually exclusive (KVM's rule 2)."""
        for slot in self._restricted_slots(kvm, first, last):
            assert slot.private_file is not None
            r = self.state.inodes[self.state.files[slot.private_file].inode].restricted
            assert r is not None
            # A destroyed file stays "mapped" (its close hook left has_mapping
            # set) but can never be accessed or mapped again: nothing to protect.
            if not r.destroyed and (r.has_mapping or slot.key in kvm.mmap_pending):
                raise kernel_error(errno.EBUSY, f"memslot {slot.id} is bound to a mapped "
                                   "restricted memfd")

    def _restricted_slots(self, kvm: Vm, first: int, last: int) -> Iterator[Memslot]:
        keys = {k for _, _, k in kvm.gfn_slots.runs(first, min(last, kvm.gfn_slots.limit))
                if k is not None}
        for key in sorted(keys):
            slot = kvm.memslots[key]
            if slot.private_file is not None and \
                    self.state.files[slot.private_file].kind == "restricted":
                yield slot

    def _private_backing(self, kvm: Vm, slot: Memslot, gfn: int) -> tuple[pages.PageStore, int] | int:
        f = self.state.files.get(slot.private_file) if slot.private_file is not None else None
        if f is None or f.kind != "restricted":
            return super()._private_backing(kvm, slot, gfn)
        # KVM's fault takes the page through get_pfn and drops the reference
        # once the access is done.
        backing = self._private_backing_get(kvm, slot, gfn)
        if not isinstance(backing, int):
            inode = self.state.inodes[f.inode]
            inode.refs.set(backing[1], backing[1] + 1, inode.refs[backing[1]] - 1)
        return backing

    def _private_backing_get(self, kvm: Vm, slot: Memslot, gfn: int) -> tuple[pages.PageStore, int] | int:
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
            self.state.audit.append(("get_pfn_while_mapped", inode.ino, index))
        self._take_page(inode, index)
        return inode.pages, index

    # --- promises the checker watches ---------------------------------------------------------

    def _audit_private(self, kvm: Vm, first: int, last: int) -> None:
        for slot in self._restricted_slots(kvm, first, last):
            assert slot.private_file is not None
            f = self.state.files[slot.private_file]
            if f.mapped_pages:
                lo = max(first, slot.base_gfn)
                self.state.audit.append(("private_while_mapped", f.inode,
                                         slot.private_pgoff + lo - slot.base_gfn))

    def populate(self, vm: int, gpa: int, data: bytes) -> int:
        kvm = self.core.vm_of(vm)
        if not self.design.kvm.has_private_mem(kvm.type):
            raise kernel_error(errno.EINVAL, "the VM has no private memory")
        if kvm.launched and kvm.type in NO_NONZERO_AFTER_LAUNCH and any(data):
            raise kernel_error(errno.EPERM, "non-zero data after launch_finish")
        pos, end = gpa, gpa + len(data)
        while pos < end:
            gfn = pos >> SHIFT
            stop = min(end, (gfn + 1) << SHIFT)
            key = kvm.gfn_slots[gfn] if gfn < kvm.gfn_slots.limit else None
            slot = kvm.memslots.get(key) if key is not None else None
            if slot is None or not slot.private_bound:
                raise kernel_error(errno.EINVAL, f"gfn {gfn:#x} is not in a private memslot")
            if not kvm.attributes[gfn] & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE:
                raise kernel_error(errno.EINVAL, f"gfn {gfn:#x} is not private")
            backing = self._private_backing(kvm, slot, gfn)
            if isinstance(backing, int):
                raise kernel_error(backing, f"gfn {gfn:#x}: its page cannot be taken")
            store, index = backing
            pages.write(store, (index << SHIFT) | (pos & (P - 1)), data[pos - gpa:stop - gpa])
            pos = stop
        return 0

    def launch_finish(self, vm: int) -> int:
        kvm = self.core.vm_of(vm)
        if not self.design.kvm.has_private_mem(kvm.type) or kvm.launched:
            raise kernel_error(errno.EINVAL, "no pre-boot phase to finish")
        kvm.launched = True
        return 0


def total_refs(inode: Inode) -> int:
    return sum((e - s) * n for s, e, n in inode.refs.runs() if n)
