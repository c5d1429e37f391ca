"""The cost model: predicted time = sum over event kinds of count x cost.

Costs come from a calibration of the running kernel (calibration.py) where
this machine can perform the event, and from `ASSUMED` where it cannot: a
pKVM hypercall or stage-2 change, a cross-CPU TLB shootdown, a KVM zap of a
range, a confidential platform's per-page conversion.  Each assumed value has
a range and its public source; `sensitivity()` varies each over its range so
a report can show how the ranking of designs moves with it.  Nothing assumed
is ever shown as measured.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .calibration import Calibration


@dataclass(frozen=True)
class Assumed:
    """An event this machine cannot perform: a value, a range and where they come from."""

    value: float  # seconds
    low: float
    high: float
    what: str
    source: str


ASSUMED: dict[str, Assumed] = {
    "hypercall": Assumed(
        0.5e-6, 0.1e-6, 5e-6,
        "one pKVM hypercall handled at EL2 (a host HVC, or the guest's MEM_SHARE / MEM_UNSHARE "
        "trap; its exit to the host is counted separately as an exit)",
        "Dall et al., \"ARM Virtualization: Performance and Architectural Implications\", "
        "ISCA 2016: a hypercall round trip on ARMv8 servers costs hundreds of cycles for a "
        "hypervisor resident at EL2 and thousands for split-mode KVM"),
    "stage2_update": Assumed(
        0.3e-6, 0.05e-6, 3e-6,
        "one pKVM page-state change of one page: the host's, the hypervisor's or a guest's "
        "stage-2 entry (walk, check, write)",
        "no published measurement; the order of magnitude of a page-table walk and store at "
        "EL2, from the code (arch/arm64/kvm/hyp/nvhe/mem_protect.c: check all, then do)"),
    "tlb_shootdown": Assumed(
        2e-6, 0.5e-6, 20e-6,
        "invalidating stale translations on the other CPUs that run the VMM's or the guest's "
        "threads (IPIs on x86, broadcast TLBI on arm64), beyond the local flush the measured "
        "calls include",
        "Amit, \"Optimizing the TLB Shootdown Algorithm with Page Access Tracking\", USENIX ATC "
        "2017: a shootdown takes microseconds, growing with the number of CPUs"),
    "kvm_zap": Assumed(
        1e-6, 0.2e-6, 10e-6,
        "zapping KVM's mappings of a small range (secondary MMU or stage-2), with the MMU "
        "notifier and invalidation bookkeeping",
        "no published per-range figure; an order of magnitude from the code path "
        "(kvm_unmap_gfn_range, kvm_pgtable_stage2_unmap) for a few pages"),
    "cvm_conversion": Assumed(
        1e-6, 0.2e-6, 10e-6,
        "a confidential platform's per-page conversion: SEV-SNP's RMPUPDATE and PVALIDATE, or "
        "TDX's SEAMCALLs adding or removing a page",
        "no published per-page latency; AMD's SEV-SNP white paper (2020) and Intel's TDX module "
        "specification define one RMP update or SEAMCALL per 4 KiB page"),
}
# Measured events that stand in for ones this kernel lacks (shown as "proxy").
PROXIES = {"gmem_create": "syscall"}
EVENT_ORDER = ("exit", "syscall", "ioctl", "memslot", "mmap", "munmap", "madvise", "vma_split",
               "vma_merge", "host_zap", "populated_zap", "host_fault", "page_alloc",
               "fallocate:alloc", "fallocate:punch", "falloc_page", "free_page", "copy",
               "copy_byte", "create_vm", "gmem_create", "hypercall", "stage2_update",
               "tlb_shootdown", "kvm_zap", "cvm_conversion")


@dataclass(frozen=True)
class Cost:
    event: str
    seconds: float
    low: float
    high: float
    kind: str  # measured, proxy, assumed, missing
    how: str


class CostModel:
    """Costs per event kind, from a calibration and the assumed table."""

    def __init__(self, calibration: Calibration, overrides: Mapping[str, float] | None = None):
        self.calibration = calibration
        self.overrides = dict(overrides or {})

    def cost(self, event: str) -> Cost:
        if event in self.overrides:
            value = self.overrides[event]
            a = ASSUMED.get(event)
            return Cost(event, value, a.low if a else value, a.high if a else value, "assumed",
                        "set for this run")
        m = self.calibration.measured.get(event)
        if m is not None:
            return Cost(event, m.median, m.low, m.high, "measured", m.how)
        base = event.partition("@")[0]
        if base != event and base in self.calibration.measured:
            m = self.calibration.measured[base]
            return Cost(event, m.median, m.low, m.high, "proxy",
                        f"{m.how} (memfd figure: not measured on a guest_memfd here)")
        if event in PROXIES and PROXIES[event] in self.calibration.measured:
            m = self.calibration.measured[PROXIES[event]]
            return Cost(event, m.median, m.low, m.high, "proxy", f"{m.how} (stand-in)")
        if event in ASSUMED:
            a = ASSUMED[event]
            return Cost(event, a.value, a.low, a.high, "assumed", a.what)
        return Cost(event, 0.0, 0.0, 0.0, "missing", "no calibration for this event")

    def with_value(self, event: str, seconds: float) -> CostModel:
        return CostModel(self.calibration, {**self.overrides, event: seconds})

    def breakdown(self, events: Mapping[str, int]) -> dict[str, float]:
        """Seconds per event kind (in EVENT_ORDER, then any others)."""
        out = {}
        for event in ordered(events):
            out[event] = events[event] * self.cost(event).seconds
        return out

    def predict(self, events: Mapping[str, int]) -> float:
        return sum(self.breakdown(events).values())

    def spread(self, events: Mapping[str, int]) -> tuple[float, float]:
        """The prediction with every measured cost at its lowest and at its highest."""
        low = high = 0.0
        for event, n in events.items():
            c = self.cost(event)
            if c.kind == "assumed":
                low += n * c.seconds
                high += n * c.seconds
            else:
                low += n * c.low
                high += n * c.high
        return low, high

    def assumed_part(self, events: Mapping[str, int]) -> float:
        return sum(n * self.cost(e).seconds for e, n in events.items()
                   if self.cost(e).kind == "assumed")

    def table(self, events: Iterable[str]) -> list[Cost]:
        return [self.cost(e) for e in ordered(Counter(dict.fromkeys(events, 1)))]


def ordered(events: Mapping[str, int]) -> list[str]:
    known = [e for e in EVENT_ORDER if events.get(e)]
    rest = sorted(e for e in events if e not in EVENT_ORDER and events[e])
    tagged = [e for e in rest if e.partition("@")[0] in EVENT_ORDER]
    return known + tagged + [e for e in rest if e not in tagged]


def sensitivity(model: CostModel, totals: Mapping[str, Mapping[str, int]],
                points: int = 9) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """For each assumed event: each design's predicted time as its value runs over its range
    (log-spaced), the other assumed values at their defaults."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for event, a in ASSUMED.items():
        if not any(ev.get(event) for ev in totals.values()):
            continue
        values = [a.low * (a.high / a.low) ** (i / (points - 1)) for i in range(points)]
        out[event] = {}
        for design, events in totals.items():
            base = model.predict(events) - events.get(event, 0) * model.cost(event).seconds
            out[event][design] = [(v, base + events.get(event, 0) * v) for v in values]
    return out


def rankings(curves: Mapping[str, list[tuple[float, float]]]) -> list[list[str]]:
    """The designs ordered cheapest first at each point of a sensitivity curve."""
    designs = list(curves)
    if not designs:
        return []
    n = len(next(iter(curves.values())))
    return [sorted(designs, key=lambda d: curves[d][i][1]) for i in range(n)]
