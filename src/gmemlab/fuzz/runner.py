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
from ..interface import GuestAccess, Kernel
from .machine import CAPS, DifferentialMachine, Divergence, KernelPair, Offer, make_machine

if TYPE_CHECKING:
    from ..host.probe import KernelProfile

PAIRS = ("model,host", "model:DESIGN,host", "model:DESIGN,model:DESIGN")
BATCH = 2000
COLLECT_BATCH = 40  # examples per batch between two designs (what was learned applies next)
MAX_DIFFERENCES = 25  # distinct differences reported between two designs


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
    # Between two designs: every distinct difference found, each minimal, shortest first.
    differences: list[Divergence] = field(default_factory=list)
    found: int = 0  # divergences recorded so far (between two designs, before grouping)
    pair: str = "model,host"

    @property
    def ok(self) -> bool:
        return self.divergence is None and self.flaky is None and not self.differences

    def summary(self) -> str:
        s = self.stats
        if self.differences or self.found:
            verdict = f"{len(self.differences) or self.found} DIFFERENCES"
        else:
            verdict = "no divergence" if self.ok else "DIVERGENCE" if self.divergence else "FLAKY"
        return (f"{verdict}: {s['examples']} examples run ({self.examples} asked), "
                f"{s['steps']} steps, {s['op guest_access']} guest accesses, "
                f"{self.seconds:.1f} s")


@dataclass
class Pair:
    """The two kernels a run compares, and how to talk about them."""

    factories: KernelPair
    requires: list[str]
    offer: Offer
    labels: dict[str, str]
    header: dict[str, str]  # the divergence case's kernel and design
    collect: bool  # two designs: collect every difference


def parse_pair(text: str) -> Pair:
    """model,host | model:DESIGN,host | model:DESIGN,model:DESIGN."""
    from ..model.designs import make_design

    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not parts[0].startswith("model") or (
            parts[1] != "host" and not parts[1].startswith("model:")):
        raise UsageError(f"--kernel-pair must be one of {', '.join(PAIRS)}, not {text!r}")
    designs = []
    for part in parts:
        kind, _, design = part.partition(":")
        if kind not in ("model", "host") or (kind == "model" and ":" in part and not design):
            raise UsageError(f"--kernel-pair: {part!r} is not model, model:DESIGN or host")
        if design:
            make_design(design)  # an unknown name is a usage error
        designs.append(design)
    if parts[1] == "host":
        return host_pair(designs[0] or None)
    first, second = designs[0] or "gmem-6.18", designs[1]
    return Pair(design_factories(first, second), [], Offer(private_vms=True, model_only=True),
                {"a": f"model:{first}", "b": f"model:{second}"},
                {"kernel": "model", "design": second}, collect=True)


def design_factories(first: str, second: str) -> KernelPair:
    from ..model import ModelKernel

    def a() -> Kernel:
        return ModelKernel(first)

    def b() -> Kernel:
        return ModelKernel(second)

    return a, b


def host_pair(design: str | None = None) -> Pair:
    """The model under the design matching the running kernel (or the one given), on the
    kernel's guest path, and HostKernel; and what of the interface the kernel offers."""
    from ..host import HostKernel, probe
    from ..model import ModelKernel

    prof = probe.profile()
    if not prof.usable:
        raise UsageError(f"fuzz needs the host kernel: no usable /dev/kvm ({prof.kvm_missing})")
    path = prof.access_path or "mmu"
    design = design or prof.design

    def model() -> Kernel:
        return ModelKernel(design, guest_path=path)

    return Pair((model, HostKernel), [f"guest:{path}"], offer_for(prof, design),
                {"a": "model" if design == prof.design else f"model:{design}", "b": "host"}, {},
                collect=False)


