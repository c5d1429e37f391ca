"""Validation: a workload's host side carried out for real, driven by a real guest.

The model's run of a workload under a design is a trace of kernel calls,
each attached to the guest request that caused it (counting.py).  Here the
trace is replayed on the running kernel: the doorbell guest
(`vmm/guests/doorbell.s`) asks for each request in turn through port I/O,
and for each one the VMM loop carries out the calls plain Linux can execute
(mmap, munmap and madvise of a memfd at the file's canonical address,
fallocate and punch, memslots, the host's copies through its mappings; the
zap of the host's page tables that a conversion makes, as MADV_DONTNEED).
Calls only the design's kernel has (conversions, KVM's mapping ioctl, pKVM
hypercalls) are not executed, and their costs are left out of the
prediction this run is compared with.

A design is runnable here when every file its trace creates can be created:
a restricted memfd is a shmem file with restrictions, which a memfd stands
for; a guest_memfd needs a kernel that has one (the probe says).
"""

from __future__ import annotations

import bisect
import contextlib
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import libc, uapi
from ..errors import UsageError
from ..host import probe
from . import hostops
from .costmodel import CostModel
from .counting import Call, DesignRun
from .hostops import KINDS, Host, HostFile

P = uapi.PAGE_SIZE
POPULATE = (22, 23)
HEADROOM = 4096  # VMAs left to the interpreter itself when a replay maps pages


@dataclass
class Validation:
    """A design's workload run for real: measured against predicted."""

    design: str
    ran: bool
    reason: str | None = None
    measured: float = 0.0  # VMM thread CPU seconds, median over repeats: the guest-driven part
    measured_runs: list[float] = field(default_factory=list)
    wall: float = 0.0  # the same by the wall clock (other work on the machine included)
    exit_cost: float = 0.0  # the exit round trip measured next to the run (its prediction's)
    predicted: float = 0.0  # seconds: the same events at calibrated costs
    predicted_low: float = 0.0
    predicted_high: float = 0.0
    left_out: float = 0.0  # predicted seconds of events this kernel cannot perform
    setup_measured: float = 0.0
    setup_predicted: float = 0.0
    steps: list[tuple[str, float, float]] = field(default_factory=list)  # name, measured, predicted
    requests: int = 0
    vmas_host: int | None = None
    vmas_model: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def error(self) -> float:
        return (self.measured - self.predicted) / self.predicted if self.predicted else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"design": self.design, "ran": self.ran, "reason": self.reason,
                "measured_s": self.measured, "measured_runs_s": self.measured_runs,
                "wall_s": self.wall, "exit_cost_s": self.exit_cost,
                "predicted_s": self.predicted, "predicted_range_s": [self.predicted_low,
                                                                      self.predicted_high],
                "error": self.error if self.ran else None, "left_out_s": self.left_out,
                "setup_measured_s": self.setup_measured, "setup_predicted_s": self.setup_predicted,
                "steps": [{"name": n, "measured_s": m, "predicted_s": p} for n, m, p in self.steps],
                "requests": self.requests, "vmas_host": self.vmas_host,
                "vmas_model": self.vmas_model, "notes": self.notes}


def runnable(run: DesignRun) -> str | None:
    """Why this kernel cannot carry out the run's host side, or None."""
    why = hostops.missing()
    if why is not None:
        return why
    prof = probe.profile()
    for call in run.calls:
        if call.op == "create_guest_memfd" and call.error is None:
            if not prof.has_guest_memfd:
                return (f"its host side needs guest_memfd, and this kernel has none "
                        f"({prof.kind}): not validated")
            if call.args[2] & uapi.GUEST_MEMFD_FLAG_MMAP and \
                    not prof.gmem_flags & uapi.GUEST_MEMFD_FLAG_INIT_SHARED:
                return "its host side maps a guest_memfd, which this kernel's cannot: not validated"
    return None


