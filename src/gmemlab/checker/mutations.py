"""Deliberately broken variants of the seed design, for testing the checker.

Each mutant changes one thing: a design with one policy answer changed, or
one method of one model component, overridden in a subclass of that
component (which calls the real one for everything else) and plugged into a
ModelKernel through its blueprint (ModelKernel.PARTS), so that no mutant
copies the model.  The checker must catch every one of them on the shipped
scenarios with a counterexample (tests/test_mutations.py; `gmemlab check
SCENARIO --mutant NAME` shows one).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import UsageError, kernel_error
from ..interface import GuestAccess
from ..model import ModelKernel, events
from ..model.designs import SEED, SEED_LATE_HAS_MAPPING, Design
from ..model.notifiers import NO_NONZERO_AFTER_LAUNCH, MmapProgress, Notifiers
from ..model.policies import HasMappingAt, MappingPolicy, MmapEndTo, NotifyPolicy
from ..model.restricted import RestrictedMemfd, alive
from ..model.restricted_kvm import RestrictedKvm
from ..model.state import Inode, Mapping, Memslot, OpenFile, Vm
from ..model.steps import Pending, Steps
from ..outcome import Outcome

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


@dataclass(frozen=True)
class Mutant:
    name: str
    about: str
    factory: Callable[[str], ModelKernel]
    catches: frozenset[str]  # the promises it breaks on its scenario (any of them may come first)
    scenario: str = "seed_default"  # the bundled scenario that refutes it


def _design(d: Design) -> Callable[[str], ModelKernel]:
    return lambda _name: ModelKernel(d)


def _kernel(cls: type[ModelKernel]) -> Callable[[str], ModelKernel]:
    return cls


MUTANTS: dict[str, Mutant] = {m.name: m for m in [
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
]}


def mutant(name: str) -> Mutant:
    try:
        return MUTANTS[name]
    except KeyError:
        raise UsageError(f"unknown mutant {name!r} (known: {', '.join(MUTANTS)})") from None
