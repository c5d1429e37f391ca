"""Operations as sequences of atomic steps, for exploring interleavings.

The public operations run to completion.  Where the kernel (or a proposal)
lets other threads run in the middle of one, the model also offers it as
steps, so that the checker can interleave actors at exactly the granularity
the locks allow:

* ``mmap`` of a restricted memfd holds the mm's mmap_lock for writing and,
  inside the file's mmap, the file's lock across the notifier calls.  Each
  notifier call is a step; between them any actor may run whatever neither
  lock excludes: KVM's get_pfn (the sketch takes no lock there), conversions,
  guest accesses.
* ``set_memory_attributes`` zaps KVM's mappings, then stores the new
  attributes: two steps, with the VM marked as converting in between.
  Conversions of one VM are serialised.
* A private guest access to a restricted memfd takes the page with get_pfn,
  accesses it, and puts it: three steps.  If the attribute changed in between
  (a conversion zapped the mapping), the fault is retried and now ends in a
  memory-fault exit.
* ``set_memory_attributes2`` (designs inplace, pkvm-inplace) is three steps
  under the guest_memfd's invalidate lock: validate and zap host PTEs, check
  references, store.  A host fault, GUP, get_pfn or guest access on that file
  waits while another actor holds the lock; in kvm-map a host fault waits
  while KVM converts.

Each of these has its stepper in `Steps.steppers`; everything else is one
step.  An actor's operation in progress lives in the model state
(State.pending), so snapshots capture it and the checker can hash it.
`enabled(actor)` says whether the actor's next step could run now (False
while another actor holds a lock it needs).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .. import uapi
from ..errors import MemorySignal, UsageError, kernel_error
from ..interface import GuestAccess, check_call
from ..outcome import Outcome
from ..spelling import call_arguments
from . import pages
from .core import Component
from .inplace import InPlace
from .kvm import Kvm
from .mm import AddressSpace, MmapPlan
from .notifiers import MmapProgress, Notifiers
from .restricted import RestrictedMemfd
from .state import total_refs

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
# Operations that take a guest_memfd's invalidate lock (shared) for a moment;
# dropping a reference (put_pfn, gup_unpin, munmap) takes none.
FILE_OPS = frozenset({"get_pfn", "fallocate", "set_memory_attributes2", "page_attr"})
RANGE_OPS = frozenset({"read_mem", "write_mem", "gup_pin", "madvise"})
# Operations whose host faults kvm-map's KVM answers.
FAULTING_OPS = frozenset({"read_mem", "write_mem", "gup_pin", "madvise"})
# One step of an operation: its Outcome when it is finished, else what is left.
Stepper = Callable[[str, "Pending"], "Outcome | Pending"]


@dataclass(frozen=True)
class ConvertPlan:
    """KVM_SET_MEMORY_ATTRIBUTES between its zap and its store: gfns [first, last)."""

    vm: int
    first: int
    last: int
    attributes: int


@dataclass(frozen=True)
class FileConvertPlan:
    """KVM_SET_MEMORY_ATTRIBUTES2 under the file's invalidate lock: pages [first, last)."""

    file: int
    ino: int
    first: int
    last: int
    attributes: int


@dataclass(frozen=True)
class AccessPlan:
    """A private guest access to a restricted memfd between KVM's get_pfn and put_pfn."""

    vm: int
    slot: int  # the memslot's key in the VM
    gfn: int
    index: int  # the file page get_pfn took


Plan = MmapPlan | ConvertPlan | FileConvertPlan | AccessPlan


@dataclass(frozen=True)
class Pending:
    """An operation one actor has begun and not finished."""

    op: str
    args: tuple[tuple[str, Any], ...]
    phase: str = "begin"
    plan: Plan | None = None
    # an mmap's notifier protocol so far; a private guest read's data (hex)
    progress: MmapProgress | str | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)