def vma_budget() -> int:
    """VMAs a replay may add to this process and leave the interpreter room to live: at
    most half the limit (near the limit the interpreter's own allocations fail)."""
    limit = probe.profile().max_map_count or 65530
    return max(0, min(limit // 2, limit - count_vmas() - HEADROOM))


def count_vmas(lo: int = 0, hi: int = 1 << 64) -> int:
    """VMAs of this process, or of those starting in [lo, hi)."""
    with open("/proc/self/maps") as fh:
        return sum(1 for line in fh if lo <= int(line.partition("-")[0], 16) < hi)


Action = hostops.Action


class Replay:
    """The trace of one DesignRun, translated into host calls."""

    def __init__(self, run: DesignRun) -> None:
        self.run = run
        self.host = Host()
        self.files: dict[int, HostFile] = {}
        self.model_bases: list[tuple[int, int]] = []  # sorted (model address of offset 0, fd)
        self.slots: dict[int, tuple[int, int, int, int]] = {}  # slot: gpa, size, fd, uaddr
        self.gmem_flags = probe.profile().gmem_flags
        self._offsets: dict[int, int] = {}  # memslot gpa: file offset it binds

    # --- addresses ----------------------------------------------------------------------

    def _note_base(self, fd: int, model_addr: int, offset: int) -> None:
        entry = (model_addr - offset, fd)
        i = bisect.bisect_left(self.model_bases, entry)
        if i == len(self.model_bases) or self.model_bases[i] != entry:
            self.model_bases.insert(i, entry)

    def locate(self, model_addr: int) -> int:
        """The host address standing for a model address (same file, same offset)."""
        i = bisect.bisect_right(self.model_bases, (model_addr, 1 << 62)) - 1
        if i >= 0:
            base, fd = self.model_bases[i]
            f = self.files[fd]
            if model_addr - base < f.size:
                return f.base + model_addr - base
        raise UsageError(f"replay: no file is mapped at model address {model_addr:#x}")

    def guest_page(self, page: int) -> int:
        """Where the host reaches guest page `page` (its shared memory)."""
        gpa = hostops_gpa(page)
        for gpa0, size, fd, uaddr in self.slots.values():
            if gpa0 <= gpa < gpa0 + size:
                if uaddr:
                    return self.locate(uaddr + gpa - gpa0)
                return self.files[fd].base + gpa - gpa0 + self._slot_offset(gpa0)
        raise UsageError(f"replay: guest page {page} is in no memslot")

    def _slot_offset(self, gpa0: int) -> int:
        return self._offsets.get(gpa0, 0)

    def _file_range(self, gpa: int) -> tuple[HostFile, int]:
        for gpa0, size, fd, _ in self.slots.values():
            if gpa0 <= gpa < gpa0 + size:
                return self.files[fd], gpa - gpa0 + self._slot_offset(gpa0)
        raise UsageError(f"replay: gpa {gpa:#x} is in no memslot")

    # --- setup: executed as it is translated ---------------------------------------------

    def setup(self) -> None:
        h = self.host
        for call in self.run.calls:
            if call.request != -1:
                break
            if call.error is not None:
                continue
            op, a = call.op, call.args
            if op == "create_vm":
                h.create_vm()
            elif op in ("memfd_restricted", "memfd_create"):
                self.files[call.result] = h.memfd()
            elif op == "create_guest_memfd":
                flags = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED \
                    if a[2] & uapi.GUEST_MEMFD_FLAG_MMAP else 0
                self.files[call.result] = h.guest_memfd(a[1], flags & (self.gmem_flags or flags))
            elif op == "ftruncate":
                h.ftruncate(self.files[a[0]], a[1])
            elif op == "set_user_memory_region2":
                self._slot(a)
            elif op == "mmap":
                f = self.files[a[0]]
                offset = a[4] if len(a) > 4 else 0
                self._note_base(a[0], call.result, offset)
                h.map(f, offset, a[1])
            elif op == "fallocate":
                libc.fallocate(self.files[a[0]].fd, a[1], a[2], a[3])

    def _slot(self, a: tuple[Any, ...]) -> None:
        slot, gpa, size, uaddr = a[1], a[3], a[4], a[5]
        fd = a[6] if len(a) > 6 else -1
        offset = a[7] if len(a) > 7 else 0
        if slot == hostops.RUNNER_SLOT:
            raise UsageError(f"replay: the workload uses memslot {slot}, the doorbell guest's")
        if size == 0:
            self.slots.pop(slot, None)
        else:
            self.slots[slot] = (gpa, size, fd, uaddr)
            self._offsets[gpa] = offset
        # Memory KVM takes from the file is not behind the VMM's mappings (see
        # Host.unmapped_range); shared memory at userspace_addr is.  A file the VMM
        # will map at userspace_addr later has its place there from now on.
        if uaddr and fd >= 0 and fd in self.files:
            try:
                self.locate(uaddr)
            except UsageError:
                self._note_base(fd, uaddr, offset)
        host_uaddr = self.locate(uaddr) if uaddr else self.host.unmapped_range(size)
        self.host.set_slot(slot, gpa, size, host_uaddr)

    # --- requests: translated now, executed when the guest asks ------------------------

    def translate(self) -> list[list[Action]]:
        actions: list[list[Action]] = [[] for _ in self.run.requests]
        for call in self.run.calls:
            if call.request < 0 or call.error is not None:
                continue
            action = self._action(call)
            if action is not None:
                actions[call.request].append(action)
        for i, req in enumerate(self.run.requests):
            if req.nbytes and req.refused is None:
                addr = self.guest_page(req.first)
                fn = self.host.write if req.kind == "io" else self.host.read
                actions[i].append((fn, (addr, req.nbytes)))
        return actions

    def _action(self, call: Call) -> Action | None:
        op, a = call.op, call.args
        if op == "mmap":
            offset = a[4] if len(a) > 4 else 0
            self._note_base(a[0], call.result, offset)
            return (self.host.map, (self.files[a[0]], offset, a[1]))
        if op == "munmap":
            return (libc.munmap, (self.locate(a[0]), a[1]))
        if op == "madvise":
            if a[2] in POPULATE:
                return None
            return (libc.madvise, (self.locate(a[0]), a[1], a[2]))
        if op == "fallocate":
            return (libc.fallocate, (self.files[a[0]].fd, a[1], a[2], a[3]))
        if op == "kvm_map_shared":
            f, offset = self._file_range(a[1])
            self._note_base(self._fd_of(f), call.result, offset)
            if call.events.get("mmap"):
                return (self.host.map, (f, offset, a[2]))
            return None
        if op in ("set_memory_attributes", "set_memory_attributes2") and call.events.get("host_zap"):
            if op == "set_memory_attributes":
                f, offset = self._file_range(a[1])
                size = a[2]
            else:
                f, offset, size = self.files[a[0]], a[1], a[2]
            return (libc.madvise, (f.base + offset, size, uapi.MADV_DONTNEED))
        return None

    def _fd_of(self, f: HostFile) -> int:
        for fd, g in self.files.items():
            if g is f:
                return fd
        raise UsageError("replay: unknown file")

    def close(self) -> None:
        for slot in list(self.host.slots):
            with contextlib.suppress(OSError):
                self.host.set_slot(slot, 0, 0, 0)
        self.host.close()


def hostops_gpa(page: int) -> int:
    from .hostsides import GPA_BASE
    return GPA_BASE + page * P


def _replay_once(run: DesignRun) -> tuple[float, float, float, list[float], int, float]:
    """One replay: (setup seconds, guest-driven seconds, the same by the wall clock,
    seconds per step, VMAs it added, the exit cost measured just before).  Seconds are
    the VMM thread's CPU time."""
    replay = Replay(run)
    clock = hostops.clock
    try:
        start = clock()
        replay.setup()
        setup = clock() - start
        actions = replay.translate()
        guest_reqs = [i for i, r in enumerate(run.requests) if r.guest]
        entries = [(hostops_gpa(run.requests[i].first), run.requests[i].npages * P,
                    KINDS[run.requests[i].kind]) for i in guest_reqs]
        floor = max((g + s for g, s, _, _ in replay.slots.values()), default=1 << 32)
        bell = hostops.Doorbell(replay.host, entries, floor)
        step_of = [r.step for r in run.requests]
        host_only = [i for i, r in enumerate(run.requests) if not r.guest]
        dispatch = hostops.Dispatcher(actions, guest_reqs, step_of, host_only, entries)
        try:
            bell.warm()
            gc_off = hostops.quiet_gc()
            gc_off.__enter__()
            exit_cost = bell.exit_cost()
            wall = time.perf_counter()
            start = clock()
            dispatch.start()
            if entries:
                bell.run(dispatch)
            dispatch.finish()
            end = clock()
            wall = time.perf_counter() - wall
            exit_cost = (exit_cost + bell.exit_cost()) / 2  # before and after the run
        finally:
            if "gc_off" in locals():
                gc_off.__exit__(None, None, None)
            # VMAs where the replay maps (nothing else maps there).
            added = count_vmas(hostops.CANONICAL_START, replay.host.next_base)
            bell.close()
        per_step = dispatch.per_step + [0.0] * (len(run.steps) - len(dispatch.per_step))
        return setup, end - start, wall, per_step, added, exit_cost
    finally:
        replay.close()


def validate(run: DesignRun, model: CostModel, repeats: int = 3) -> Validation:
    """Carry the run's host side out for real `repeats` times; compare with the prediction."""
    result = Validation(run.design, False, requests=len(run.requests))
    if not run.ran:
        result.reason = f"the design cannot express the workload ({run.reason})"
        return result
    why = runnable(run)
    if why is not None:
        result.reason = why
        return result
    runnable_events: Counter[str] = run.total("runnable")
    result.left_out = model.predict(run.total("events")) - model.predict(runnable_events)
    result.setup_predicted = model.predict(run.setup.runnable)
    result.vmas_model = run.vma_samples[-1][1] if run.vma_samples else 0
    measured, setups, steps, walls, exits, predicted = [], [], [], [], [], []
    for _ in range(repeats):
        try:
            setup, elapsed, wall, per_step, added, exit_cost = _replay_once(run)
        except OSError as exc:
            result.reason = f"the replay failed: {exc}"
            return result
        # The exit dominates and moves with whatever else the machine does: each run is
        # priced with the exit round trip measured on its own vCPU just before it.
        adjacent = model.with_value("exit", exit_cost) if exit_cost else model
        measured.append(elapsed)
        walls.append(wall)
        setups.append(setup)
        steps.append((per_step, adjacent))
        exits.append(exit_cost)
        predicted.append(adjacent.predict(runnable_events))
        result.vmas_host = added
    result.ran = True
    result.measured_runs = measured
    errors = [(m - p) / p if p else 0.0 for m, p in zip(measured, predicted, strict=True)]
    best = sorted(range(len(errors)), key=errors.__getitem__)[len(errors) // 2]  # the median
    result.measured, result.predicted = measured[best], predicted[best]
    per_step, adjacent = steps[best]
    result.predicted_low, result.predicted_high = adjacent.spread(runnable_events)
    result.wall = walls[best]
    result.setup_measured = statistics.median(setups)
    result.exit_cost = exits[best]
    result.steps = [(s.name, per_step[i], adjacent.predict(s.runnable))
                    for i, s in enumerate(run.steps)]
    return result