def offer_for(prof: KernelProfile, design: str) -> Offer:
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
    with ModelKernel(design) as model, HostKernel() as host:
        differ = [cap for cap in CAPS
                  if model.check_extension(cap) != host.check_extension(cap)]
    names = {v: k for k, v in uapi.CAPS.items()}
    if differ:
        left.append("check_extension of " + ", ".join(names[c] for c in differ) +
                    f": the kernel's build and design {design} answer differently")
    attributes = uapi.KVM_CAP_MEMORY_ATTRIBUTES not in differ
    if not attributes:
        left.append("set_memory_attributes: the kernel's memory attributes differ from the "
                    f"design's ({design})")
    left.append("VM type 1 and KVM_CAP_VM_TYPES: the model always has KVM_X86_SW_PROTECTED_VM")
    return Offer(guest_memfd=gmem and mmap, gmem_mmap=mmap, guest_access=guest,
                 attributes=attributes, caps=tuple(c for c in CAPS if c not in differ),
                 left_out=tuple(left))


def run_fuzz(examples: int, pair: str = "model,host", seed: int | None = None,
             steps: int = 30, factories: KernelPair | None = None, requires: list[str] | None = None,
             progress: Callable[[FuzzReport], None] | None = None,
             progress_every: float = 2.0) -> FuzzReport:
    """Run the differential machine; the report carries the minimal divergence, if any
    (between two designs: every distinct difference, each minimal)."""
    if examples < 1:
        raise UsageError("--examples must be at least 1")
    if factories is None:
        chosen = parse_pair(pair)
    else:
        chosen = Pair(factories, requires or [], Offer(), {"a": "model", "b": "host"}, {},
                      collect=False)
    factories = chosen.factories
    report = FuzzReport(examples, seed, left_out=list(chosen.offer.left_out), pair=pair)
    start = time.monotonic()
    last = [start]

    def observe(machine: DifferentialMachine) -> None:
        now = time.monotonic()
        if progress is not None and now - last[0] >= progress_every:
            last[0] = now
            report.seconds = now - start
            report.stats = type(machine).stats
            report.found = len(type(machine).collected or ())
            progress(report)

    machine = make_machine(factories, chosen.requires, observe, chosen.offer, chosen.labels,
                           chosen.header, collect=chosen.collect)
    # Hypothesis keeps every example's choices while it runs (hundreds of MB
    # per 10,000 examples), so a long run is a series of batches, each with
    # its own seed: memory stays bounded and the run stays reproducible.
    base = 0 if seed is None else seed
    size = COLLECT_BATCH if chosen.collect else BATCH
    for batch in range((examples + size - 1) // size):
        count = min(size, examples - batch * size)
        machine.known |= machine.learned
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
    if machine.collected:
        report.differences = distinct(machine.collected, factories)
    report.seconds = time.monotonic() - start
    report.stats = machine.stats
    return report


def kind_of(d: Divergence) -> tuple[str, str, str]:
    """What kind of difference: the operation and each side's kind of answer (an errno's
    name, a guest exit's name, "returned"), not the particular values."""
    last = d.steps[-1]

    def answer(side: str) -> str:
        out = last.outcomes[side]
        if isinstance(out.value, GuestAccess):
            return f"exit {out.value.exit}"
        if out.ok:
            return "returned"
        return last.describe(side)

    return (last.op, answer("a"), answer("b"))


def distinct(found: list[Divergence], factories: KernelPair) -> list[Divergence]:
    """One minimal divergence per distinct difference (operation and both answers)."""
    from .minimize import minimize

    shortest: dict[tuple[str, str, str], Divergence] = {}
    for d in found:
        key = kind_of(d)
        if key is not None and (key not in shortest or len(d.steps) < len(shortest[key].steps)):
            shortest[key] = d
    out = []
    for d in sorted(shortest.values(), key=lambda d: len(d.steps))[:MAX_DIFFERENCES]:
        d.steps = minimize(d.steps, factories, budget=120)
        out.append(d)
    # Minimising can turn two findings into the same one: keep the first of each.
    seen: set[tuple[str, str, str] | None] = set()
    unique = []
    for d in sorted(out, key=lambda d: len(d.steps)):
        key = kind_of(d)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique
