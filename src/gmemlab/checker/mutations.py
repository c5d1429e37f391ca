"""Deliberately broken variants of the designs, for testing the checker.

Each mutant is a realistic one-line kernel bug in one design (a forgotten
check, a wrong order, a missing zap, a missed refcount drop, a wrong state
transition): a design with one policy answer changed, or one method of one
model component, overridden in a subclass of that component (which calls the
real one for everything else, or repeats the method with the one line
changed where it cannot) and plugged into a ModelKernel through its
blueprint (ModelKernel.PARTS): no mutant copies more of the model than the
method it breaks.  The mutants come in families (FAMILIES: the seed,
page-granular sharing, in-place conversion, guest_memfd 6.18, the pKVM
hypervisor).  The checker must catch every one of them on its bundled
scenario, checked on the design it breaks, with a counterexample
(tests/test_mutations.py; `gmemlab check SCENARIO --mutant NAME` shows one).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .. import uapi
from ..errors import UsageError, kernel_error
from ..interface import GuestAccess
from ..model import ModelKernel, events
from ..model.designs import SEED, SEED_LATE_HAS_MAPPING, Design
from ..model.fileops import Backing
from ..model.gmem import GuestMemfd
from ..model.gup import Gup
from ..model.inplace import InPlace
from ..model.notifiers import NO_NONZERO_AFTER_LAUNCH, MmapProgress, Notifiers, slot_pages
from ..model.pkvm import OWNED, SHARED_OWNED, Pkvm
from ..model.policies import HasMappingAt, MappingPolicy, MmapEndTo, NotifyPolicy
from ..model.ptes import unreferenced
from ..model.restricted import RestrictedMemfd, alive
from ..model.restricted_kvm import RestrictedKvm
from ..model.state import HypPage, Inode, Mapping, Memslot, OpenFile, Vm
from ..model.steps import Pending, Steps
from ..outcome import Outcome

SHIFT = uapi.PAGE_SHIFT
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE

# --- the 2022 restricted memfd (seed) ------------------------------------------------------

# The seed with one of the sketch's two defects each (a design is a row of policies).
_NO_HAS_MAPPING = replace(SEED, mapping=MappingPolicy(has_mapping=HasMappingAt.NEVER))
_END_TO_LAST = replace(SEED, notify=NotifyPolicy(MmapEndTo.LAST_STARTED))


class _AbortForward(Notifiers):
    def mmap_protocol_step(self, inode: Inode, p: MmapProgress) -> MmapProgress:
        assert inode.restricted is not None
        notifiers = inode.restricted.notifiers
        if p.phase == "abort-forward":
            failed = next(i for i, n in enumerate(notifiers) if n.name == p.refused_by)
            if p.cursor < failed:
                self.notify(inode, notifiers[p.cursor], "mmap_abort")
                return replace(p, cursor=p.cursor + 1)
            return self.mmap_protocol_done(inode, p)
        q = super().mmap_protocol_step(inode, p)
        if p.phase == "start" and q.phase == "abort":
            return replace(q, phase="abort-forward", cursor=0)
        return q


class AbortForward(ModelKernel):
    """mmap_abort to the notifiers that succeeded in registration order, not reverse."""

    PARTS = replace(ModelKernel.PARTS, notifiers=_AbortForward)


class _AbortTheRefuser(Notifiers):
    def mmap_protocol_step(self, inode: Inode, p: MmapProgress) -> MmapProgress:
        q = super().mmap_protocol_step(inode, p)
        if p.phase == "start" and q.phase == "abort":
            return replace(q, cursor=q.cursor + 1)
        return q


class AbortTheRefuser(ModelKernel):
    """The notifier whose mmap_start failed gets mmap_abort too (an off-by-one)."""

    PARTS = replace(ModelKernel.PARTS, notifiers=_AbortTheRefuser)


class _KvmMapsPrivate(Notifiers):
    @staticmethod
    def slot_all_shared(kvm: Vm, slot: Memslot) -> bool:
        return True


class KvmMapsPrivate(ModelKernel):
    """KVM's mmap_start forgets to refuse a memslot with private gfns."""

    PARTS = replace(ModelKernel.PARTS, notifiers=_KvmMapsPrivate)


