"""Calibration: what each counted event costs on the running kernel.

`calibrate()` measures, on this machine and through the same calls a
replayed workload makes (hostops.py), the cost of every event the model
counts that plain Linux can perform: a guest request round trip (the
doorbell guest's exit, decoded and answered by the VMM loop), a system call
and a KVM ioctl, mmap and munmap of a page, a VMA split and merge, a zap of
unpopulated and of populated pages, a host page fault and a page allocation,
fallocate and punch (per call and per page, on a memfd and, where the kernel
has it, on a guest_memfd), a memslot created or deleted, a VM created, and
copying (per call and per byte).  Each is measured over several repetitions
of a batch; the file keeps the median, the lowest and the highest, and the
kernel profile it was measured on.

Events this machine cannot perform are not measured: costmodel.ASSUMED
gives them, with their sources, and every report says so.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import libc, uapi
from ..errors import UsageError
from ..host import probe
from . import hostops
from .hostops import MIB, Host, P

FORMAT = "gmemlab-calibration/1"


@dataclass(frozen=True)
class Measured:
    """One event's cost on this machine, in seconds: median and range over repetitions."""

    median: float
    low: float
    high: float
    reps: int
    how: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Calibration:
    """A calibration file: measured costs and the kernel they were measured on."""

    measured: dict[str, Measured]
    profile: str  # the kernel profile's line
    machine: str
    when: str
    notes: list[str] = field(default_factory=list)
    source: str = "measured here"

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "profile": self.profile, "machine": self.machine,
                "when": self.when, "notes": self.notes,
                "measured": {k: v.as_json() for k, v in sorted(self.measured.items())}}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, doc: Any, source: str) -> Calibration:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise UsageError(f"{source}: not a gmemlab calibration file (format {FORMAT})")
        try:
            measured = {k: Measured(float(v["median"]), float(v["low"]), float(v["high"]),
                                    int(v["reps"]), str(v["how"]))
                        for k, v in doc["measured"].items()}
            return cls(measured, str(doc["profile"]), str(doc["machine"]), str(doc["when"]),
                       [str(n) for n in doc.get("notes", [])], source)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{source}: malformed calibration file ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as exc:
            raise UsageError(f"cannot read calibration file {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not JSON ({exc})") from None
        return cls.from_json(doc, str(path))


def reference() -> Calibration:
    """The calibration shipped with gmemlab (measured on the project's machine), for
    machines where none can be measured; reports name it as such."""
    path = Path(__file__).with_name("reference_calibration.json")
    cal = Calibration.load(path)
    cal.source = f"reference calibration shipped with gmemlab ({cal.machine}), not this machine"
    return cal


# --- measurements -------------------------------------------------------------------------------
#
# Every call is measured where a replay makes it: once per request of the doorbell guest,
# between two of its exits, so the caches and TLBs are in the state the guest's run
# leaves them in.  A plan prepares n operations on a fresh host and returns the i-th one
# as a function; the measurement is the guest's run with op(i) answering request i,
# less the same run answering nothing, per request.

Op = Callable[[int], Any]
Prepare = Callable[[Host, int], Op]


def _noop(h: Host, n: int) -> Op:
    return lambda i: None


def _syscall(h: Host, n: int) -> Op:
    f = h.memfd()
    os.ftruncate(f.fd, P)
    fd = f.fd
    return lambda i: os.ftruncate(fd, P)


def _ioctl(h: Host, n: int) -> Op:
    cap = uapi.KVM_CAP_NR_MEMSLOTS
    return lambda i: h.check_extension(cap)


def _create_vm(h: Host, n: int) -> Op:
    return lambda i: os.close(libc.ioctl_int(h.kvm, uapi.KVM_CREATE_VM, 0))


def _memslot(h: Host, n: int) -> Op:
    f = _file(h, 1)
    h.map(f, 0, P)
    # Slot ids below the doorbell's; each request creates one slot, the next deletes it.
    return lambda i: h.set_slot(0, 1 << 30, 0 if i % 2 else P, f.base)


def _file(h: Host, pages: int) -> hostops.HostFile:
    f = h.memfd()
    h.ftruncate(f, pages * P)
    return f


def _mmap(h: Host, n: int) -> Op:
    f = _file(h, 2 * n)
    return lambda i: h.map(f, 2 * i * P, P)


def _munmap(h: Host, n: int) -> Op:
    f = _file(h, 2 * n)
    for i in range(n):
        h.map(f, 2 * i * P, P)
    base = f.base
    return lambda i: libc.munmap(base + 2 * i * P, P)


def _mmap_merging(h: Host, n: int) -> Op:
    f = _file(h, n)
    return lambda i: h.map(f, i * P, P)


def _munmap_splitting(h: Host, n: int) -> Op:
    f = _file(h, 3 * n)
    h.map(f, 0, 3 * n * P)
    base = f.base
    return lambda i: libc.munmap(base + (3 * i + 1) * P, P)


