"""gmemlab compare on the model: workloads, counts derived from the semantics, reasons,
JSON and plots, calibration files, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gmemlab.compare import calibration, costmodel, counting, workloads
from gmemlab.compare.command import run_compare
from gmemlab.errors import UsageError
from gmemlab.model import designs as model_designs

SMALL = {"memory": "4M", "pages": 8, "pool_at": "1M", "ios": 4}


def small_pool(**extra: object) -> workloads.Resolved:
    return workloads.load("dma-pool").resolve({**SMALL, **extra})


def step(run: counting.DesignRun, name: str) -> counting.StepResult:
    return next(s for s in run.steps if s.name == name)


def test_page_mmap_vmas_follow_the_shared_runs() -> None:
    run = counting.count(small_pool(), "page-mmap")
    assert run.host_side == "page-mmap"
    share, back, rest = (step(run, n) for n in ("share the pool", "give back by pattern",
                                                "give back the rest"))
    # 8 single-page mmaps at canonical addresses: the first makes a VMA, each next one
    # merges with its left neighbour.
    assert share.events["mmap"] == 8 and share.costs.vma_merges == 7
    assert share.costs.vma_count == 1
    # Giving back pages 0, 2, 4, 6: page 0 splits at one edge, the others in the middle.
    assert back.events["munmap"] == 4 and back.costs.vma_splits == 1 + 2 * 3
    assert back.costs.vma_count == 4  # every other page shared: one VMA each
    assert rest.costs.vma_splits == 0 and rest.costs.vma_count == 0
    assert run.max_vmas == 4  # the most: every other page shared
    # One exit per request: 8 shares, 4 I/O kicks, 4 + 4 unshares.
    assert len(run.requests) == 20 and run.total()["exit"] == 20 and run.conversions == 16
    # The guest's MEM_SHARE and MEM_UNSHARE per page (donations are boot, in setup).
    assert run.total()["hypercall"] == 16 and run.setup.events["hypercall"] == 8
    # I/O touched pool pages 0-3 first: four faults; unsharing them zaps populated pages.
    assert run.total()["host_fault"] == 4
    assert back.events["populated_zap"] == 2 and rest.events["populated_zap"] == 2


def test_kvm_map_and_inplace_keep_one_vma() -> None:
    kvm = counting.count(small_pool(), "kvm-map")
    share = step(kvm, "share the pool")
    assert share.events["mmap"] == 8 and share.costs.vma_merges == 7
    assert kvm.total()["munmap"] == 0 and kvm.max_vmas == 1
    assert kvm.total()["host_zap"] == 8  # each conversion to private zaps the host's PTEs
    for design in ("inplace", "pkvm-inplace"):
        run = counting.count(small_pool(), design)
        assert run.host_side == "in-place" and run.max_vmas == 1
        assert run.total()["vma_split"] == 0 and run.total()["vma_merge"] == 0
    deferred = counting.count(small_pool(), "pkvm-inplace")
    # pkvm-inplace defers the unshare of the 4 pages the host touched until it drops them.
    assert deferred.total()["madvise"] == 4
    assert sum(s.costs.deferred for s in deferred.steps) == 4


def test_granule_and_pattern_change_the_requests() -> None:
    run = counting.count(small_pool(granule="16K", pattern="odd"), "page-mmap")
    back = step(run, "give back by pattern")
    assert step(run, "share the pool").requests == 2  # two 16 KiB granules
    assert back.requests == 1 and run.requests[-2].first == 256 + 4  # the second granule


def test_designs_that_cannot_express_say_why() -> None:
    for design in ("gmem-6.8", "gmem-6.18"):
        run = counting.count(small_pool(), design)
        assert not run.ran and run.host_side is None
        assert "not in place" in dict(run.tried)["separate"]
    big = small_pool(memory="1G")
    for design in ("seed", "seed-as-written"):
        run = counting.count(big, design)
        assert not run.ran
    seed = dict(counting.count(big, "seed").tried)
    assert "EPERM" in seed["whole-file"] and "private" in seed["whole-file"]
    assert "EINVAL" in seed["page-mmap"]
    assert "needs 262144 memslots; KVM allows 32764" in seed["memslot-per-unit"]


def test_the_proposal_serves_a_small_guest_with_a_memslot_per_page() -> None:
    # 4 MiB of guest memory at 4 KiB per memslot: 1,024 memslots, within KVM's 32,764.
    run = counting.count(small_pool(), "seed")
    assert run.host_side == "memslot-per-unit" and run.memslots == 1024
    share = step(run, "share the pool")
    assert share.events["mmap"] == 8 and share.costs.vma_merges == 0  # one file each
    assert run.max_vmas == 8 and run.setup.events["memslot"] == 1024


def test_every_workload_runs_or_reports_under_every_design() -> None:
    small = {"memory": "8M", "pages": 16, "pool_at": "1M", "pool": "2M", "singles": 4,
             "singles_at": "4M", "ios": 8, "buffers": 4, "buffers_at": "1M", "ranges": 4,
             "region": "1M", "requests": 64}
    for name in workloads.bundled_names():
        w = workloads.load(name)
        resolved = w.resolve({k: v for k, v in small.items() if k in dict(w.params)})
        for design in model_designs.DESIGNS:
            run = counting.count(resolved, design)
            assert run.ran or run.reason, (name, design)
            if run.ran:
                assert run.requests and not run.refusals(), (name, design, run.refusals())
                snaps = [s for s in run.steps if s.kind == "snapshot"]
                for s in snaps:
                    assert s.leaked_pages == 0 and s.readable_pages == 2 * 256 + 4


def test_a_design_added_later_is_compared_without_code(monkeypatch: pytest.MonkeyPatch) -> None:
    later = replace(model_designs.PKVM_INPLACE, name="later-design")
    monkeypatch.setitem(model_designs.DESIGNS, "later-design", later)
    run = counting.count(small_pool(), "later-design")
    assert run.ran and run.host_side == "in-place"


def test_fragment_stops_at_vm_max_map_count() -> None:
    w = workloads.load("fragment").resolve({"memory": "4M", "region": "4M", "requests": 2000})
    run = counting.count(w, "page-mmap", max_map_count=50)
    assert run.limits() == {"vm.max_map_count": 1}
    assert run.max_vmas == 51 and run.steps[0].stopped == "vm.max_map_count"
    inplace = counting.count(w, "inplace", max_map_count=50)
    assert not inplace.limits() and inplace.max_vmas == 1


def test_balloon_frees_what_the_guest_returns() -> None:
    w = workloads.load("balloon").resolve({"memory": "8M", "ranges": 4})
    for design in ("inplace", "page-mmap"):
        run = counting.count(w, design)
        assert run.steps[0].costs.pages_allocated == 2048
        assert run.steps[1].costs.pages_freed == 1024 and run.steps[1].requests == 4


def test_counting_costs_operations_not_pages() -> None:
    start = time.perf_counter()
    small = counting.count(small_pool(memory="1G", pool_at="64M"), "page-mmap")
    mid = time.perf_counter()
    huge = counting.count(small_pool(memory="1T", pool_at="64M"), "page-mmap")
    end = time.perf_counter()
    assert huge.total() == small.total()
    assert end - mid < 3 * (mid - start) + 0.5


def test_cost_model_and_sensitivity() -> None:
    cal = calibration.reference()
    model = costmodel.CostModel(cal)
    assert model.cost("exit").kind == "measured"
    assert model.cost("tlb_shootdown").kind == "assumed"
    assert model.cost("fallocate:alloc@gmem").kind in ("measured", "proxy")
    events = {"exit": 10, "tlb_shootdown": 5}
    assert model.predict(events) == pytest.approx(10 * model.cost("exit").seconds + 5 * 2e-6)
    curves = costmodel.sensitivity(model, {"a": {"exit": 1, "tlb_shootdown": 1},
                                           "b": {"exit": 1, "tlb_shootdown": 100}})
    order = costmodel.rankings(curves["tlb_shootdown"])
    assert order[0] == ["a", "b"] and order[-1] == ["a", "b"]
    assert curves["tlb_shootdown"]["b"][-1][1] > curves["tlb_shootdown"]["b"][0][1]


def test_calibration_file_round_trips(tmp_path: Path) -> None:
    cal = calibration.reference()
    path = tmp_path / "cal.json"
    cal.save(path)
    again = calibration.Calibration.load(path)
    assert again.measured == cal.measured and again.profile == cal.profile
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UsageError, match="not a gmemlab calibration file"):
        calibration.Calibration.load(tmp_path / "bad.json")


def test_json_and_plots(tmp_path: Path) -> None:
    from rich.console import Console

    out = tmp_path / "dp.json"
    log = (tmp_path / "log").open("w")
    sets = [f"{k}={v}" for k, v in {**SMALL, "memory": "8M"}.items()]
    code = run_compare("dma-pool", "page-mmap,inplace,gmem-6.8", sets,
                       {}, "model", None, str(out), str(tmp_path / "plots"), None, None, 1,
                       Console(file=log, width=200), jobs=1)
    log.close()
    assert code == 0
    doc = json.loads(out.read_text())
    by = {d["design"]: d for d in doc["designs"]}
    assert by["gmem-6.8"]["expressible"] is False and "in place" in by["gmem-6.8"]["reason"]
    assert by["page-mmap"]["events"]["mmap"] == 8 and by["page-mmap"]["predicted_s"] > 0
    assert doc["costs"]["tlb_shootdown"]["kind"] == "assumed" and doc["costs"]["tlb_shootdown"]["source"]
    assert set(by["page-mmap"]["predicted_by_event_s"]) >= {"exit", "mmap"}
    # The sweep leaves out the pool sizes that do not fit in 8 MiB of guest memory.
    assert [p["value"] for p in doc["sweep"]["inplace"]] == [256, 1024]
    assert any("left out" in note for note in doc["notes"])
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["dma-pool-per-conversion.png", "dma-pool-predicted.png",
                    "dma-pool-sensitivity.png", "dma-pool-vmas.png"]
    assert all((tmp_path / "plots" / p.replace(".png", ".svg")).is_file() for p in pngs)


def test_workloads_from_python_and_bad_files(tmp_path: Path) -> None:
    w = workloads.Workload(
        name="two-pages", about="", guest="pkvm", params=(("memory", "1M"),),
        steps=(workloads.Step.make("share", size="8K"), workloads.Step.make("unshare", size="8K")))
    run = counting.count(w.resolve(), "inplace")
    assert run.conversions == 4
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[params]\nmemory = "1M"\n[[step]]\ndo = "share"\nsize = "2M"\n')
    with pytest.raises(UsageError, match="beyond guest memory"):
        workloads.load(str(bad))
    with pytest.raises(UsageError, match="unknown pattern"):
        small_pool(pattern="sideways")


@pytest.mark.parametrize("args", [
    ["compare", "no-such-workload"],
    ["compare", "dma-pool", "--designs", "bogus"],
    ["compare", "dma-pool", "--set", "pages=lots"],
    ["compare", "dma-pool", "--pattern", "sideways"],
    ["compare", "dma-pool", "--kernel", "elsewhere"],
    ["compare", "dma-dynamic", "--pages", "8"],
    ["compare", "dma-pool", "--calibration", "/nonexistent.json"],
    ["calibrate", "--reps", "0"],
])
def test_bad_input_is_one_line_and_exit_2(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "gmemlab", *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmemlab: ")
