"""`gmemlab compare` and `gmemlab calibrate`: the commands behind the CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import UsageError
from ..host import probe
from ..model.designs import DESIGNS
from . import calibration as cal
from . import counting, hostops, hostsides, validation, workloads
from .costmodel import ASSUMED, CostModel
from .report import Comparison, as_json, conversion_cost, print_comparison
from .workloads import Resolved

# Options that set a workload parameter of the same name, where the workload has one.
SHORTHANDS = ("memory", "pages", "granule", "pattern")
DEFAULT_CALIBRATION = "gmemlab-calibration.json"


def parse_sets(sets: list[str]) -> dict[str, str]:
    out = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--set expects NAME=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def pick_designs(text: str | None) -> list[str]:
    if not text:
        return list(DESIGNS)
    names = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in DESIGNS]
    if unknown or not names:
        raise UsageError(f"unknown design {', '.join(unknown) or repr(text)} "
                         f"(designs: {', '.join(DESIGNS)})")
    return names


def list_workloads(console: Console) -> None:
    t = Table(title="bundled workloads (gmemlab compare NAME; or a .toml file)",
              title_justify="left")
    for col in ("name", "guest", "parameters (defaults)", "what"):
        t.add_column(col)
    for name in workloads.bundled_names():
        w = workloads.load(name)
        t.add_row(name, w.guest, ", ".join(f"{k}={v}" for k, v in w.params), w.about)
    console.print(t)


def load_calibration(path: str | None, kernel: str, console: Console,
                     reps: int = 5) -> cal.Calibration:
    if path:
        return cal.Calibration.load(path)
    if kernel == "host":
        with _progress(console) as progress:
            task = progress.add_task("calibrating this kernel", total=len(cal.PLANS))
            result = cal.calibrate(reps=reps, progress=lambda name, i, total: progress.update(
                task, completed=i, description=f"calibrating: {name}"))
        result.source = "measured here just now"
        return result
    return cal.reference()


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}"),
                    TimeElapsedColumn(), console=console, transient=True)


def run_compare(name: str, designs: str | None, sets: list[str], shorthands: dict[str, Any],
                kernel: str, calibration_file: str | None, json_file: str | None,
                plots: str | None, host_side: str | None, max_map_count: int | None,
                repeats: int, console: Console, jobs: int | None = None) -> int:
    if name == "list":
        list_workloads(console)
        return 0
    if kernel not in ("model", "host"):
        raise UsageError(f"--kernel must be model or host, not {kernel!r}")
    if repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if host_side is not None and host_side not in hostsides.BY_NAME:
        raise UsageError(f"unknown host side {host_side!r} "
                         f"(host sides: {', '.join(hostsides.BY_NAME)})")
    if max_map_count is not None and max_map_count < 1:
        raise UsageError("--max-map-count must be positive")
    workload = workloads.load(name)
    overrides: dict[str, Any] = parse_sets(sets)
    params = workload.defaults()
    for key, value in shorthands.items():
        if value is None:
            continue
        if key not in params:
            raise UsageError(f"workload {workload.name} has no parameter {key} (parameters: "
                             f"{', '.join(params)}; use --set NAME=VALUE)")
        overrides[key] = value
    resolved = workload.resolve(overrides)
    chosen = pick_designs(designs)
    if kernel == "host":
        why = hostops.missing()
        if why is not None:
            raise UsageError(f"--kernel host: {why}")
    model = CostModel(load_calibration(calibration_file, kernel, console))
    # A workload may scale the limit down (fragment: the VMA count grows by one per
    # fragment, so a lower limit is reached in proportionally fewer requests).
    scaled = resolved.params.get("max_map_count")
    limit = max_map_count or (int(scaled) if isinstance(scaled, int) else 65530)
    comparison = Comparison(resolved, model, [], max_map_count=limit)
    comparison.runs = count_all(resolved, chosen, keep=kernel == "host", max_map_count=limit,
                                host_side=host_side, jobs=jobs, console=console)
    if kernel == "host":
        validate_all(comparison, repeats, console)
    if plots:
        sweep(comparison, host_side, console)
    print_comparison(comparison, console)
    if json_file:
        _write(json_file, json.dumps(as_json(comparison), indent=2, default=str) + "\n")
    if plots:
        from .plots import draw

        written = draw(comparison, plots)
        console.print(f"  plots: {', '.join(str(p) for p in written if p.suffix == '.png')} "
                      "(and .svg)", markup=False)
    bad = comparison.failed_validations()
    for v in bad:
        console.print(f"[red]validation: {v.design} is off by {v.error:+.0%}: the cost model "
                      f"misses something this kernel does[/red]")
    return 1 if bad else 0


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _count_one(args: tuple[Resolved, str, bool, int, str | None]) -> counting.DesignRun:
    resolved, design, keep, limit, host_side = args
    return counting.count(resolved, design, keep=keep, max_map_count=limit, host_side=host_side)


def count_all(resolved: Resolved, designs: list[str], keep: bool, max_map_count: int,
              host_side: str | None, jobs: int | None, console: Console) -> list[counting.DesignRun]:
    """Every design counted, in `jobs` processes (designs are independent)."""
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    runs: dict[str, counting.DesignRun] = {}
    with _progress(console) as progress:
        if jobs == 1 or len(designs) == 1:
            for design in designs:
                task = progress.add_task(f"{design}: counting requests", total=None)

                def show(done: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done)

                runs[design] = counting.count(resolved, design, keep=keep,
                                              max_map_count=max_map_count, host_side=host_side,
                                              progress=show)
                progress.remove_task(task)
        else:
            task = progress.add_task(f"counting {len(designs)} designs in {jobs} processes",
                                     total=len(designs))
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(jobs, mp_context=context) as pool:
                futures = {pool.submit(_count_one, (resolved, d, keep, max_map_count, host_side)): d
                           for d in designs}
                for future in as_completed(futures):
                    runs[futures[future]] = future.result()
                    progress.advance(task)
    return [runs[d] for d in designs]


def validate_all(c: Comparison, repeats: int, console: Console) -> None:
    budget = validation.vma_budget()
    for i, run in enumerate(c.runs):
        if not run.ran:
            c.validations[run.design] = validation.Validation(
                run.design, False, reason="the design cannot express the workload")
            continue
        why = validation.runnable(run)
        if why is not None:
            c.validations[run.design] = validation.Validation(run.design, False, reason=why)
            continue
        target = run
        note = None
        if run.max_vmas > budget:
            # The host must not reach the real limit: this interpreter needs VMAs of its own.
            with console.status(f"{run.design}: counting again with vm.max_map_count {budget}"):
                target = counting.count(c.resolved, run.design, keep=True, max_map_count=budget,
                                        host_side=run.host_side)
            note = (f"run with the model's vm.max_map_count lowered to {budget:,} (this process "
                    f"has {validation.count_vmas():,} VMAs and needs room to run)")
        with console.status(f"{run.design}: replaying {len(target.requests):,} requests on "
                            f"this kernel with a real guest"):
            v = validation.validate(target, c.model, repeats)
        if note:
            v.notes.append(note)
        c.validations[run.design] = v
        run.calls = []  # the trace is not needed any more
        c.runs[i] = run


def sweep(c: Comparison, host_side: str | None, console: Console) -> None:
    w = c.resolved.workload
    if w.sweep is None or not w.sweep_values:
        return
    overrides = {k: v for k, v in c.resolved.params.items() if k in dict(w.params)}
    with _progress(console) as progress:
        task = progress.add_task("sweep", total=len(w.sweep_values) * len(c.ran()))
        for run in c.ran():
            points = []
            for value in w.sweep_values:
                progress.update(task, description=f"sweep {w.sweep}={value}: {run.design}")
                try:
                    resolved = w.resolve({**overrides, w.sweep: value})
                except UsageError as exc:
                    note = f"sweep: {w.sweep}={value} left out ({exc})"
                    if note not in c.notes:
                        c.notes.append(note)
                    progress.advance(task)
                    continue
                other = counting.count(resolved, run.design, max_map_count=c.max_map_count,
                                       host_side=host_side or run.host_side)
                per = conversion_cost(c.model, other)
                if per is not None:
                    points.append((resolved.params[w.sweep], per, other.conversions))
                progress.advance(task)
            c.sweep[run.design] = points


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def run_calibrate(out: str, reps: int, quick: bool, console: Console) -> int:
    if reps < 1:
        raise UsageError("--reps must be at least 1")
    why = hostops.missing()
    if why is not None:
        raise UsageError(f"cannot calibrate here: {why}")
    console.print(probe.profile().line(), style="cyan", markup=False)
    with _progress(console) as progress:
        task = progress.add_task("calibrating", total=len(cal.PLANS))
        result = cal.calibrate(reps=reps, scale=0.25 if quick else 1.0,
                               progress=lambda name, i, total: progress.update(
                                   task, completed=i, description=f"calibrating: {name}"))
    model = CostModel(result)
    t = Table(title=f"what each event costs on this kernel (median of {reps}, VMM thread CPU "
                    "time)", title_justify="left")
    for col in ("event", "median µs", "lowest-highest µs", "measured as"):
        t.add_column(col, justify="right" if "µs" in col else "left")
    for event, m in sorted(result.measured.items()):
        scale, unit = (1e9, " ns/B") if event == "copy_byte" else (1e6, "")
        t.add_row(event, f"{m.median * scale:.3g}{unit}",
                  f"{m.low * scale:.3g}-{m.high * scale:.3g}", m.how)
    console.print(t)
    a = Table(title="assumed: events this machine cannot perform (never shown as measured)",
              title_justify="left")
    for col in ("event", "value µs", "range µs", "what", "source"):
        a.add_column(col, justify="right" if "µs" in col else "left")
    for event, v in ASSUMED.items():
        a.add_row(event, f"{v.value * 1e6:.3g}", f"{v.low * 1e6:.3g}-{v.high * 1e6:.3g}", v.what,
                  v.source)
    console.print(a)
    for note in result.notes:
        console.print(f"  note: {note}", markup=False)
    try:
        result.save(out)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from None
    console.print(f"  written: {out} (use it with gmemlab compare --calibration {out})",
                  markup=False)
    del model
    return 0
