"""gmemlab compare --kernel host: calibration and validation on the running kernel."""

from __future__ import annotations

import pytest

from gmemlab.compare import calibration, costmodel, counting, validation, workloads

from .conftest import GMEM_MISSING, needs_guest

SMALL = {"memory": "64M", "pages": 512, "pool_at": "4M", "ios": 256}


@needs_guest
def test_calibration_measures_this_kernel() -> None:
    cal = calibration.calibrate(reps=1, scale=0.05)
    for event in ("exit", "mmap", "munmap", "madvise", "memslot", "syscall", "ioctl",
                  "fallocate:alloc", "free_page", "copy", "copy_byte"):
        m = cal.measured[event]
        assert m.low <= m.median <= m.high and m.reps == 1
    assert cal.measured["exit"].median > cal.measured["syscall"].median
    assert "hypercall" not in cal.measured  # assumed, never measured
    assert cal.profile.startswith("kernel ")


@needs_guest
@pytest.mark.parametrize("design", ["page-mmap", "kvm-map"])
def test_validation_replays_the_trace_with_a_real_guest(design: str) -> None:
    resolved = workloads.load("dma-pool").resolve(SMALL)
    run = counting.count(resolved, design, keep=True)
    model = costmodel.CostModel(calibration.reference())
    v = validation.validate(run, model, repeats=1)
    assert v.ran, v.reason
    assert v.requests == 512 + 256 + 256 + 256
    assert v.measured > 0 and v.predicted > 0 and v.left_out > 0
    # The host's address space ends as the model's does.
    assert v.vmas_host == v.vmas_model
    assert [name for name, _, _ in v.steps] == [s.name for s in run.steps]


@needs_guest
@pytest.mark.skipif(GMEM_MISSING is None, reason="this kernel has guest_memfd")
def test_guest_memfd_designs_are_not_validated_without_guest_memfd() -> None:
    resolved = workloads.load("dma-pool").resolve(SMALL)
    run = counting.count(resolved, "inplace", keep=True)
    v = validation.validate(run, costmodel.CostModel(calibration.reference()), repeats=1)
    assert not v.ran and v.reason is not None and "guest_memfd" in v.reason