class Steps(Component):
    """The stepwise API the checker drives: begin, enabled, step, and the locks."""

    MM_OPS = frozenset({"mmap", "munmap", "mprotect", "madvise", "mremap", "read_mem", "write_mem"})
    # The operations that take locks (mmap: the mmap_lock and the file lock across
    # its notifier calls; set_memory_attributes2: the guest_memfd's invalidate
    # lock across its steps; the others a file lock for their one step).
    # Another operation taking a lock must be added here, or _finish keeps it.
    LOCKING_OPS = frozenset({"mmap", "munmap", "set_user_memory_region2", "set_memory_attributes2"})

    mm: AddressSpace
    kvm: Kvm
    restricted: RestrictedMemfd
    notifiers: Notifiers
    inplace: InPlace
    # Runs one operation of the kernel's interface, checked and counted as a call.
    operate: Callable[[str, dict[str, Any]], Any]

    def connect(self, mm: AddressSpace, kvm: Kvm, restricted: RestrictedMemfd,
                notifiers: Notifiers, inplace: InPlace,
                operate: Callable[[str, dict[str, Any]], Any]) -> None:
        self.mm, self.kvm, self.restricted = mm, kvm, restricted
        self.notifiers, self.inplace, self.operate = notifiers, inplace, operate
        # The operations that take several steps, and the stepper of each.
        self.steppers: dict[str, Stepper] = {
            "mmap": self.step_mmap,
            "set_memory_attributes": self.step_set_memory_attributes,
            "set_memory_attributes2": self.step_set_memory_attributes2,
            "guest_access": self.step_guest_access,
        }

    # --- the actor interface ------------------------------------------------------------

    def begin(self, actor: str, op: str, **kwargs: Any) -> None:
        """Start op for actor (validating its arguments); step() runs it."""
        if actor in self.state.pending:
            raise UsageError(f"actor {actor!r} already has {self.state.pending[actor].op} in progress")
        args = check_call(op, (), kwargs)
        self.state.pending[actor] = Pending(op=op, args=tuple(sorted(args.items())))

    def busy(self, actor: str) -> bool:
        return actor in self.state.pending

    def enabled(self, actor: str) -> bool:
        """Whether actor's next step can run now (no lock held by another actor)."""
        p = self.state.pending.get(actor)
        if p is None:
            return False
        return self._blocker(actor, p) is None

    def step(self, actor: str) -> Outcome | None:
        """Run actor's next step; its Outcome when the operation is finished."""
        p = self.state.pending[actor]
        blocker = self._blocker(actor, p)
        if blocker is not None:
            raise UsageError(f"actor {actor!r} is blocked: {blocker}")
        try:
            stepper = self.steppers.get(p.op)
            result = stepper(actor, p) if stepper is not None else self._step_atomic(actor, p)
        except OSError as exc:
            result = Outcome("errno", exc.errno)
        except MemorySignal as sig:
            result = Outcome("signal", sig.signo)
        except UsageError as exc:
            result = Outcome("usage", str(exc))
        if isinstance(result, Pending):
            self.state.pending[actor] = result
            return None
        self._finish(actor)
        return result

    def _finish(self, actor: str) -> None:
        p = self.state.pending.pop(actor, None)
        if p is not None and p.op not in self.LOCKING_OPS:
            return  # took no lock (and so looks at nobody else's)
        if self.state.mm_lock == actor:
            self.state.mm_lock = None
        for ino in [i for i, a in self.state.file_locks.items() if a == actor]:
            del self.state.file_locks[ino]

    # --- locks and waits ----------------------------------------------------------------------

    def _blocker(self, actor: str, p: Pending) -> str | None:
        st = self.state
        if p.op in self.MM_OPS and st.mm_lock not in (None, actor):
            return f"mmap_lock is held by {st.mm_lock}"
        if p.phase != "begin":
            return None
        for ino in self._file_locks_needed(p):
            if st.file_locks.get(ino, actor) != actor:
                return f"the restricted memfd's lock is held by {st.file_locks[ino]}"
        if p.op == "set_memory_attributes":
            kvm = self.core.vm_or_none(p.kwargs["vm"])
            if kvm is not None and kvm.converting:
                return "another conversion of this VM is running"
        if p.op == "wait_unreferenced":
            # DESIGNS.md: the wait is a step that can happen only once the
            # references are gone (or the file is destroyed: EIO at once).
            f = self.core.file_or_none(p.kwargs["fd"])
            inode = self.state.inodes[f.inode] if f is not None else None
            if inode is not None and inode.restricted is not None and \
                    not inode.restricted.destroyed and total_refs(inode):
                return "references are outstanding"
        reason = self._invalidate_lock(actor, p)
        if reason is None:
            reason = self._kvm_conversion(p)
        return reason

    def _invalidate_lock(self, actor: str, pending: Pending) -> str | None:
        """A host fault, GUP, get_pfn or guest access on a guest_memfd waits while
        another actor converts it in place (its invalidate lock)."""
        locked = {ino: a for ino, a in self.state.file_locks.items() if a != actor
                  and ino in self.state.inodes and self.state.inodes[ino].attributes is not None}
        if locked:
            for ino in self._gmem_inodes_touched(pending):
                if ino in locked:
                    return f"the guest_memfd's invalidate lock is held by {locked[ino]}"
        return None

    def _kvm_conversion(self, pending: Pending) -> str | None:
        """kvm-map's faults ask KVM, which holds them off while it converts
        (the mmu_invalidate sequence): a fault waits rather than fail."""
        if self.design.mapping.faults_check_private and pending.op in FAULTING_OPS \
                and any(v.converting for v in self.state.vms.values()):
            return "a host fault waits for KVM's conversion to finish"
        return None

    def _gmem_inodes_touched(self, pending: Pending) -> set[int]:
        args = pending.kwargs
        if pending.op in FILE_OPS:
            fid = self.state.fds.get(args["fd"])
            return {self.state.files[fid].inode} if fid is not None else set()
        if pending.op in RANGE_OPS:
            length = args.get("length")
            if length is None:
                length = len(args.get("data", b""))
            first = args["addr"] >> SHIFT
            last = min(first + ((length + P - 1) >> SHIFT) + 1, self.state.vmas.limit)
            return {self.state.files[m.file].inode for _, _, m in self.mm.mapping_runs(first, last)
                    if m.file is not None}
        if pending.op == "guest_access":
            fid = self.state.fds.get(args["vcpu"])
            vm_id = self.state.files[fid].vm if fid is not None else None
            kvm = self.state.vms.get(vm_id) if vm_id is not None else None
            if kvm is None:
                return set()
            gfn = args["gpa"] >> SHIFT
            key = kvm.gfn_slots[gfn] if gfn < kvm.gfn_slots.limit else None
            slot = kvm.memslots.get(key) if key is not None else None
            if slot is not None and slot.private_file in self.state.files:
                return {self.state.files[slot.private_file].inode}
        return set()

    def _file_locks_needed(self, p: Pending) -> list[int]:
        """Restricted memfds whose lock the operation's first step takes."""
        args = p.kwargs
        if p.op == "mmap":
            f = self.core.file_or_none(args["fd"])
            return [f.inode] if f is not None and f.kind == "restricted" else []
        if p.op == "munmap":
            first = args["addr"] >> SHIFT
            last = first + ((args["length"] + P - 1) >> SHIFT)
            return sorted({self.state.files[m.file].inode
                           for _, _, m in self.mm.mapping_runs(first, min(last, self.state.vmas.limit))
                           if m.file is not None and self.state.files[m.file].kind == "restricted"})
        if p.op == "set_user_memory_region2" and args["flags"] & uapi.KVM_MEM_GUEST_MEMFD:
            fd = args["guest_memfd"]
            f = self.core.file_or_none(fd - (1 << 32) if fd >= 1 << 31 else fd)
            return [f.inode] if f is not None and f.kind == "restricted" else []
        return []

    # --- one-step operations ---------------------------------------------------------------------

    def _step_atomic(self, actor: str, p: Pending) -> Outcome:
        for ino in self._file_locks_needed(p):
            self.state.file_locks[ino] = actor  # held for the step, released by _finish
        return Outcome("ret", self.operate(p.op, p.kwargs))

    # --- mmap of a restricted memfd: one step per notifier call ------------------------------------

    def step_mmap(self, actor: str, p: Pending) -> Outcome | Pending:
        args = p.kwargs
        f = self.core.file_or_none(args["fd"])
        if p.phase == "begin":
            if f is None or f.kind != "restricted" or args["flags"] & uapi.MAP_ANONYMOUS:
                return self._step_atomic(actor, p)
            self.state.mm_lock = actor
            plan: MmapPlan = self.mm.mmap_plan(**args)
            self.state.file_locks[f.inode] = actor
            inode = self.restricted.mmap_checks(f, plan.shared, plan.pgoff, plan.npages)
            return replace(p, phase="protocol", plan=plan, progress=MmapProgress())
        assert f is not None and isinstance(p.plan, MmapPlan) and isinstance(p.progress, MmapProgress)
        inode = self.state.inodes[f.inode]
        progress = self.notifiers.mmap_protocol_step(inode, p.progress)
        if not progress.done:
            return replace(p, progress=progress)
        if progress.error:
            self.mm.mmap_refused(p.plan)
            return Outcome("errno", progress.error)
        return Outcome("ret", self.mm.mmap_install(p.plan))

    # --- conversions: zap, then store ----------------------------------------------------------

    def step_set_memory_attributes(self, actor: str, p: Pending) -> Outcome | Pending:
        if p.phase == "begin":
            args = p.kwargs
            kvm = self.core.vm_of(args["vm"])
            first, last, attributes = self.kvm.attributes_checks(kvm, args["address"], args["size"],
                                                                 args["attributes"], args["flags"])
            if kvm.attributes.all_equal(first, last, attributes):
                return Outcome("ret", 0)
            kvm.converting = True
            self.state.counters["kvm_zaps"] += 1
            self.state.counters["tlb_flushes"] += 1
            return replace(p, phase="store", plan=ConvertPlan(kvm.id, first, last, attributes))
        plan = p.plan
        assert isinstance(plan, ConvertPlan)
        kvm = self.state.vms[plan.vm]
        self.kvm.store_attributes(kvm, plan.first, plan.last, plan.attributes)
        kvm.converting = False
        return Outcome("ret", 0)

    # --- in-place conversion: validate and zap, check, store, under the invalidate lock ---------

    def step_set_memory_attributes2(self, actor: str, p: Pending) -> Outcome | Pending:
        if p.phase == "begin":
            args = p.kwargs
            f, inode, first, last = self.inplace.checks(**args)
            attributes = args["attributes"]
            if self.inplace.noop(inode, first, last, attributes):
                return Outcome("ret", 0)
            self.state.file_locks[inode.ino] = actor  # released when the operation ends
            plan = FileConvertPlan(f.id, inode.ino, first, last, attributes)
            if self.inplace.zaps(attributes):
                self.inplace.zap(inode, first, last)
                return replace(p, phase="check", plan=plan)
            return replace(p, phase="store", plan=plan)
        fp = p.plan
        assert isinstance(fp, FileConvertPlan)
        inode = self.state.inodes[fp.ino]
        if p.phase == "check":
            self.inplace.refcheck(inode, fp.first, fp.last)
            return replace(p, phase="store")
        self.inplace.store(self.state.files[fp.file], inode, fp.first, fp.last, fp.attributes)
        return Outcome("ret", 0)


    # --- a private guest access to a restricted memfd: get_pfn, access, put_pfn ----------------

    def step_guest_access(self, actor: str, p: Pending) -> Outcome | Pending:
        args = p.kwargs
        if p.phase == "begin":
            target = self._restricted_private_target(args)
            if target is None:
                return self._step_atomic(actor, p)
            kvm, slot, gfn = target
            backing = self.restricted.private_backing_get(kvm, slot, gfn)
            if isinstance(backing, int):
                return Outcome("ret", self._fault_exit(gfn, True, backing))
            return replace(p, phase="access", plan=AccessPlan(kvm.id, slot.key, gfn, backing[1]))
        ap = p.plan
        assert isinstance(ap, AccessPlan)
        gfn, index = ap.gfn, ap.index
        kvm = self.state.vms[ap.vm]
        slot = kvm.memslots.get(ap.slot)
        f = self.state.files.get(slot.private_file) if slot and slot.private_file else None
        inode = self.state.inodes[f.inode] if f is not None else None
        if p.phase == "access":
            if not kvm.attributes[gfn] & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE or inode is None:
                # Converted meanwhile: the mapping was zapped and the retried
                # fault now sees a shared gfn; the reference is dropped.
                if inode is not None:
                    self.core.unreference(inode, index)
                return Outcome("ret", self._fault_exit(gfn, True, errno.EFAULT))
            offset = (index << SHIFT) | (args["gpa"] & (P - 1))
            if args["write"]:
                pages.write(inode.pages, offset, args["data"])
                data = ""
            else:
                data = pages.read(inode.pages, offset, args["length"]).hex()
            return replace(p, phase="put", progress=data)
        if inode is not None:
            self.core.unreference(inode, index)
        assert isinstance(p.progress, str)
        return Outcome("ret", GuestAccess(exit="none", data_hex=p.progress))

    def _restricted_private_target(self, args: dict[str, Any]) -> Any:
        """(vm, slot, gfn) when the access is a one-page private access to a
        restricted memfd with a matching attribute; None otherwise."""
        f = self.core.file_or_none(args["vcpu"])
        if f is None or f.kind != "vcpu":
            return None
        gpa, length = args["gpa"], args["length"]
        if length < 1 or (gpa & (P - 1)) + length > P:
            return None
        assert f.vm is not None
        kvm = self.state.vms[f.vm]
        gfn = gpa >> SHIFT
        held_private = bool(kvm.attributes[gfn] & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        # The guest's own choice where it has one (SNP, TDX), else KVM's; an
        # explicit choice KVM would not make is the atomic path's usage error.
        private = args["private"]
        if not self.design.kvm.guest_chooses_private(kvm.type) and private is None:
            private = held_private
        if not private or not held_private:
            return None
        key = kvm.gfn_slots[gfn]
        slot = kvm.memslots.get(key) if key is not None else None
        if slot is None or slot.private_file is None or \
                self.state.files[slot.private_file].kind != "restricted":
            return None
        if args["write"] and len(args["data"]) != length:
            return None
        return kvm, slot, gfn

    def _fault_exit(self, gfn: int, private: bool, err: int) -> GuestAccess:
        return GuestAccess(exit="memory_fault", gpa=gfn << SHIFT, size=P,
                           flags=uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE if private else 0,
                           errno=uapi.errno_name(err))

    # --- the same, as model-only case operations -----------------------------------------------

    def actor_begin(self, actor: str, call: str, args: dict[str, Any] | None = None) -> int:
        if call in ("actor_begin", "actor_step"):
            raise UsageError("actor_begin: an actor runs kernel operations, not actor_begin/actor_step")
        self.begin(actor, call, **call_arguments(call, args or {}))
        return 0

    def actor_step(self, actor: str) -> Any:
        if actor not in self.state.pending:
            raise UsageError(f"actor_step: actor {actor!r} has no operation in progress")
        if not self.enabled(actor):
            raise UsageError(f"actor_step: actor {actor!r} cannot run now: "
                             f"{self._blocker(actor, self.state.pending[actor])}")
        out = self.step(actor)
        if out is None:
            return "running"
        if out.kind == "errno":
            raise kernel_error(out.value, f"actor {actor}'s operation failed")
        if out.kind == "signal":
            raise MemorySignal(out.value, 0, f"actor {actor}'s access")
        if out.kind == "usage":
            raise UsageError(out.value)
        return out.value