def _madvise(populated: bool) -> Prepare:
    def prepare(h: Host, n: int) -> Op:
        f = _file(h, n)
        h.map(f, 0, n * P)
        if populated:
            h.write(f.base, n * P)
        base, dontneed = f.base, uapi.MADV_DONTNEED
        return lambda i: libc.madvise(base + i * P, P, dontneed)
    return prepare


def _touch(state: str) -> Prepare:
    """Copy one page into page i: populated, allocated but not mapped, or never allocated."""
    def prepare(h: Host, n: int) -> Op:
        f = _file(h, n)
        h.map(f, 0, n * P)
        if state != "new":
            h.write(f.base, n * P)
        if state == "zapped":
            libc.madvise(f.base, n * P, uapi.MADV_DONTNEED)
        write, base = h.write, f.base
        return lambda i: write(base + i * P, P)  # as a replayed I/O writes its buffer
    return prepare


def _copy(size: int) -> Prepare:
    def prepare(h: Host, n: int) -> Op:
        f = _file(h, max(1, size // P))
        h.map(f, 0, max(P, size))
        h.write(f.base, max(P, size))
        write, base = h.write, f.base
        return lambda i: write(base, size)
    return prepare


def _fallocate(punch: bool, pages: int, gmem: bool) -> Prepare:
    def prepare(h: Host, n: int) -> Op:
        size = n * pages * P
        f = h.guest_memfd(size, 0) if gmem else _file(h, n * pages)
        keep, hole = uapi.FALLOC_FL_KEEP_SIZE, uapi.FALLOC_FL_PUNCH_HOLE
        if punch:
            libc.fallocate(f.fd, keep, 0, size)
        mode, length, fd = keep | hole if punch else keep, pages * P, f.fd
        return lambda i: libc.fallocate(fd, mode, i * length, length)
    return prepare


@dataclass(frozen=True)
class Plan:
    """One measurement: how to prepare it, how many requests a run has, what it measures."""

    prepare: Prepare
    n: int
    how: str
    gmem: bool = False


PLANS: dict[str, Plan] = {
    "exit": Plan(_noop, 2000, "doorbell guest request round trip (exit, mailbox decode, resume)"),
    "syscall": Plan(_syscall, 2000, "ftruncate of a memfd to its own size"),
    "ioctl": Plan(_ioctl, 2000, "KVM_CHECK_EXTENSION on a VM"),
    "create_vm": Plan(_create_vm, 20, "KVM_CREATE_VM and close"),
    "memslot": Plan(_memslot, 1000, "KVM_SET_USER_MEMORY_REGION, 1-page slot (create/delete)"),
    "mmap": Plan(_mmap, 2000, "mmap MAP_FIXED_NOREPLACE of 1 memfd page, no neighbour"),
    "munmap": Plan(_munmap, 2000, "munmap of a whole 1-page VMA, unpopulated"),
    "_mmap_merging": Plan(_mmap_merging, 2000, "mmap of 1 page next to a mapping it merges with"),
    "_munmap_splitting": Plan(_munmap_splitting, 2000, "munmap of 1 page inside a VMA"),
    "madvise": Plan(_madvise(False), 2000, "MADV_DONTNEED of 1 unpopulated page"),
    "_madvise_populated": Plan(_madvise(True), 2000, "MADV_DONTNEED of 1 populated page"),
    "_touch_mapped": Plan(_touch("mapped"), 2000, "copy 4 KiB into a populated page"),
    "_touch_zapped": Plan(_touch("zapped"), 2000, "copy 4 KiB into an allocated page, no PTE"),
    "_touch_new": Plan(_touch("new"), 2000, "copy 4 KiB into a page never allocated"),
    "copy": Plan(_copy(64), 2000, "copy of 64 bytes into a populated page (the call)"),
    "_copy_mib": Plan(_copy(MIB), 200, "memmove of 1 MiB"),
    "_falloc_1": Plan(_fallocate(False, 1, False), 2000, "fallocate KEEP_SIZE of 1 page"),
    "_falloc_64": Plan(_fallocate(False, 64, False), 200, "fallocate KEEP_SIZE of 64 pages"),
    "_punch_1": Plan(_fallocate(True, 1, False), 2000, "PUNCH_HOLE of 1 allocated page"),
    "_punch_64": Plan(_fallocate(True, 64, False), 200, "PUNCH_HOLE of 64 allocated pages"),
    "_gmem_falloc_1": Plan(_fallocate(False, 1, True), 2000, "guest_memfd fallocate, 1 page", True),
    "_gmem_falloc_64": Plan(_fallocate(False, 64, True), 200, "guest_memfd fallocate, 64 pages",
                            True),
    "_gmem_punch_1": Plan(_fallocate(True, 1, True), 2000, "guest_memfd punch, 1 page", True),
    "_gmem_punch_64": Plan(_fallocate(True, 64, True), 200, "guest_memfd punch, 64 pages", True),
}


def _measure(plan: Plan, reps: int, scale: float) -> list[float]:
    """Seconds per operation, one figure per repetition (for "exit": per request)."""
    n = max(10, int(plan.n * scale))
    out = []
    for _ in range(reps):
        h = Host()
        h.create_vm()
        bell = None
        try:
            op = plan.prepare(h, n)
            bell = hostops.Doorbell(h, [(0, P, hostops.KINDS["noop"])] * n, 1 << 32)
            bell.warm()
            with hostops.quiet_gc():
                base = bell.exit_cost(n)
            if plan.prepare is _noop:
                out.append(base)
                continue
            # The replay's own dispatcher, each request's one action the operation.
            dispatch = hostops.Dispatcher([[(op, (i,))] for i in range(n)], list(range(n)),
                                          [0] * n, [], bell.entries)
            with hostops.quiet_gc():
                start = hostops.clock()
                bell.run(dispatch)
                out.append((hostops.clock() - start) / n - base)
        finally:
            if bell is not None:
                bell.close()
            h.close()
    return out


def _derive(raw: dict[str, list[float]]) -> dict[str, Measured]:
    """The event costs from the raw measurements (differences where an event is the
    extra work of one call over another)."""
    def m(name: str, how: str, values: list[float]) -> Measured:
        return Measured(statistics.median(values), min(values), max(values), len(values), how)

    def diff(a: str, b: str, scale: float = 1.0) -> list[float]:
        return [(x - y) / scale for x, y in zip(raw[a], raw[b], strict=True)]

    out = {k: m(k, PLANS[k].how, v) for k, v in raw.items() if not k.startswith("_")}
    out["vma_merge"] = m("vma_merge", "mmap merging with a neighbour, minus a lone mmap",
                         diff("_mmap_merging", "mmap"))
    out["vma_split"] = m("vma_split", "munmap inside a VMA (two splits), minus a whole-VMA munmap, "
                         "halved", diff("_munmap_splitting", "munmap", 2))
    out["host_zap"] = m("host_zap", "a conversion's zap of the host's PTEs: MADV_DONTNEED of "
                        "the range", raw["madvise"])
    out["populated_zap"] = m("populated_zap", "zapping a populated page, minus an unpopulated one",
                             diff("_madvise_populated", "madvise"))
    out["host_fault"] = m("host_fault", "copy into an allocated page without PTE, minus a mapped "
                          "one", diff("_touch_zapped", "_touch_mapped"))
    out["page_alloc"] = m("page_alloc", "copy into a new page, minus an allocated one (allocate "
                          "and zero)", diff("_touch_new", "_touch_zapped"))
    per_byte = [(mib - call) / MIB for mib, call in zip(raw["_copy_mib"], raw["copy"], strict=True)]
    out["copy_byte"] = m("copy_byte", "memmove of 1 MiB minus the call, per byte", per_byte)
    for prefix, tag in (("", ""), ("_gmem", "@gmem")):
        if f"{prefix}_falloc_1" not in raw:
            continue
        where = "guest_memfd" if tag else "memfd"
        for op, one, many, page_event in (("alloc", "falloc", "falloc", "falloc_page"),
                                          ("punch", "punch", "punch", "free_page")):
            per_page = diff(f"{prefix}_{many}_64", f"{prefix}_{one}_1", 63)
            base = [a - b for a, b in zip(raw[f"{prefix}_{one}_1"], per_page, strict=True)]
            out[f"fallocate:{op}{tag}"] = m("", f"fallocate {op} on a {where}, the call", base)
            out[f"{page_event}{tag}"] = m("", f"fallocate {op} on a {where}, per page", per_page)
    return out


def calibrate(reps: int = 7, scale: float = 1.0,
              progress: Callable[[str, int, int], None] | None = None) -> Calibration:
    """Measure every event this kernel can perform (needs /dev/kvm and GNU as)."""
    why = hostops.missing()
    if why is not None:
        raise UsageError(f"cannot calibrate here: {why}")
    prof = probe.profile()
    plans = {k: p for k, p in PLANS.items() if not p.gmem or prof.has_guest_memfd}
    raw: dict[str, list[float]] = {}
    for i, (name, plan) in enumerate(plans.items()):
        if progress is not None:
            progress(name, i, len(plans))
        raw[name] = _measure(plan, reps, scale)
    notes = []
    if not prof.has_guest_memfd:
        notes.append("no guest_memfd on this kernel: fallocate and punch on a guest_memfd are "
                     "not measured (the memfd figures stand in)")
    return Calibration(_derive(raw), prof.line(), f"{platform.node()} ({platform.machine()}, "
                       f"{os.cpu_count()} CPUs, Python {platform.python_version()})",
                       datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), notes)

