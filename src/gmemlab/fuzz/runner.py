"""`gmemlab fuzz`: run the differential machine for N examples, with progress."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import seed as with_seed
from hypothesis.errors import Flaky
from hypothesis.stateful import run_state_machine_as_test

from ..errors import UsageError
from ..interface import Kernel
from .machine import DifferentialMachine, Divergence, KernelPair, make_machine

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

    @property
    def ok(self) -> bool:
        return self.divergence is None and self.flaky is None

    def summary(self) -> str:
        s = self.stats
        verdict = "no divergence" if self.ok else "DIVERGENCE" if self.divergence else "FLAKY"
        return (f"{verdict}: {s['examples']} examples run ({self.examples} asked), "
                f"{s['steps']} steps, {s['op guest_access']} guest accesses, "
                f"{self.seconds:.1f} s")


def host_pair() -> tuple[KernelPair, list[str]]:
    """ModelKernel("gmem-6.18") on this machine's guest path, and HostKernel."""
    from ..host import HostKernel, host_unavailable
    from ..model import ModelKernel
    from ..vmm import asm

    missing = host_unavailable() or asm.missing_reason()
    if missing:
        raise UsageError(f"fuzz needs the host kernel: {missing}")
    with HostKernel() as probe:
        path = probe.access_path()

    def model() -> Kernel:
        return ModelKernel("gmem-6.18", guest_path=path)

    return (model, HostKernel), [f"guest:{path}"]


def run_fuzz(examples: int, pair: str = "model,host", seed: int | None = None,
             steps: int = 30, factories: KernelPair | None = None, requires: list[str] | None = None,
             progress: Callable[[FuzzReport], None] | None = None,
             progress_every: float = 2.0) -> FuzzReport:
    """Run the differential machine; the report carries the minimal divergence, if any."""
    if pair not in PAIRS and factories is None:
        raise UsageError(f"--kernel-pair must be one of {', '.join(PAIRS)}, not {pair!r}")
    if examples < 1:
        raise UsageError("--examples must be at least 1")
    if factories is None:
        factories, requires = host_pair()
    report = FuzzReport(examples, seed)
    start = time.monotonic()
    last = [start]

    def observe(machine: DifferentialMachine) -> None:
        now = time.monotonic()
        if progress is not None and now - last[0] >= progress_every:
            last[0] = now
            report.seconds = now - start
            report.stats = type(machine).stats
            progress(report)

    machine = make_machine(factories, requires or [], observe)
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
