"""The 2022 restricted memfd's notifiers: the mmap protocol, and KVM's notifier.

Under the file's lock, mmap_start goes to each notifier in registration
order; if one fails, the ones that succeeded get mmap_abort in reverse order
and the error is returned; otherwise the notifiers get mmap_end (every one,
or in the sketch as written only the last one: NotifyPolicy).  A hole punch
sends invalidate_start and invalidate_end.

Scripted notifiers (add_notifier) log what they hear and fail as told; KVM's,
registered by each memslot binding, refuses a mapping on SNP and TDX VMs
(EOPNOTSUPP: no non-zero memory after the pre-boot phase), while a
conversion of its VM is running (EBUSY), and unless the gfns it would expose
are shared (EPERM: the whole memslot, or in the page-granular designs the
pages being mapped).  Between mmap_start and its end the memslot is
"pending": conversions of it wait (restricted_kvm.py).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace

from .. import uapi
from .core import Component
from .events import MmapDone, Notify
from .observe import audit_stale_use
from .policies import HasMappingAt, MapScope, MmapEndTo
from .state import Inode, Memslot, Notifier, Vm

PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
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


def slot_pages(slot: Memslot, first: int, last: int) -> tuple[int, int]:
    """The part of file pages [first, last) that slot binds."""
    return max(first, slot.private_pgoff), min(last, slot.private_pgoff + slot.npages)


class Notifiers(Component):
    """Delivering the protocol's events, and KVM's answers to them."""

    # --- one event to one notifier -------------------------------------------------------------

    def notify(self, inode: Inode, n: Notifier, event: str, first: int = 0, last: int = 0) -> int:
        """Deliver one event to one notifier; the errno it returns (0: fine)."""
        r = inode.restricted
        assert r is not None
        if n.vm is None:
            r.log.append(f"{n.name}:{event}")
            err = dict(n.fail).get(event, 0)
        else:
            err = self.kvm_notifier(self.state.vms[n.vm], n, event, first, last)
        # Every notifier's view of the protocol, KVM's included (whose calls the
        # log does not show): the checker's promise P5 is judged on these.
        self.state.audit.append(Notify(inode.ino, n.name, event, err))
        return err

    def kvm_notifier(self, kvm: Vm, n: Notifier, event: str, first: int, last: int) -> int:
        """KVM's side of the protocol, for the memslot n.slot."""
        assert n.slot is not None
        slot = kvm.memslots[n.slot]
        if event == "mmap_start" and self.design.mapping.scope is not MapScope.WHOLE_FILE:
            return self._kvm_mmap_start_pages(kvm, n, slot)
        if event == "mmap_start":
            if kvm.type in NO_NONZERO_AFTER_LAUNCH:
                return errno.EOPNOTSUPP  # no non-zero memory may enter an SNP/TDX guest
            if kvm.converting:
                return errno.EBUSY
            if not self.slot_all_shared(kvm, slot):
                return errno.EPERM
            kvm.mmap_pending.add(n.slot)
        elif event in ("mmap_end", "mmap_abort"):
            kvm.mmap_pending.discard(n.slot)
        elif event == "invalidate_start" and last > slot.private_pgoff and \
                first < slot.private_pgoff + slot.npages:
            self.state.counters["kvm_zaps"] += 1
            self.state.counters["tlb_flushes"] += 1
        return 0

    def _kvm_mmap_start_pages(self, kvm: Vm, n: Notifier, slot: Memslot) -> int:
        """mmap_start in the page-granular designs: only the pages being mapped
        must be shared."""
        assert n.slot is not None and slot.private_file is not None
        r = self.state.inodes[self.state.files[slot.private_file].inode].restricted
        assert r is not None
        if kvm.type in NO_NONZERO_AFTER_LAUNCH:
            return errno.EOPNOTSUPP
        if kvm.converting:
            return errno.EBUSY
        lo, hi = slot_pages(slot, *r.mmap_range)
        shift = slot.base_gfn - slot.private_pgoff
        if lo < hi and any(a & PRIVATE for _, _, a in kvm.attributes.runs(lo + shift, hi + shift)):
            return errno.EPERM
        kvm.mmap_pending.add(n.slot)
        return 0

    @staticmethod
    def slot_all_shared(kvm: Vm, slot: Memslot) -> bool:
        """Whether no gfn of the memslot is private (a whole-file mapping would expose them)."""
        return not any(a & PRIVATE for _, _, a in
                       kvm.attributes.runs(slot.base_gfn, slot.base_gfn + slot.npages))

    # --- the mmap protocol, one notifier call at a time -----------------------------------------

    def mmap_protocol_step(self, inode: Inode, p: MmapProgress) -> MmapProgress:
        """One notifier call of the mmap protocol (the file lock is held)."""
        r = inode.restricted
        assert r is not None
        notifiers = r.notifiers
        if p.phase == "start":
            if p.cursor < len(notifiers):
                n = notifiers[p.cursor]
                err = self.notify(inode, n, "mmap_start")
                if err:
                    return replace(p, phase="abort", cursor=p.cursor - 1, error=err,
                                   refused_by=n.name)
                return replace(p, cursor=p.cursor + 1)
            to_all = self.design.notify.mmap_end is MmapEndTo.EVERY_NOTIFIER
            first = 0 if to_all else max(len(notifiers) - 1, 0)
            if self.design.mapping.has_mapping is HasMappingAt.ACCEPTED:
                # Every notifier accepted: the mapping is committed before any of
                # them hears mmap_end.  Set after the mmap_end calls (the variant
                # seed-late-has-mapping), it leaves a window in which KVM no longer
                # sees the mapping as starting and the file not yet as mapped, and
                # a conversion slips through (the checker's counterexample to P2
                # and P4, docs/DESIGNS.md).
                r.has_mapping = True
            return replace(p, phase="end", cursor=first)
        if p.phase == "abort":
            if p.cursor >= 0:
                self.notify(inode, notifiers[p.cursor], "mmap_abort")
                return replace(p, cursor=p.cursor - 1)
            return self.mmap_protocol_done(inode, p)
        if p.cursor < len(notifiers):  # phase "end"
            self.notify(inode, notifiers[p.cursor], "mmap_end")
            return replace(p, cursor=p.cursor + 1)
        return self.mmap_protocol_done(inode, p)

    def mmap_protocol_done(self, inode: Inode, p: MmapProgress) -> MmapProgress:
        # The protocol is over (the file lock is about to go): by now every
        # notifier must have heard how its mmap_start ended (promise P5).
        r = inode.restricted
        assert r is not None
        if p.phase == "end" and self.design.mapping.has_mapping is HasMappingAt.AFTER_END:
            r.has_mapping = True
        self.state.audit.append(MmapDone(inode.ino, p.error))
        if not p.error:
            audit_stale_use(self.state, inode, "mmap")
        return replace(p, done=True)
