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

import ctypes
import datetime
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import uapi
from ..errors import UsageError
from ..host import libc, probe
from . import hostops
from .hostops import MIB, Host, P, timed

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

Batch = Callable[[Host, int], float]  # (host, n) -> seconds for n operations


def _exit(h: Host, n: int) -> float:
    bell = hostops.Doorbell(h, [(0, P, hostops.KINDS["noop"])] * n, 1 << 32)
    entry = hostops.ENTRY
    try:
        def handle(i: int, mailbox: bytes) -> None:
            # What the replay's loop does for a request with nothing to carry out.
            entry.unpack(mailbox)
            for fn, args in ():
                fn(*args)

        bell.warm()
        return timed(lambda: bell.run(handle))
    finally:
        bell.close()


def _syscall(h: Host, n: int) -> float:
    f = h.memfd()
    os.ftruncate(f.fd, P)
    return timed(lambda: [os.ftruncate(f.fd, P) for _ in range(n)] and None)


def _ioctl(h: Host, n: int) -> float:
    cap = uapi.KVM_CAP_NR_MEMSLOTS
    return timed(lambda: [h.check_extension(cap) for _ in range(n)] and None)


def _create_vm(h: Host, n: int) -> float:
    def run() -> None:
        for _ in range(n):
            os.close(libc.ioctl_int(h.kvm, uapi.KVM_CREATE_VM, 0))
    return timed(run)


def _memslot(h: Host, n: int) -> float:
    f = h.memfd()
    h.ftruncate(f, P)
    h.map(f, 0, P)

    def run() -> None:
        for _ in range(n):
            h.set_slot(0, 1 << 30, P, f.base)
            h.set_slot(0, 1 << 30, 0, f.base)
    return timed(run) / 2


def _file(h: Host, pages: int) -> hostops.HostFile:
    f = h.memfd()
    h.ftruncate(f, pages * P)
    return f


def _mmap(h: Host, n: int) -> float:
    f = _file(h, 2 * n)
    t = timed(lambda: [h.map(f, 2 * i * P, P) for i in range(n)] and None)
    for i in range(n):
        libc.munmap(f.base + 2 * i * P, P)
    return t


def _munmap(h: Host, n: int) -> float:
    f = _file(h, 2 * n)
    for i in range(n):
        h.map(f, 2 * i * P, P)
    return timed(lambda: [libc.munmap(f.base + 2 * i * P, P) for i in range(n)] and None)


def _mmap_merging(h: Host, n: int) -> float:
    f = _file(h, n)
    t = timed(lambda: [h.map(f, i * P, P) for i in range(n)] and None)
    libc.munmap(f.base, n * P)
    return t


def _munmap_splitting(h: Host, n: int) -> float:
    f = _file(h, 3 * n)
    h.map(f, 0, 3 * n * P)
    t = timed(lambda: [libc.munmap(f.base + (3 * i + 1) * P, P) for i in range(n)] and None)
    libc.munmap(f.base, 3 * n * P)
    return t


def _madvise(populated: bool) -> Batch:
    def batch(h: Host, n: int) -> float:
        f = _file(h, n)
        h.map(f, 0, n * P)
        if populated:
            h.write(f.base, n * P)
        dontneed = uapi.MADV_DONTNEED
        t = timed(lambda: [libc.madvise(f.base + i * P, P, dontneed) for i in range(n)] and None)
        libc.munmap(f.base, n * P)
        return t
    return batch


def _touch(state: str) -> Batch:
    """Copy one page into n pages: populated, allocated but not mapped, or not allocated."""
    def batch(h: Host, n: int) -> float:
        f = _file(h, n)
        h.map(f, 0, n * P)
        if state != "new":
            h.write(f.base, n * P)
        if state == "zapped":
            libc.madvise(f.base, n * P, uapi.MADV_DONTNEED)
        src, base = h.src, f.base
        t = timed(lambda: [ctypes.memmove(base + i * P, src, P) for i in range(n)] and None)
        libc.munmap(f.base, n * P)
        os.ftruncate(f.fd, 0)
        return t
    return batch


def _copy(size: int) -> Batch:
    def batch(h: Host, n: int) -> float:
        f = _file(h, max(1, size // P))
        h.map(f, 0, max(P, size))
        h.write(f.base, max(P, size))
        src, base = h.src, f.base
        t = timed(lambda: [ctypes.memmove(base, src, size) for _ in range(n)] and None)
        libc.munmap(f.base, max(P, size))
        return t
    return batch


def _fallocate(punch: bool, pages: int, gmem: bool) -> Batch:
    def batch(h: Host, n: int) -> float:
        size = n * pages * P
        if gmem:
            f = h.guest_memfd(size, 0)
        else:
            f = _file(h, n * pages)
        keep, hole = uapi.FALLOC_FL_KEEP_SIZE, uapi.FALLOC_FL_PUNCH_HOLE
        if punch:
            libc.fallocate(f.fd, keep, 0, size)
        mode = keep | hole if punch else keep
        length = pages * P
        t = timed(lambda: [libc.fallocate(f.fd, mode, i * length, length) for i in range(n)]
                  and None)
        libc.fallocate(f.fd, keep | hole, 0, size)
        return t
    return batch


@dataclass(frozen=True)
class Plan:
    """One measurement: a batch function, its batch size, and what it measures."""

    batch: Batch
    n: int
    how: str
    gmem: bool = False


PLANS: dict[str, Plan] = {
    "exit": Plan(_exit, 2000, "doorbell guest request round trip (exit, mailbox decode, resume)"),
    "syscall": Plan(_syscall, 4000, "ftruncate of a memfd to its own size"),
    "ioctl": Plan(_ioctl, 4000, "KVM_CHECK_EXTENSION on a VM"),
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
    "copy": Plan(_copy(64), 4000, "memmove of 64 bytes (the call)"),
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
    n = max(10, int(plan.n * scale))
    out = []
    for _ in range(reps):
        h = Host()
        h.create_vm()
        try:
            out.append(plan.batch(h, n) / n)
        finally:
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

