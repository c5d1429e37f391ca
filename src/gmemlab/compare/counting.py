"""Counting: a workload run under one design of the model, event by event.

`count(resolved, design)` finds the design's host side (the first of
hostsides.HOST_SIDES that passes a small semantic trial), runs the workload's
steps through it on a `ModelKernel`, and records every kernel call with the
model's cost counters before and after it (`ModelKernel.costs()`), so each
event is attributed to the call and the guest request that caused it.  The
calls are kept as a trace: validation.py replays them on the running kernel.

Everything the runner keeps per page is a RangeMap (shared granules, pages the
host has populated), and every step issues one request per granule it
converts, so the cost of counting is the number of operations, not the size
of guest memory: a 1 TiB guest costs what a 1 GiB one does.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import uapi
from ..errors import MemorySignal, UsageError
from ..guestaccess import guest_chooses_private
from ..interface import Costs
from ..model import ModelKernel
from ..rangemap import RangeMap
from . import hostsides
from .hostsides import HOST_SIDES, HostSide, P, Refused, Unsupported
from .workloads import Guest, Plan, Resolved

COPY_CHUNK = 1 << 20  # the host copies a snapshot in chunks of this size
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
COST_FIELDS = tuple(k for k in Costs.__dataclass_fields__ if k != "vma_count")
# Costs fields that become cost events, and the event each becomes.
DELTA_EVENTS = {"vma_splits": "vma_split", "vma_merges": "vma_merge", "kvm_zaps": "kvm_zap",
                "tlb_flushes": "tlb_shootdown", "hypercalls": "hypercall",
                "stage2_updates": "stage2_update", "pages_zeroed": "page_alloc",
                "pages_allocated": "falloc_page", "pages_freed": "free_page",
                "host_pte_zaps": "host_zap"}
# Operations whose own cost includes the host PTE zap the model counts for them.
ZAPPING_OPS = frozenset({"munmap", "madvise", "fallocate", "mremap", "close"})
SETUP_OPS = {"create_vm": "create_vm", "create_vcpu": "ioctl", "check_extension": "ioctl",
             "enable_cap": "ioctl", "create_guest_memfd": "gmem_create",
             "memfd_create": "syscall", "memfd_restricted": "syscall", "ftruncate": "syscall",
             "close": "syscall", "dup": "syscall"}
QUERY_OPS = frozenset({"page_attr", "costs", "vma_count", "file_state", "observe", "fstat",
                       "pkvm_page", "pkvm_page_state", "set_max_map_count",
                       "guest_access", "read_mem", "write_mem", "notifier_log", "audit_log"})
# What the host replay (validation.py) carries out for real, per operation.
RUNNABLE: dict[str, frozenset[str]] = {
    "mmap": frozenset({"mmap", "vma_split", "vma_merge"}),
    "munmap": frozenset({"munmap", "vma_split", "vma_merge"}),
    "madvise": frozenset({"madvise", "page_alloc", "vma_split", "vma_merge"}),
    "fallocate": frozenset({"fallocate:alloc", "fallocate:punch", "falloc_page", "free_page"}),
    "set_user_memory_region2": frozenset({"memslot"}),
    "kvm_map_shared": frozenset({"mmap", "vma_merge"}),
    "set_memory_attributes": frozenset({"host_zap"}),
    "set_memory_attributes2": frozenset({"host_zap"}),
    "memfd_create": frozenset({"syscall"}), "memfd_restricted": frozenset({"syscall"}),
    "ftruncate": frozenset({"syscall"}),
    "create_vm": frozenset({"create_vm"}),
}
WORKLOAD_EVENTS = frozenset({"exit", "host_fault", "populated_zap", "copy", "copy_byte"})


def op_events(op: str, args: tuple[Any, ...], delta: dict[str, int]) -> Counter[str]:
    """The cost events one kernel call stands for (its own, and what the model counted)."""
    events: Counter[str] = Counter()
    if op in ("mmap", "munmap", "set_user_memory_region2", "set_user_memory_region"):
        events["memslot" if op.startswith("set_user") else op] += 1
    elif op == "madvise":
        advice = args[2]
        if advice not in (hostsides.MADV_POPULATE_READ, hostsides.MADV_POPULATE_WRITE):
            events["madvise"] += 1
    elif op == "fallocate":
        events["fallocate:punch" if args[1] & uapi.FALLOC_FL_PUNCH_HOLE else "fallocate:alloc"] += 1
    elif op == "kvm_map_shared":
        events["ioctl"] += 1
        if delta.get("vma_merges") or delta.get("_vmas"):
            events["mmap"] += 1
    elif op in ("set_memory_attributes", "set_memory_attributes2"):
        events["ioctl"] += 1
    elif op in SETUP_OPS:
        events[SETUP_OPS[op]] += 1
    for name, event in DELTA_EVENTS.items():
        n = delta.get(name, 0)
        if n and not (name == "host_pte_zaps" and op in ZAPPING_OPS):
            events[event] += n
    return events


@dataclass(slots=True)
class Call:
    """One kernel call as the runner made it, and what the model counted for it."""

    op: str
    args: tuple[Any, ...]
    result: Any
    error: str | None  # errno or signal name
    delta: dict[str, int]
    events: Counter[str]
    request: int  # index into DesignRun.requests, -1 for setup


@dataclass(slots=True)
class Request:
    """One thing the guest asked for (an exit) or the host did on its own."""

    kind: str  # share, unshare, io, discard, allocate, snapshot
    step: int
    first: int  # guest page
    npages: int
    guest: bool  # an exit: the guest asked
    nbytes: int = 0  # bytes the host copies for it
    refused: str | None = None


@dataclass
class StepResult:
    name: str
    kind: str
    requests: int = 0
    conversions: int = 0
    events: Counter[str] = field(default_factory=Counter)
    runnable: Counter[str] = field(default_factory=Counter)
    costs: Costs = field(default_factory=Costs)
    refusals: Counter[str] = field(default_factory=Counter)
    limits: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None  # the limit that ended the step early
    readable_pages: int = 0  # snapshot: pages the host read
    private_pages: int = 0  # snapshot: pages it could not (private)
    leaked_pages: int = 0  # snapshot: private pages the host could read (a broken promise)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["costs"] = self.costs.as_table()
        for key in ("events", "runnable", "refusals", "limits"):
            out[key] = dict(sorted(getattr(self, key).items()))
        return out


@dataclass
class DesignRun:
    """A workload under one design: how it was served, what it cost, what stopped it."""

    design: str
    host_side: str | None
    reason: str | None = None  # why the design cannot express the workload
    tried: list[tuple[str, str]] = field(default_factory=list)  # (host side, why it failed)
    setup: StepResult = field(default_factory=lambda: StepResult("setup", "setup"))
    steps: list[StepResult] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    vma_samples: list[tuple[int, int]] = field(default_factory=list)  # (shared fragments, VMAs)
    max_vmas: int = 0
    max_fragments: int = 0
    memslots: int = 0
    seconds: float = 0.0

    @property
    def ran(self) -> bool:
        return self.reason is None

    def total(self, which: str = "events") -> Counter[str]:
        out: Counter[str] = Counter()
        for step in self.steps:
            out.update(getattr(step, which))
        return out

    @property
    def conversions(self) -> int:
        return sum(s.conversions for s in self.steps)

    def limits(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for step in [self.setup, *self.steps]:
            out.update(step.limits)
        return out

    def refusals(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for step in [self.setup, *self.steps]:
            out.update(step.refusals)
        return out


class Recorder:
    """A ModelKernel seen through its public interface, every call recorded."""

    def __init__(self, k: ModelKernel, keep: bool) -> None:
        self._k = k
        self._keep = keep
        self.calls: list[Call] = []
        self.request = -1
        self.step: StepResult | None = None
        self.vmas = 0
        self.gmem: set[int] = set()  # fds of guest_memfds: their page work is costed apart
        self.last = k.costs()  # the counters after the last call

    def __getattr__(self, op: str) -> Callable[..., Any]:
        fn = getattr(self._k, op)

        def call(*args: Any) -> Any:
            return self._call(op, fn, args)

        return call

    def resync(self) -> Costs:
        """Take the counters as they are now (after calls made around the recorder)."""
        self.last = self._k.costs()
        return self.last

    def _call(self, op: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        k = self._k
        before = self.last
        error: str | None = None
        result: Any = None
        try:
            result = fn(*args)
        except OSError as exc:
            error = uapi.errno_name(exc.errno or 0)
            raise
        except MemorySignal as sig:
            error = sig.signal_name
            raise
        finally:
            after = self.last = k.costs()
            delta = {f: getattr(after, f) - getattr(before, f) for f in COST_FIELDS
                     if getattr(after, f) != getattr(before, f)}
            if after.vma_count != self.vmas:
                delta["_vmas"] = after.vma_count - self.vmas
                self.vmas = after.vma_count
            events = Counter() if op in QUERY_OPS else op_events(op, args, delta)
            if op == "create_guest_memfd" and error is None:
                self.gmem.add(result)
            elif op == "fallocate" and args[0] in self.gmem:
                events = Counter({f"{e}@gmem" if e.startswith(("fallocate", "falloc_page",
                                                                "free_page")) else e: n
                                  for e, n in events.items()})
            if self.step is not None:
                self.step.events.update(events)
                allowed = RUNNABLE.get(op, frozenset())
                self.step.runnable.update({e: n for e, n in events.items()
                                           if e.partition("@")[0] in allowed})
            if self._keep:
                self.calls.append(Call(op, args, result, error, delta, events, self.request))
        return result


def trial(design: str, guest: Guest, side: type[HostSide], unit: int = P) -> str | None:
    """Why `side` cannot serve `guest` under `design`, or None when it can.

    A small guest (64 pages) shares two pages, exchanges bytes with the host
    through them, and takes one back: the host must reach the shared page
    (the guest's own bytes, where the guest needs sharing in place), the
    guest must see what the host wrote, and after the unshare the host must
    not read what the guest then writes privately.
    """
    pages = 64
    k = ModelKernel(design)
    try:
        host = side(k, guest.vm_type, pages * P, unit)
        try:
            host.setup()
        except Unsupported as exc:
            return str(exc)
        cpu = k.create_vcpu(host.vm, 0)
        upages = unit // P
        a, b = 2 * upages, 3 * upages  # two granules, the first one given back
        mark, answer, secret = b"gmem", b"host", b"priv"
        if guest.name == "pkvm":
            for page in range(a, b + upages):
                fd, index = host.private_file(page)
                pfn = k.get_pfn(fd, index)
                k.pkvm_host_donate_guest(pfn, host.gpa(page) // P, host.vm)
                k.put_pfn(fd, index)
        wrote = k.guest_access(cpu, host.gpa(a), 4, write=True, private=_privately(guest.vm_type),
                               data=mark)
        if wrote.exit != "none":
            # Say why in the design's words where sharing itself fails too.
            try:
                host.share(a, upages)
            except Refused as exc:
                return f"share: {exc}"
            return f"the guest cannot write its private memory ({wrote.exit})"
        for first in (a, b):
            if guest.name == "pkvm":
                for page in range(first, first + upages):
                    k.pkvm_guest_share_host(host.vm, host.gpa(page) // P)
            try:
                host.share(first, upages)
            except Refused as exc:
                return f"share: {exc}"
        addr = host.host_address(a)
        if addr is None:
            return "the host has no mapping of the shared page"
        try:
            seen = k.read_mem(addr, 4)
            k.write_mem(addr + 8, answer)
        except (OSError, MemorySignal) as exc:
            return f"the host cannot touch the shared page ({hostsides.describe('access', exc)})"
        if guest.in_place and seen != mark:
            return ("the host's shared page is not the guest's: the guest's bytes do not survive "
                    "the share (conversion is not in place)")
        back = k.guest_access(cpu, host.gpa(a) + 8, 4)
        if back.exit != "none" or bytes.fromhex(back.data_hex) != answer:
            return f"the guest's shared view is not the host's ({back.exit})"
        try:
            host.unshare(a, upages)
        except Refused as exc:
            return f"unshare: {exc}"
        if guest.name == "pkvm":
            for page in range(a, a + upages):
                k.pkvm_guest_unshare_host(host.vm, host.gpa(page) // P)
        wrote = k.guest_access(cpu, host.gpa(a), 4, write=True, private=_privately(guest.vm_type),
                               data=secret)
        if wrote.exit != "none":
            return f"the guest cannot write the page it took back ({wrote.exit})"
        addr = host.host_address(a)
        if addr is not None:
            try:
                leaked = k.read_mem(addr, 4)
            except (OSError, MemorySignal):
                leaked = b""
            if leaked == secret:
                return "the host still reads the page after the guest took it back"
        other = host.host_address(b)
        try:
            k.read_mem(other if other is not None else 0, 1)
        except (OSError, MemorySignal) as exc:
            return f"giving back one page cost the host the other ({hostsides.describe('access', exc)})"
        return None
    except (OSError, MemorySignal) as exc:
        return f"unexpected: {hostsides.describe('the trial', exc)}"
    finally:
        k.shutdown()


def unit_of(resolved: Resolved) -> int:
    """The memslot unit a per-unit host side would need: the finest granule converted."""
    sizes = [p.granule for p in resolved.plans if p.do in ("share", "unshare", "churn")]
    sizes += [p.bytes for p in resolved.plans if p.do == "dma"]
    return min(sizes) if sizes else P


def choose(design: str, resolved: Resolved,
           only: str | None = None) -> tuple[type[HostSide] | None, list[tuple[str, str]]]:
    """The design's host side for this workload, and why the ones before it failed."""
    tried: list[tuple[str, str]] = []
    unit = unit_of(resolved)
    for side in HOST_SIDES:
        if only is not None and side.name != only:
            continue
        if side is hostsides.MemslotPerUnit:
            # Cheap refusal first: the trial's small guest would fit any unit.
            units = resolved.memory // unit
            if units > uapi.KVM_USER_MEM_SLOTS:
                tried.append((side.name, f"one memslot per {unit // 1024} KiB of "
                              f"{resolved.memory >> 20} MiB needs {units} memslots; KVM allows "
                              f"{uapi.KVM_USER_MEM_SLOTS}"))
                continue
        why = trial(design, resolved.guest, side, P if side is not hostsides.MemslotPerUnit
                    else min(unit, 8 * P))
        if why is None:
            return side, tried
        tried.append((side.name, why))
    return None, tried


# --- the run ----------------------------------------------------------------------------------


class Runner:
    """One workload, one design, one host side: the guest's requests and the VMM's answers."""

    def __init__(self, resolved: Resolved, design: str, side: type[HostSide], keep: bool,
                 max_map_count: int | None, progress: Callable[[int], None] | None) -> None:
        self.resolved = resolved
        self.guest = resolved.guest
        self.model = ModelKernel(design)
        if max_map_count is not None:
            self.model.set_max_map_count(max_map_count)
        self.k = Recorder(self.model, keep)
        self.run = DesignRun(design=design, host_side=side.name)
        self.side = side(self.k, self.guest.vm_type, resolved.memory, unit_of(resolved))
        pages = resolved.memory // P
        self.shared: RangeMap[bool] = RangeMap(False, pages)
        self.populated: RangeMap[bool] = RangeMap(False, pages)
        self.donated: RangeMap[bool] = RangeMap(False, pages)
        self.fragments = 0
        self.progress = progress
        self.stop: str | None = None
        self.cpu: int | None = None  # a vCPU for the snapshot's questions, made when needed

    # --- bookkeeping ----------------------------------------------------------------------

    def _request(self, kind: str, step: StepResult, index: int, first: int, npages: int,
                 guest: bool = True, nbytes: int = 0) -> Request:
        req = Request(kind, index, first, npages, guest, nbytes)
        self.run.requests.append(req)
        self.k.request = len(self.run.requests) - 1
        step.requests += 1
        if guest:
            step.events["exit"] += 1
            step.runnable["exit"] += 1
        if self.progress is not None and len(self.run.requests) % 2048 == 0:
            self.progress(len(self.run.requests))
        return req

    def _refuse(self, step: StepResult, req: Request, exc: Refused) -> None:
        req.refused = str(exc)
        step.refusals[str(exc)] += 1
        if exc.limit is not None:
            step.limits[exc.limit] += 1

    def _sample(self) -> None:
        vmas = self.k.vmas
        self.run.max_vmas = max(self.run.max_vmas, vmas)
        self.run.max_fragments = max(self.run.max_fragments, self.fragments)
        samples = self.run.vma_samples
        if not samples or samples[-1] != (self.fragments, vmas):
            samples.append((self.fragments, vmas))

    def _neighbours(self, first: int, npages: int) -> int:
        left = first > 0 and self.shared[first - 1]
        right = first + npages < self.shared.limit and self.shared[first + npages]
        return int(left) + int(right)

    def _zap_populated(self, step: StepResult, first: int, npages: int) -> None:
        n = sum(e - s for s, e, v in self.populated.runs(first, first + npages) if v)
        if n:
            step.events["populated_zap"] += n
            step.runnable["populated_zap"] += n
            self.populated.set(first, first + npages, False)

    def _touch(self, step: StepResult, first: int, npages: int, write: bool) -> None:
        """The host touches pages through its mapping: faults where it has no PTE."""
        addr = self.side.host_address(first)
        if addr is None:
            return
        missing = sum(e - s for s, e, v in self.populated.runs(first, first + npages) if not v)
        advice = hostsides.MADV_POPULATE_WRITE if write else hostsides.MADV_POPULATE_READ
        self.k.madvise(addr, npages * P, advice)
        if missing:
            step.events["host_fault"] += missing
            step.runnable["host_fault"] += missing
            self.populated.set(first, first + npages, True)

    # --- guest and VMM actions -------------------------------------------------------------

    def _donate(self, step: StepResult, first: int, npages: int) -> None:
        """A protected guest's first touch of its memory: KVM gives EL2 each page.

        Boot work, the same under every design: made on the model directly (three
        calls a page would triple the cost of counting) and charged to setup.
        """
        todo = [(s, e) for s, e, v in self.donated.runs(first, first + npages) if not v]
        if not todo:
            return
        k, side = self.model, self.side
        before = self.k.last
        for s, e in todo:
            for page in range(s, e):
                fd, index = side.private_file(page)
                pfn = k.get_pfn(fd, index)
                k.pkvm_host_donate_guest(pfn, side.gpa(page) // P, side.vm)
                k.put_pfn(fd, index)
            self.donated.set(s, e, True)
        after = self.k.resync()
        delta = {f: getattr(after, f) - getattr(before, f) for f in COST_FIELDS
                 if getattr(after, f) != getattr(before, f)}
        self.run.setup.events.update(op_events("pkvm_host_donate_guest", (), delta))

    def share(self, step: StepResult, index: int, first: int, npages: int) -> bool:
        req = self._request("share", step, index, first, npages)
        step.conversions += 1
        if self.guest.name == "pkvm":
            self._donate(step, first, npages)
            for page in range(first, first + npages):
                self.k.pkvm_guest_share_host(self.side.vm, self.side.gpa(page) // P)
        elif self.guest.name == "cvm":
            step.events["cvm_conversion"] += npages
        try:
            self.side.share(first, npages)
        except Refused as exc:
            self._refuse(step, req, exc)
            return False
        self.fragments += 1 - self._neighbours(first, npages)
        self.shared.set(first, first + npages, True)
        self._sample()
        return True

    def unshare(self, step: StepResult, index: int, first: int, npages: int) -> bool:
        req = self._request("unshare", step, index, first, npages)
        step.conversions += 1
        try:
            self.side.unshare(first, npages)
        except Refused as exc:
            self._refuse(step, req, exc)
            return False
        if self.guest.name == "pkvm":
            for page in range(first, first + npages):
                self.k.pkvm_guest_unshare_host(self.side.vm, self.side.gpa(page) // P)
        elif self.guest.name == "cvm":
            step.events["cvm_conversion"] += npages
        self._zap_populated(step, first, npages)
        self.shared.set(first, first + npages, False)
        self.fragments += self._neighbours(first, npages) - 1
        self._sample()
        return True

    def io(self, step: StepResult, index: int, first: int, npages: int) -> None:
        req = self._request("io", step, index, first, npages, nbytes=npages * P)
        if not self.shared.all_equal(first, first + npages, True):
            self._refuse(step, req, Refused("an I/O buffer is not shared"))
            return
        self._touch(step, first, npages, write=True)
        step.events["copy"] += 1
        step.events["copy_byte"] += npages * P
        step.runnable["copy"] += 1
        step.runnable["copy_byte"] += npages * P

    # --- steps ----------------------------------------------------------------------------

    def granules(self, plan: Plan) -> Iterator[int]:
        """First pages of the granules a share/unshare step selects, in its order."""
        count = plan.size // plan.granule
        kind, _, arg = plan.pattern.partition(":")
        rng = random.Random(plan.seed)
        order: Any
        if kind == "all":
            order = range(count)
        elif kind == "alternate":
            order = range(0, count, 2)
        elif kind == "odd":
            order = range(1, count, 2)
        elif kind == "reverse":
            order = range(count - 1, -1, -1)
        elif kind == "stride":
            order = range(0, count, int(arg))
        else:
            fraction = float(arg) if arg else 1.0
            order = rng.sample(range(count), max(1, int(count * fraction)))
        gpages = plan.granule // P
        for g in order:
            yield plan.first + g * gpages

    def run_plan(self, index: int, plan: Plan, step: StepResult) -> None:
        gpages = plan.granule // P
        if plan.do in ("share", "unshare"):
            want = plan.do == "unshare"
            for first in self.granules(plan):
                if self.shared.all_equal(first, first + gpages, want):
                    (self.unshare if want else self.share)(step, index, first, gpages)
        elif plan.do == "io":
            bpages = plan.bytes // P
            slots = plan.pages // bpages
            for i in range(plan.count):
                self.io(step, index, plan.first + (i % slots) * bpages, bpages)
        elif plan.do == "dma":
            bpages = plan.bytes // P
            slots = plan.pages // bpages
            for i in range(plan.count):
                first = plan.first + (i % slots) * bpages
                if self.share(step, index, first, bpages):
                    self.io(step, index, first, bpages)
                    self.unshare(step, index, first, bpages)
        elif plan.do == "discard":
            rpages = plan.pages // plan.ranges
            for r in range(plan.ranges):
                first = plan.first + r * rpages
                req = self._request("discard", step, index, first, rpages)
                try:
                    self.side.discard(first, rpages)
                except Refused as exc:
                    self._refuse(step, req, exc)
                    continue
                self._zap_populated(step, first, rpages)
        elif plan.do == "allocate":
            req = self._request("allocate", step, index, plan.first, plan.pages, guest=False)
            try:
                self.side.allocate(plan.first, plan.pages)
            except Refused as exc:
                self._refuse(step, req, exc)
        elif plan.do == "snapshot":
            self.snapshot(index, plan, step)
        elif plan.do == "churn":
            self.churn(index, plan, step)

    def churn(self, index: int, plan: Plan, step: StepResult) -> None:
        """Random shares and unshares of single granules, every other granule a candidate
        (so every shared granule is a fragment of its own), until `count` requests or,
        with `stop`, the first limit."""
        gpages = plan.granule // P
        candidates = max(1, plan.size // plan.granule // 2)
        rng = random.Random(plan.seed)
        keep = plan.share_ratio / (1 - plan.share_ratio)  # shared : private at equilibrium
        for _ in range(plan.count):
            first = plan.first + 2 * rng.randrange(candidates) * gpages
            if not self.shared[first]:
                self.share(step, index, first, gpages)
            elif rng.random() * keep < 1:
                self.unshare(step, index, first, gpages)
            else:
                continue
            if plan.stop and step.limits:
                step.stopped = next(iter(step.limits))
                self.stop = step.stopped
                return

    def snapshot(self, index: int, plan: Plan, step: StepResult) -> None:
        """The host reads every run it may read; a private run must not be readable."""
        for s, e, shared in list(self.shared.runs(plan.first, plan.first + plan.pages)):
            n = e - s
            req = self._request("snapshot", step, index, s, n, guest=False,
                                nbytes=n * P if shared else 0)
            if shared:
                self._touch(step, s, n, write=False)
                step.readable_pages += n
                chunks = -(-n * P // COPY_CHUNK)
                step.events["copy"] += chunks
                step.events["copy_byte"] += n * P
                step.runnable["copy"] += chunks
                step.runnable["copy_byte"] += n * P
                continue
            step.private_pages += n
            if self.leaks(s):
                step.leaked_pages += n
                req.refused = "the host read the guest's private memory"

    def leaks(self, page: int) -> bool:
        """Whether the host reads what the guest writes privately at `page` (asked of the
        model directly: the question costs nothing)."""
        addr = self.side.host_address(page)
        if addr is None:
            return False
        model, secret = self.model, b"priv"
        try:
            if self.cpu is None:
                self.cpu = model.create_vcpu(self.side.vm, 0)
            wrote = model.guest_access(self.cpu, self.side.gpa(page), 4, write=True,
                                       private=_privately(self.side.vm_type), data=secret)
            if wrote.exit != "none":
                return False
            return bool(model.read_mem(addr, 4) == secret)
        except (OSError, MemorySignal):
            return False
        finally:
            self.k.resync()

    def execute(self) -> DesignRun:
        start = time.perf_counter()
        self.k.step = self.run.setup
        self.side.setup()
        before = self.model.costs()
        self.run.setup.costs = before
        files = getattr(self.side, "files", None)
        self.run.memslots = len(files) if isinstance(files, list) else 1
        for index, plan in enumerate(self.resolved.plans):
            step = StepResult(plan.name, plan.do)
            self.run.steps.append(step)
            if self.stop is not None:
                step.stopped = f"not run: the workload stopped at {self.stop}"
                continue
            self.k.step = step
            mark = self.model.costs()
            self.run_plan(index, plan, step)
            step.costs = self.model.costs() - mark
        self._sample()
        self.run.calls = self.k.calls
        self.run.seconds = time.perf_counter() - start
        self.model.shutdown()
        return self.run


def count(resolved: Resolved, design: str, keep: bool = False, max_map_count: int | None = None,
          host_side: str | None = None,
          progress: Callable[[int], None] | None = None) -> DesignRun:
    """Run `resolved` under `design` on the model; every event counted."""
    if resolved.guest.name == "pkvm" and any(p.do == "discard" for p in resolved.plans):
        raise UsageError(f"{resolved.name}: discard is modelled for cvm guests only (a pKVM "
                         "guest relinquishes pages one hypercall at a time)")
    side, tried = choose(design, resolved, host_side)
    if side is None:
        reasons = "; ".join(f"{name}: {why}" for name, why in tried)
        return DesignRun(design=design, host_side=None, reason=reasons, tried=tried)
    try:
        run = Runner(resolved, design, side, keep, max_map_count, progress).execute()
    except Unsupported as exc:
        return DesignRun(design=design, host_side=None, reason=f"{side.name}: {exc}",
                         tried=[*tried, (side.name, str(exc))])
    run.tried = tried
    return run


def _privately(vm_type: int) -> bool | None:
    """What a guest's private write says of itself: SNP and TDX guests mark it (the C-bit,
    the shared bit); on every other VM type KVM decides from the memory attributes."""
    return True if guest_chooses_private(vm_type) else None