class _ConvertWhileStarting(RestrictedKvm):
    def conversion_check(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        for slot in self.restricted_slots(kvm, first, last):
            assert slot.private_file is not None
            r = self.state.inodes[self.state.files[slot.private_file].inode].restricted
            if r is not None and not r.destroyed and r.has_mapping:
                raise kernel_error(errno.EBUSY, "mapped")


class ConvertWhileStarting(ModelKernel):
    """Conversions ignore a mapping that is being set up (KVM's mmap_pending)."""

    PARTS = replace(ModelKernel.PARTS, restricted_kvm=_ConvertWhileStarting)


class _ConvertWhileMapped(RestrictedKvm):
    def conversion_check(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        for slot in self.restricted_slots(kvm, first, last):
            if slot.key in kvm.mmap_pending:
                raise kernel_error(errno.EBUSY, "mapping in progress")


class ConvertWhileMapped(ModelKernel):
    """Conversions ignore has_mapping: only a mapping being set up refuses them."""

    PARTS = replace(ModelKernel.PARTS, restricted_kvm=_ConvertWhileMapped)


class _GetPfnWhileMapped(RestrictedMemfd):
    def get_pfn(self, f: OpenFile, index: int) -> int:
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        alive(inode.restricted)
        if index >= inode.size >> 12:
            raise kernel_error(errno.EINVAL, "beyond the file")
        if f.mapped_pages:
            self.state.audit.append(events.GetPfnWhileMapped(inode.ino, index))
        return self.take_page(inode, index)


class GetPfnWhileMapped(ModelKernel):
    """get_pfn forgets restriction 2: it hands out pages of a mapped file."""

    PARTS = replace(ModelKernel.PARTS, restricted=_GetPfnWhileMapped)


class _PutPfnForgets(RestrictedMemfd):
    def put_pfn(self, f: OpenFile, index: int) -> int:
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        if inode.refs[index] == 0:
            raise kernel_error(errno.EINVAL, "no reference")
        return 0


class PutPfnForgets(ModelKernel):
    """put_pfn checks that a reference is held, and forgets to drop it."""

    PARTS = replace(ModelKernel.PARTS, restricted=_PutPfnForgets)


class _GuestAccessLeaks(Steps):
    def step_guest_access(self, actor: str, p: Pending) -> Outcome | Pending:
        if p.phase == "put":
            assert isinstance(p.progress, str)
            return Outcome("ret", GuestAccess(exit="none", data_hex=p.progress))
        return super().step_guest_access(actor, p)


class GuestAccessLeaks(ModelKernel):
    """A private guest access forgets KVM's put_pfn after the access."""

    PARTS = replace(ModelKernel.PARTS, steps=_GuestAccessLeaks)


class _DoubleReference(RestrictedMemfd):
    def take_page(self, inode: Inode, index: int) -> int:
        pfn = super().take_page(inode, index)
        inode.refs.set(index, index + 1, inode.refs[index] + 1)
        return pfn


class DoubleReference(ModelKernel):
    """get_pfn takes two references on the page."""

    PARTS = replace(ModelKernel.PARTS, restricted=_DoubleReference)


class _KvmAbortKeepsPending(Notifiers):
    def kvm_notifier(self, kvm: Vm, n: Any, event: str, first: int, last: int) -> int:
        if event == "mmap_abort":
            return 0
        return super().kvm_notifier(kvm, n, event, first, last)


class KvmAbortKeepsPending(ModelKernel):
    """KVM's notifier ignores mmap_abort: its memslot stays 'mapping in progress'."""

    PARTS = replace(ModelKernel.PARTS, notifiers=_KvmAbortKeepsPending)


class _MmapIgnoresConversion(Notifiers):
    def kvm_notifier(self, kvm: Vm, n: Any, event: str, first: int, last: int) -> int:
        if event == "mmap_start" and kvm.converting and kvm.type not in NO_NONZERO_AFTER_LAUNCH:
            if not self.slot_all_shared(kvm, kvm.memslots[n.slot]):
                return errno.EPERM
            kvm.mmap_pending.add(n.slot)
            return 0
        return super().kvm_notifier(kvm, n, event, first, last)


class MmapIgnoresConversion(ModelKernel):
    """KVM's mmap_start does not refuse while a conversion is running."""

    PARTS = replace(ModelKernel.PARTS, notifiers=_MmapIgnoresConversion)


class _MmapDropsLocks(Steps):
    def step_mmap(self, actor: str, p: Pending) -> Outcome | Pending:
        q = super().step_mmap(actor, p)
        if p.phase == "begin" and isinstance(q, Pending):
            self.state.mm_lock = None
            for ino in [i for i, a in self.state.file_locks.items() if a == actor]:
                del self.state.file_locks[ino]
        return q


class MmapDropsLocks(ModelKernel):
    """mmap lets go of the mmap_lock and the file lock while it calls the notifiers."""

    PARTS = replace(ModelKernel.PARTS, steps=_MmapDropsLocks)


class _UnmapKeepsHasMapping(RestrictedMemfd):
    def close(self, m: Mapping) -> None:
        assert m.file is not None
        r = self.state.inodes[self.state.files[m.file].inode].restricted
        assert r is not None
        had = r.has_mapping
        super().close(m)
        r.has_mapping = had


class UnmapKeepsHasMapping(ModelKernel):
    """munmap of the whole mapping forgets to clear has_mapping."""

    PARTS = replace(ModelKernel.PARTS, restricted=_UnmapKeepsHasMapping)


class _UnmapNeverDestroys(RestrictedMemfd):
    def close(self, m: Mapping) -> None:
        assert m.file is not None
        r = self.state.inodes[self.state.files[m.file].inode].restricted
        assert r is not None
        r.has_mapping = False


class UnmapNeverDestroys(ModelKernel):
    """munmap with references outstanding leaves the file alive (restriction 5 dropped)."""

    PARTS = replace(ModelKernel.PARTS, restricted=_UnmapNeverDestroys)


class _UnmapCountsGetPfnOnly(RestrictedMemfd):
    def close(self, m: Mapping) -> None:
        assert m.file is not None
        inode = self.state.inodes[self.state.files[m.file].inode]
        r = inode.restricted
        assert r is not None
        if any(n for _, _, n in inode.refs.runs()):
            r.destroyed = True
        else:
            r.has_mapping = False


class UnmapCountsGetPfnOnly(ModelKernel):
    """munmap counts get_pfn's references only: a GUP pin taken through the mapping survives it."""

    PARTS = replace(ModelKernel.PARTS, restricted=_UnmapCountsGetPfnOnly)


# --- page-granular sharing: page-mmap and kvm-map ----------------------------------------


class _PageConvertUnchecked(RestrictedKvm):
    def conversion_check(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        return None


class PageConvertUnchecked(ModelKernel):
    """KVM converts gfns bound to the file without any of its checks (no VMA, mapping or
    reference may hold the page back)."""

    PARTS = replace(ModelKernel.PARTS, restricted_kvm=_PageConvertUnchecked)


class _PageConvertIgnoresVma(RestrictedKvm):
    @staticmethod
    def covering_vma(inode: Inode, changing: list[tuple[int, int]]) -> int | None:
        return None


class PageConvertIgnoresVma(ModelKernel):
    """page-mmap: a conversion to private forgets to look for a VMA covering the page."""

    PARTS = replace(ModelKernel.PARTS, restricted_kvm=_PageConvertIgnoresVma)


class _PageConvertBeforeVma(RestrictedKvm):
    def mapping_in_progress(self, kvm: Vm, slot: Memslot, ino: int) -> bool:
        return slot.key in kvm.mmap_pending


class PageConvertBeforeVma(ModelKernel):
    """page-mmap: a conversion waits for a mapping being set up only until KVM's mmap_end,
    before the VMA is in place (the window the checker found in the model's first reading)."""

    PARTS = replace(ModelKernel.PARTS, restricted_kvm=_PageConvertBeforeVma)


class _PageConvertIgnoresPins(RestrictedKvm):
    @staticmethod
    def referenced(inode: Inode, changing: list[tuple[int, int]]) -> int | None:
        return None


class PageConvertIgnoresPins(ModelKernel):
    """A conversion to private forgets the page's references (get_pfn, GUP pins)."""

    PARTS = replace(ModelKernel.PARTS, restricted_kvm=_PageConvertIgnoresPins)


class _SharedAccessLeaks(RestrictedMemfd):
    def private_backing(self, kvm: Vm, slot: Memslot, gfn: int) -> Backing:
        return self.private_backing_get(kvm, slot, gfn)


class SharedAccessLeaks(ModelKernel):
    """A guest access KVM serves from the file (a shared page, in place) forgets to drop the
    reference its get_pfn took."""

    PARTS = replace(ModelKernel.PARTS, restricted=_SharedAccessLeaks)


class _KvmMapNoZap(RestrictedKvm):
    def zap_host(self, inode: Inode, changing: list[tuple[int, int]]) -> None:
        return None


class KvmMapNoZap(ModelKernel):
    """kvm-map: a conversion to private forgets to zap the host's page-table entries."""

    PARTS = replace(ModelKernel.PARTS, restricted_kvm=_KvmMapNoZap)


def _mmap_start_pages(self: Notifiers, kvm: Vm, n: Any, slot: Memslot, *, converting: bool,
                      private: bool) -> int:
    """Notifiers._kvm_mmap_start_pages with one of its refusals left out."""
    assert n.slot is not None and slot.private_file is not None
    r = self.state.inodes[self.state.files[slot.private_file].inode].restricted
    assert r is not None
    if kvm.type in NO_NONZERO_AFTER_LAUNCH:
        return errno.EOPNOTSUPP
    if converting and kvm.converting:
        return errno.EBUSY
    lo, hi = slot_pages(slot, *r.mmap_range)
    shift = slot.base_gfn - slot.private_pgoff
    if private and lo < hi and any(a & PRIVATE for _, _, a in kvm.attributes.runs(lo + shift, hi + shift)):
        return errno.EPERM
    kvm.mmap_pending.add(n.slot)
    return 0


class _PageMmapMapsPrivate(Notifiers):
    def _kvm_mmap_start_pages(self, kvm: Vm, n: Any, slot: Memslot) -> int:
        return _mmap_start_pages(self, kvm, n, slot, converting=True, private=False)


class PageMmapMapsPrivate(ModelKernel):
    """page-mmap: KVM's mmap_start forgets to refuse a range with a private page."""

    PARTS = replace(ModelKernel.PARTS, notifiers=_PageMmapMapsPrivate)


class _PageMmapIgnoresConversion(Notifiers):
    def _kvm_mmap_start_pages(self, kvm: Vm, n: Any, slot: Memslot) -> int:
        return _mmap_start_pages(self, kvm, n, slot, converting=False, private=True)


class PageMmapIgnoresConversion(ModelKernel):
    """page-mmap: KVM's mmap_start does not refuse while a conversion is running."""

    PARTS = replace(ModelKernel.PARTS, notifiers=_PageMmapIgnoresConversion)


class _KvmMapFaultsPrivate(RestrictedMemfd):
    def fault(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        inode = self.state.inodes[f.inode]
        assert inode.restricted is not None
        if inode.restricted.destroyed:
            return first
        return max(first, min(last, inode.size >> SHIFT))


class KvmMapFaultsPrivate(ModelKernel):
    """kvm-map: KVM's fault handler for the host's mapping forgets to refuse a private page."""

    PARTS = replace(ModelKernel.PARTS, restricted=_KvmMapFaultsPrivate)


class _FaultDuringConversion(Steps):
    def _kvm_conversion(self, pending: Pending) -> str | None:
        return None


class FaultDuringConversion(ModelKernel):
    """kvm-map: a host fault does not wait for KVM's conversion in progress (the
    mmu_invalidate retry is forgotten), so it maps a page about to turn private."""

    PARTS = replace(ModelKernel.PARTS, steps=_FaultDuringConversion)


# --- inplace and pkvm-inplace ------------------------------------------------------------


class _InPlaceNoZap(InPlace):
    def zap(self, inode: Inode, first: int, last: int) -> None:
        return None


class InPlaceNoZap(ModelKernel):
    """A conversion to private forgets unmap_mapping_pages: host PTEs survive it."""

    PARTS = replace(ModelKernel.PARTS, inplace=_InPlaceNoZap)


class _InPlaceNoRefcheck(InPlace):
    def refcheck(self, inode: Inode, first: int, last: int) -> None:
        return None


class InPlaceNoRefcheck(ModelKernel):
    """A conversion to private forgets the refcount check: a pinned page turns private."""

    PARTS = replace(ModelKernel.PARTS, inplace=_InPlaceNoRefcheck)


class _InPlaceFaultsPrivate(GuestMemfd):
    def fault(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        inode = self.state.inodes[f.inode]
        if inode.attributes is not None:
            return max(first, min(last, inode.size >> SHIFT))
        return super().fault(f, first, last, write)


class InPlaceFaultsPrivate(ModelKernel):
    """The host fault handler forgets to refuse a page the file holds private."""

    PARTS = replace(ModelKernel.PARTS, gmem=_InPlaceFaultsPrivate)


class _FaultIgnoresInvalidateLock(Steps):
    def _invalidate_lock(self, actor: str, pending: Pending) -> str | None:
        return None


class FaultIgnoresInvalidateLock(ModelKernel):
    """Host faults and GUP do not take the guest_memfd's invalidate lock, so they run in
    the middle of a conversion, after its zap."""

    PARTS = replace(ModelKernel.PARTS, steps=_FaultIgnoresInvalidateLock)


class _UnshareIgnoresReferences(InPlace):
    def unreferenced(self, inode: Inode, first: int, last: int) -> list[tuple[int, int]]:
        return [(first, last)]


class UnshareIgnoresReferences(ModelKernel):
    """pkvm-inplace: the unshare's refcount check finds every page free, so a page the host
    holds turns private at once."""

    PARTS = replace(ModelKernel.PARTS, inplace=_UnshareIgnoresReferences)


class _UnshareIgnoresPtes(InPlace):
    def unreferenced(self, inode: Inode, first: int, last: int) -> list[tuple[int, int]]:
        return unreferenced(inode, first, last, with_ptes=False)


class UnshareIgnoresPtes(ModelKernel):
    """pkvm-inplace: the unshare counts pins and get_pfn references but not the host's
    page-table entries (folio_mapped is forgotten)."""

    PARTS = replace(ModelKernel.PARTS, inplace=_UnshareIgnoresPtes)


# --- guest_memfd 6.18 --------------------------------------------------------------------


class _GmemPutForgets(GuestMemfd):
    def put_pfn(self, f: OpenFile, index: int) -> int:
        inode = self.state.inodes[f.inode]
        if index >= inode.refs.limit or inode.refs[index] == 0:
            raise kernel_error(errno.EINVAL, f"no reference is held on page {index}")
        return 0


class GmemPutForgets(ModelKernel):
    """guest_memfd's put (folio_put after kvm_gmem_get_pfn) checks the reference and keeps it."""

    PARTS = replace(ModelKernel.PARTS, gmem=_GmemPutForgets)


class _GmemDoubleReference(GuestMemfd):
    def get_pfn(self, f: OpenFile, index: int) -> int:
        pfn = super().get_pfn(f, index)
        inode = self.state.inodes[f.inode]
        inode.refs.set(index, index + 1, inode.refs[index] + 1)
        return pfn


class GmemDoubleReference(ModelKernel):
    """kvm_gmem_get_pfn takes two references on the folio (a folio_get too many)."""

    PARTS = replace(ModelKernel.PARTS, gmem=_GmemDoubleReference)


class _UnpinForgets(Gup):
    def gup_unpin(self, addr: int, length: int) -> int:
        pins = self.state.gup_pins.get((addr, length))
        if not pins:
            raise kernel_error(errno.EINVAL, f"no pin of {length:#x} bytes at {addr:#x}")
        pins.pop(0)
        if not pins:
            del self.state.gup_pins[(addr, length)]
        return 0


class UnpinForgets(ModelKernel):
    """unpin_user_pages forgets the pages' pin counts: the pins stay."""

    PARTS = replace(ModelKernel.PARTS, gup=_UnpinForgets)


# --- the pKVM hypervisor ---------------------------------------------------------------------


class _UnshareFfaUnlent(Pkvm):
    def _check_ffa_lent(self, start: int, end: int) -> None:
        pass  # forgets: the FF-A proxy must hold the page


class UnshareFfaUnlent(ModelKernel):
    """__pkvm_host_unshare_ffa checks the host's state only: it takes back a page the FF-A
    proxy never lent (one shared with the hypervisor)."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_UnshareFfaUnlent)


class _UnshareGuestUncounted(Pkvm):
    def _end_guest_share(self, pfn: int, page: HypPage) -> None:
        pass  # forgets: the share count and the host's state


class UnshareGuestUncounted(ModelKernel):
    """__pkvm_host_unshare_guest removes the guest's leaf and forgets the host's side (the
    share count and the host state)."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_UnshareGuestUncounted)


class _UnshareHypPinned(Pkvm):
    def _check_unpinned(self, start: int) -> None:
        pass  # forgets: hyp_page_count


class UnshareHypPinned(ModelKernel):
    """__pkvm_host_unshare_hyp forgets the hyp_page refcount: the host takes back a page the
    hypervisor has pinned."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_UnshareHypPinned)


class _ShareGuestWhileBorrowed(Pkvm):
    @staticmethod
    def _may_share_with_guest(page: HypPage) -> bool:
        return page.host in (OWNED, SHARED_OWNED)  # forgets: SHARED_OWNED only with guests


class ShareGuestWhileBorrowed(ModelKernel):
    """__pkvm_host_share_guest tolerates a SHARED_OWNED page without checking that its
    borrowers are non-protected guests (host_share_guest_count): the page is lent twice."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_ShareGuestWhileBorrowed)


class _PinUnshared(Pkvm):
    def _check_pinnable(self, start: int, end: int) -> None:
        self._allowed_memory(start, end)  # forgets: the host must share it with the hypervisor


class PinUnshared(ModelKernel):
    """hyp_pin_shared_mem pins a page without checking that the host shared it."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_PinUnshared)


class _DonateGuestUnowned(Pkvm):
    def _check_donatable(self, start: int, end: int) -> None:
        self._allowed_memory(start, end)  # forgets: the host must own the page


class DonateGuestUnowned(ModelKernel):
    """__pkvm_host_donate_guest forgets to check that the host owns the page: one frame is
    donated for two gfns."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_DonateGuestUnowned)


class _GuestUnshareKeepsHost(Pkvm):
    def _end_host_borrow(self, pfn: int, page: HypPage) -> None:
        pass  # forgets: the host's state goes back to NOPAGE


class GuestUnshareKeepsHost(ModelKernel):
    """The guest's MEM_UNSHARE takes the page back in the guest's stage-2 and leaves the host
    borrowing it."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_GuestUnshareKeepsHost)


class _HypDonateHostUnowned(Pkvm):
    def _check_hyp_owns(self, start: int, end: int) -> None:
        pass  # forgets: the hypervisor must own it (the host's NOPAGE is still checked)


class HypDonateHostUnowned(ModelKernel):
    """__pkvm_hyp_donate_host checks only that the host has no page there, not that the
    hypervisor owns it: the host gets a guest's page."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_HypDonateHostUnowned)


class _TeardownForgetsPages(Pkvm):
    def vm_destroyed(self, vm: Vm) -> None:
        pkvm = self.state.pkvm
        if pkvm is not None and vm.id in pkvm.guests:
            del pkvm.guests[vm.id]  # forgets: reclaim each page the guest holds


class TeardownForgetsPages(ModelKernel):
    """The VM's teardown frees its stage-2 without reclaiming the pages the guest held: they
    stay the dead guest's."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_TeardownForgetsPages)


# The families of designs the mutants break (docs/CHECKER.md, "Mutants"): a mutant's
# family is its design's, except that a broken hypervisor is pKVM's whatever runs on it.
FAMILIES: dict[str, str] = {
    "seed": "the 2022 restricted memfd (seed)",
    "page": "page-granular sharing (page-mmap, kvm-map)",
    "inplace": "in-place conversion (inplace, pkvm-inplace)",
    "gmem": "guest_memfd 6.18 (gmem-6.18)",
    "pkvm": "pKVM page ownership (the hypervisor, under any design)",
}
_FAMILY_OF_DESIGN = {"seed": "seed", "page-mmap": "page", "kvm-map": "page", "inplace": "inplace",
                     "pkvm-inplace": "inplace", "gmem-6.18": "gmem"}


@dataclass(frozen=True)
class Mutant:
    name: str
    about: str
    factory: Callable[[str], ModelKernel]
    catches: frozenset[str]  # the promises it breaks on its scenario (any of them may come first)
    scenario: str = "seed_default"  # the bundled scenario that refutes it
    design: str = "seed"  # the design it breaks (the scenario is checked on it)
    family: str = ""  # FAMILIES; "" is the design's

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", _FAMILY_OF_DESIGN[self.design])
        assert self.family in FAMILIES, self.family


def _design(d: Design) -> Callable[[str], ModelKernel]:
    return lambda _name: ModelKernel(d)


def _kernel(cls: type[ModelKernel]) -> Callable[[str], ModelKernel]:
    return cls


class _Stage2LetsHostThrough(Pkvm):
    def stage2_limit(self, inode: Inode, first: int, served: int) -> int:
        return served


class Stage2LetsHostThrough(ModelKernel):
    """The host stage-2 forgets a frame donated to a guest: the host's access goes through."""

    PARTS = replace(ModelKernel.PARTS, pkvm=_Stage2LetsHostThrough)


def _broken(name: str, cls: type[ModelKernel], catches: set[str], scenario: str, design: str,
            family: str = "") -> Mutant:
    """A mutant that plugs in a broken component (the class's docstring says what it does)."""
    return Mutant(name, cls.__doc__ or "", _kernel(cls), frozenset(catches), scenario, design, family)


MUTANTS: dict[str, Mutant] = {m.name: m for m in [
    # the 2022 restricted memfd
    Mutant("no-has-mapping", "has_mapping is never set (defect 1 alone)", _design(_NO_HAS_MAPPING),
           frozenset({"P2", "P3", "P4", "P1"})),
    Mutant("mmap-end-to-last", "mmap_end reaches the last notifier only (defect 2 alone)",
           _design(_END_TO_LAST), frozenset({"P5"})),
    Mutant("has-mapping-after-mmap-end", "has_mapping set after the mmap_end calls (the window the "
           "checker found; the design variant seed-late-has-mapping)", _design(SEED_LATE_HAS_MAPPING),
           frozenset({"P2", "P4"})),
    Mutant("abort-forward", AbortForward.__doc__ or "", _kernel(AbortForward), frozenset({"P5"})),
    Mutant("abort-the-refuser", AbortTheRefuser.__doc__ or "", _kernel(AbortTheRefuser), frozenset({"P5"})),
    Mutant("kvm-maps-private", KvmMapsPrivate.__doc__ or "", _kernel(KvmMapsPrivate), frozenset({"P2"})),
    Mutant("convert-while-starting", ConvertWhileStarting.__doc__ or "", _kernel(ConvertWhileStarting),
           frozenset({"P2", "P4"})),
    Mutant("convert-while-mapped", ConvertWhileMapped.__doc__ or "", _kernel(ConvertWhileMapped),
           frozenset({"P2", "P4"})),
    Mutant("get-pfn-while-mapped", GetPfnWhileMapped.__doc__ or "", _kernel(GetPfnWhileMapped),
           frozenset({"P2"})),
    Mutant("put-pfn-forgets", PutPfnForgets.__doc__ or "", _kernel(PutPfnForgets), frozenset({"P6"})),
    Mutant("guest-access-leaks", GuestAccessLeaks.__doc__ or "", _kernel(GuestAccessLeaks),
           frozenset({"P6"})),
    Mutant("double-reference", DoubleReference.__doc__ or "", _kernel(DoubleReference), frozenset({"P6"})),
    Mutant("kvm-abort-keeps-pending", KvmAbortKeepsPending.__doc__ or "", _kernel(KvmAbortKeepsPending),
           frozenset({"P5"})),
    Mutant("mmap-ignores-conversion", MmapIgnoresConversion.__doc__ or "", _kernel(MmapIgnoresConversion),
           frozenset({"P2", "P4"})),
    Mutant("mmap-drops-locks", MmapDropsLocks.__doc__ or "", _kernel(MmapDropsLocks),
           frozenset({"P3", "P5"})),
    Mutant("unmap-keeps-has-mapping", UnmapKeepsHasMapping.__doc__ or "", _kernel(UnmapKeepsHasMapping),
           frozenset({"P8"})),
    Mutant("unmap-never-destroys", UnmapNeverDestroys.__doc__ or "", _kernel(UnmapNeverDestroys),
           frozenset({"P9"}), "seed_stale_reference"),
    Mutant("unmap-counts-get-pfn-only", UnmapCountsGetPfnOnly.__doc__ or "", _kernel(UnmapCountsGetPfnOnly),
           frozenset({"P4"}), "seed_pinned_unmap"),
    # page-mmap and kvm-map
    _broken("page-convert-unchecked", PageConvertUnchecked, {"P4", "P1"}, "page_mmap_share", "page-mmap"),
    _broken("page-convert-ignores-vma", PageConvertIgnoresVma, {"P4", "P1"}, "page_mmap_share",
            "page-mmap"),
    _broken("page-convert-before-vma", PageConvertBeforeVma, {"P4", "P1"}, "page_mmap_share", "page-mmap"),
    _broken("page-mmap-maps-private", PageMmapMapsPrivate, {"P1"}, "page_mmap_share", "page-mmap"),
    _broken("page-mmap-ignores-conversion", PageMmapIgnoresConversion, {"P4", "P1"}, "page_mmap_share",
            "page-mmap"),
    _broken("page-convert-ignores-pins", PageConvertIgnoresPins, {"P4"}, "kvm_map_share", "kvm-map"),
    _broken("page-access-leaks", SharedAccessLeaks, {"P6"}, "kvm_map_share", "kvm-map"),
    _broken("kvm-map-no-zap", KvmMapNoZap, {"P4"}, "kvm_map_share", "kvm-map"),
    _broken("kvm-map-faults-private", KvmMapFaultsPrivate, {"P1"}, "kvm_map_share", "kvm-map"),
    _broken("kvm-map-fault-during-conversion", FaultDuringConversion, {"P4"}, "kvm_map_share", "kvm-map"),
    # inplace and pkvm-inplace
    _broken("inplace-no-zap", InPlaceNoZap, {"P4"}, "inplace_pin", "inplace"),
    _broken("inplace-no-refcheck", InPlaceNoRefcheck, {"P4"}, "inplace_pin", "inplace"),
    _broken("inplace-faults-private", InPlaceFaultsPrivate, {"P1"}, "inplace_pin", "inplace"),
    _broken("inplace-fault-ignores-lock", FaultIgnoresInvalidateLock, {"P4"}, "inplace_pin", "inplace"),
    _broken("pkvm-inplace-ignores-references", UnshareIgnoresReferences, {"P4"}, "inplace_pin",
            "pkvm-inplace"),
    _broken("pkvm-inplace-ignores-ptes", UnshareIgnoresPtes, {"P4"}, "inplace_pin", "pkvm-inplace"),
    # guest_memfd 6.18
    _broken("gmem-put-forgets", GmemPutForgets, {"P6"}, "gmem_references", "gmem-6.18"),
    _broken("gmem-double-reference", GmemDoubleReference, {"P6"}, "gmem_references", "gmem-6.18"),
    _broken("unpin-forgets", UnpinForgets, {"P6"}, "gmem_references", "gmem-6.18"),
    # the pKVM hypervisor
    _broken("pkvm-unshare-ffa-unlent", UnshareFfaUnlent, {"P7"}, "pkvm_host_share", "gmem-6.18", "pkvm"),
    _broken("pkvm-unshare-guest-uncounted", UnshareGuestUncounted, {"P7"}, "pkvm_host_share", "gmem-6.18",
            "pkvm"),
    _broken("pkvm-unshare-hyp-pinned", UnshareHypPinned, {"P7"}, "pkvm_host_share", "gmem-6.18", "pkvm"),
    _broken("pkvm-share-guest-while-borrowed", ShareGuestWhileBorrowed, {"P7"}, "pkvm_host_share",
            "gmem-6.18", "pkvm"),
    _broken("pkvm-pin-unshared", PinUnshared, {"P7"}, "pkvm_host_share", "gmem-6.18", "pkvm"),
    _broken("pkvm-donate-guest-unowned", DonateGuestUnowned, {"P7"}, "pkvm_guest_share", "pkvm-inplace",
            "pkvm"),
    _broken("pkvm-guest-unshare-keeps-host", GuestUnshareKeepsHost, {"P7"}, "pkvm_guest_share",
            "pkvm-inplace", "pkvm"),
    _broken("pkvm-hyp-donate-host-unowned", HypDonateHostUnowned, {"P7"}, "pkvm_guest_share",
            "pkvm-inplace", "pkvm"),
    _broken("pkvm-teardown-forgets-pages", TeardownForgetsPages, {"P7"}, "pkvm_guest_share",
            "pkvm-inplace", "pkvm"),
    _broken("pkvm-stage2-lets-host-through", Stage2LetsHostThrough, {"P7"}, "pkvm_host_touch",
            "pkvm-inplace", "pkvm"),
]}


def mutant(name: str) -> Mutant:
    try:
        return MUTANTS[name]
    except KeyError:
        raise UsageError(f"unknown mutant {name!r} (known: {', '.join(MUTANTS)})") from None
