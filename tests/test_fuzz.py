"""The differential fuzzer: it runs clean on model and host, and it finds and
reports a planted divergence as a minimal, runnable case file."""

from __future__ import annotations

import errno
import tomllib

from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.conform.cases import parse
from gmemlab.conform.runner import run_case
from gmemlab.errors import kernel_error
from gmemlab.fuzz import run_fuzz
from gmemlab.interface import Kernel, checked
from gmemlab.model import ModelKernel

from .conftest import needs_kvm


@checked
class DupLeaksKernel(ModelKernel):
    """A model with a planted bug: the third dup of a file fails with EMFILE."""

    def __init__(self) -> None:
        super().__init__()
        self.dups = 0

    def dup(self, fd: int) -> int:
        self.dups += 1
        if self.dups >= 3:
            raise kernel_error(errno.EMFILE, "planted")
        return super().dup(fd)


def test_a_planted_divergence_becomes_a_minimal_runnable_case() -> None:
    report = run_fuzz(200, factories=(ModelKernel, DupLeaksKernel), requires=[], seed=3)
    assert report.divergence is not None
    steps = report.divergence.steps
    assert steps[-1].op == "dup"
    assert [s.op for s in steps].count("dup") == 3  # nothing else is needed
    assert len(steps) <= 5
    text = report.divergence.case()
    assert "errno = \"EMFILE\"" in text
    case = parse(tomllib.loads(text), "found.toml").cases[0]
    assert case.error is None
    # The case states the reference (the "host" side) and fails on the other.
    assert run_case(case, "model", lambda c: DupLeaksKernel()).status == "PASS"
    failing = run_case(case, "model", lambda c: ModelKernel())
    assert failing.status == "FAIL" and failing.step == len(case.steps)


@needs_kvm
def test_model_and_host_agree_on_a_short_run() -> None:
    report = run_fuzz(25, seed=1)
    assert report.ok, report.divergence.case() if report.divergence else report.flaky
    assert report.stats["steps"] > 100


def test_cli_refuses_unknown_pairs() -> None:
    for pair in ("model,model", "host,model", "model:nope,host", "model:gmem-6.18"):
        result = CliRunner().invoke(app, ["fuzz", "--kernel-pair", pair, "--examples", "1"])
        assert result.exit_code == 2, pair
        assert "kernel-pair" in result.output or "unknown design" in result.output


def test_two_designs_every_difference_is_a_minimal_runnable_case() -> None:
    """gmem-6.8 against gmem-6.18: what a VMM sees change when guest_memfd learns mmap."""
    report = run_fuzz(120, "model:gmem-6.8,model:gmem-6.18", seed=4)
    assert report.differences and not report.divergence
    seen = set()
    for n, diff in enumerate(report.differences):
        last = diff.steps[-1]
        seen.add(last.op)
        assert last.compared("a") != last.compared("b")
        text = diff.case(f"d{n}")
        case = parse(tomllib.loads(text), "d.toml").cases[0]
        assert case.error is None and case.design == "gmem-6.18" and case.kernel == "model"
        # The case states what the second design does, and the first does something else.
        assert run_case(case, "model", lambda c: ModelKernel("gmem-6.18")).status == "PASS"
        failing = run_case(case, "model", lambda c: ModelKernel("gmem-6.8"))
        assert failing.status == "FAIL" and failing.step == len(case.steps), text
    # 6.18's creation flags are among the first differences anyone meets.
    assert "create_guest_memfd" in seen or "check_extension" in seen


def test_kernel_protocol_still_holds() -> None:
    assert isinstance(DupLeaksKernel(), Kernel)
