"""`gmemlab fuzz`: run the differential machine for N examples, with progress."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import seed as with_seed
from hypothesis.errors import Flaky
from hypothesis.stateful import run_state_machine_as_test

from .. import uapi
from ..errors import UsageError
from ..interface import Kernel
from .machine import CAPS, DifferentialMachine, Divergence, KernelPair, Offer, make_machine

if TYPE_CHECKING:
    from ..host.probe import KernelProfile

PAIRS = ("model,host",)
BATCH = 2000


def _as_test(machine: type[DifferentialMachine], config: settings) -> Callable[[], None]:
    def test() -> None:
        run_state_machine_as_test(machine, settings=config)  # type: ignore[no-untyped-call]
    return test


@dataclass
class FuzzReport:
    examples: int
    seed: int | None
    seconds: float = 0.0
    stats: Counter[str] = field(default_factory=Counter)
    divergence: Divergence | None = None
    flaky: str | None = None
    left_out: list[str] = field(default_factory=list)  # what was not fuzzed, and why

    @property
    def ok(self) -> bool:
        return self.divergence is None and self.flaky is None

    def summary(self) -> str:
        s = self.stats
        verdict = "no divergence" if self.ok else "DIVERGENCE" if self.divergence else "FLAKY"
        return (f"{verdict}: {s['examples']} examples run ({self.examples} asked), "
                f"{s['steps']} steps, {s['op guest_access']} guest accesses, "
                f"{self.seconds:.1f} s")


def host_pair() -> tuple[KernelPair, list[str], Offer]:
    """The model under the design matching the running kernel, on its guest path, and
    HostKernel; and what of the interface the kernel offers (probe.profile)."""
    from ..host import HostKernel, probe
    from ..model import ModelKernel

    prof = probe.profile()
    if not prof.usable:
        raise UsageError(f"fuzz needs the host kernel: no usable /dev/kvm ({prof.kvm_missing})")
    path = prof.access_path or "mmu"
    design = prof.design

    def model() -> Kernel:
        return ModelKernel(design, guest_path=path)

    return (model, HostKernel), [f"guest:{path}"], offer_for(prof)


def offer_for(prof: KernelProfile) -> Offer:
    """What to fuzz on this kernel, and what is left out and why."""
    from ..host import HostKernel
    from ..model import ModelKernel

    left: list[str] = []
    gmem = prof.has_guest_memfd
    if not gmem:
        left.append("create_guest_memfd, guest_memfd memslots and mappings: the kernel has no "
                    "guest_memfd (KVM_CAP_GUEST_MEMFD = 0)")
    mmap = gmem and bool(prof.gmem_flags & uapi.GUEST_MEMFD_FLAG_MMAP)
    if gmem and not mmap:
        left.append("guest_memfd mappings: the kernel's guest_memfd has no MMAP flag")
    guest = prof.access_path is not None
    if not guest:
        left.append(f"guest_access: {prof.access_missing}")
    with ModelKernel(prof.design) as model, HostKernel() as host:
        differ = [cap for cap in CAPS
                  if model.check_extension(cap) != host.check_extension(cap)]
    names = {v: k for k, v in uapi.CAPS.items()}
    if differ:
        left.append("check_extension of " + ", ".join(names[c] for c in differ) +
                    f": the kernel's build and design {prof.design} answer differently")
    attributes = uapi.KVM_CAP_MEMORY_ATTRIBUTES not in differ
    if not attributes:
        left.append("set_memory_attributes: the kernel's memory attributes differ from the "
                    f"design's ({prof.design})")
    left.append("VM type 1 and KVM_CAP_VM_TYPES: the model always has KVM_X86_SW_PROTECTED_VM")
    return Offer(guest_memfd=gmem and mmap, gmem_mmap=mmap, guest_access=guest,
                 attributes=attributes, caps=tuple(c for c in CAPS if c not in differ),
                 left_out=tuple(left))


def run_fuzz(examples: int, pair: str = "model,host", seed: int | None = None,
             steps: int = 30, factories: KernelPair | None = None, requires: list[str] | None = None,
             progress: Callable[[FuzzReport], None] | None = None,
             progress_every: float = 2.0) -> FuzzReport:
    """Run the differential machine; the report carries the minimal divergence, if any."""
    if pair not in PAIRS and factories is None:
        raise UsageError(f"--kernel-pair must be one of {', '.join(PAIRS)}, not {pair!r}")
    if examples < 1:
        raise UsageError("--examples must be at least 1")
    offer = Offer()
    if factories is None:
        factories, requires, offer = host_pair()
    report = FuzzReport(examples, seed, left_out=list(offer.left_out))
    start = time.monotonic()
    last = [start]

    def observe(machine: DifferentialMachine) -> None:
        now = time.monotonic()
        if progress is not None and now - last[0] >= progress_every:
            last[0] = now
            report.seconds = now - start
            report.stats = type(machine).stats
            progress(report)

    machine = make_machine(factories, requires or [], observe, offer)
    # Hypothesis keeps every example's choices while it runs (hundreds of MB
    # per 10,000 examples), so a long run is a series of batches, each with
    # its own seed: memory stays bounded and the run stays reproducible.
    base = 0 if seed is None else seed
    for batch in range((examples + BATCH - 1) // BATCH):
        count = min(BATCH, examples - batch * BATCH)
        config = settings(max_examples=count, stateful_step_count=steps, deadline=None,
                          database=None, print_blob=False, report_multiple_bugs=False,
                          verbosity=Verbosity.quiet, phases=(Phase.generate, Phase.shrink),
                          suppress_health_check=list(HealthCheck))
        # @seed works on the state machine class (run_state_machine_as_test
        # copies it to the test it builds), not on a function around it.
        with_seed(base * 1_000_003 + batch)(machine)
        try:
            _as_test(machine, config)()
        except Divergence as exc:
            from .minimize import minimize
            exc.steps = minimize(exc.steps, factories)
            report.divergence = exc
            break
        except Flaky as exc:
            report.flaky = str(exc)
            break
    report.seconds = time.monotonic() - start
    report.stats = machine.stats
    return report
