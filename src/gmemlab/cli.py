"""The gmemlab command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import UsageError, internal_error_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Restricted guest memory on Linux/KVM: an exact model, the real "
                       "kernel, and the same cases on both.")

MaskOption = Annotated[str | None, typer.Option(
    "--mask", help="Hide kernel features, to see what a kernel without them gets: kvm, "
                   "guest_memfd, mmap (comma-separated; default: $GMEMLAB_HOST_MASK).")]


def _fail_usage(message: str) -> None:
    typer.echo(f"gmemlab: {message}", err=True)
    raise typer.Exit(2)


def _apply_mask(mask: str | None) -> None:
    from .host import probe

    try:
        probe.set_mask(mask)
    except UsageError as exc:
        _fail_usage(str(exc))


@app.command()
def run(
    host: Annotated[bool, typer.Option(help="Also run on the host kernel where /dev/kvm allows.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print every case's "
                                                                  "result.")] = False,
    json_file: Annotated[str | None, typer.Option("--json", help="Write every case's result "
                                                                 "here.")] = None,
    mask: MaskOption = None,
) -> None:
    """The main job: every bundled case on the model and the host, side by side."""
    from .mainjob import main_job

    _apply_mask(mask)
    try:
        ok = main_job(host=host, verbose=verbose, json_file=json_file)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    raise typer.Exit(0 if ok else 1)


@app.command("host")
def host_profile(
    json_file: Annotated[str | None, typer.Option("--json", help="Also write the profile "
                                                                 "here.")] = None,
    mask: MaskOption = None,
) -> None:
    """What the running kernel offers, and what each missing feature means for gmemlab."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from .host import probe

    _apply_mask(mask)
    prof = probe.profile()
    console = Console(highlight=False)
    console.print(prof.line(), style="cyan", markup=False)
    table = Table(title="the kernel profile", title_justify="left")
    table.add_column("what", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("what it means for gmemlab")
    for what, value, meaning in prof.rows():
        table.add_row(what, value, meaning)
    console.print(table)
    if json_file:
        doc = asdict(prof)
        doc["mask"] = sorted(prof.mask)
        doc["design"] = prof.design
        _write(json_file, json.dumps(doc, indent=2) + "\n")


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        _fail_usage(f"cannot write {path}: {exc.strerror}")


@app.command()
def conform(
    paths: Annotated[list[str], typer.Argument(help="Case files or folders of case files.")],
    kernel: Annotated[str, typer.Option("--kernel", help="model or host")] = "model",
    design: Annotated[str | None, typer.Option(
        "--design", help="Run every case on this model design instead of the one it names.")] = None,
    json_file: Annotated[str | None, typer.Option("--json", help="Also write the results here.")] = None,
    mask: MaskOption = None,
) -> None:
    """Run case files (CASES.md format) and print PASS/FAIL/SKIP per case."""
    from .conform import conform as run_conform

    _apply_mask(mask)
    def show(result: object) -> None:
        print(result.line(), flush=True)  # type: ignore[attr-defined]

    try:
        summary = run_conform(paths, kernel, design, on_result=show)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    print(summary.line())
    if json_file:
        doc = {"kernel": kernel, "design": design,
               "results": [r.as_json() for r in summary.results],
               "summary": {"passed": summary.passed, "failed": summary.failed,
                           "skipped": summary.skipped}}
        _write(json_file, json.dumps(doc, indent=2) + "\n")
    raise typer.Exit(1 if summary.failed else 0)


@app.command()
def check(
    scenario: Annotated[str, typer.Argument(help="A scenario file, or the name of a bundled one "
                                                 "(seed_default, ...).")],
    design: Annotated[str | None, typer.Option("--design", help="Check on this design instead of "
                                                                "the scenario's own.")] = None,
    all_promises: Annotated[bool, typer.Option(
        "--all", help="Go on after the first violation: each promise's shortest counterexample.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Explore in this many processes.")] = 1,
    fingerprints: Annotated[bool, typer.Option(help="Keep 128-bit fingerprints of visited states "
                                                    "(else the states).")] = True,
    symmetry: Annotated[bool, typer.Option(help="Reduce by the scenario's symmetries.")] = True,
    por: Annotated[bool, typer.Option("--por/--no-por", help="Partial-order reduction.")] = True,
    memo: Annotated[bool, typer.Option(help="Reuse a step's result where it read the same state.")] = True,
    max_states: Annotated[int, typer.Option(help="Stop after this many states (0: no limit).")] = 0,
    engine: Annotated[str, typer.Option(
        "--engine", help="Who searches: auto (the compiled core where it can, else Python), c, "
                         "python.")] = "auto",
    case_out: Annotated[str | None, typer.Option(
        "--case-out", help="Write the counterexample case file here "
                           "(default: counterexamples/SCENARIO-DESIGN.toml).")] = None,
    no_case: Annotated[bool, typer.Option("--no-case", help="Write no case file.")] = False,
    json_file: Annotated[str | None, typer.Option("--json", help="Also write the verdict here.")] = None,
    mutant: Annotated[str | None, typer.Option(
        "--mutant", help="Check a deliberately broken variant (gmemlab.checker.mutations).")] = None,
) -> None:
    """Explore every interleaving of a scenario's actors on the model; prove the
    promises or print the shortest counterexample (and write it as a case file)."""
    from .checker import ENGINES
    from .checker.cli import run_check

    if jobs < 1 or max_states < 0:
        _fail_usage("--jobs must be at least 1 and --max-states at least 0")
    if engine not in ENGINES:
        _fail_usage(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    try:
        code = run_check(scenario, design, all_promises=all_promises, jobs=jobs,
                         fingerprints=fingerprints, symmetry=symmetry, por=por, memo=memo,
                         max_states=max_states, case_out=None if no_case else (case_out or ""),
                         json_file=json_file, mutant=mutant, engine=engine)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    raise typer.Exit(code)


@app.command()
def fuzz(
    kernel_pair: Annotated[str, typer.Option("--kernel-pair", help="The kernels to compare.")] = "model,host",
    examples: Annotated[int, typer.Option("--examples", help="Random operation sequences to run.")] = 1000,
    steps: Annotated[int, typer.Option("--steps", help="Operations per sequence at most.")] = 30,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default: a fixed one).")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Also write a divergence's case here.")] = None,
    mask: MaskOption = None,
) -> None:
    """Differential testing: random operation sequences on the model and the host at once.

    Any divergence is printed as a minimal case file (CASES.md format) that
    `gmemlab conform` runs; the exit status is then 1.
    """
    from .fuzz import run_fuzz

    _apply_mask(mask)
    def show(report: object) -> None:
        typer.echo(f"fuzz: {report.summary()}", err=True)  # type: ignore[attr-defined]

    try:
        report = run_fuzz(examples, kernel_pair, seed=seed, steps=steps, progress=show)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    print(report.summary())
    for what in report.left_out:
        print(f"  left out: {what}")
    interesting = ("outcome ok", "outcome errno", "outcome signal", "guest exit none",
                   "guest exit mmio", "guest exit memory_fault")
    print("  " + ", ".join(f"{k}: {report.stats[k]}" for k in interesting))
    if report.divergence is not None:
        case = report.divergence.case()
        print(f"\n{report.divergence.message}\n\n{case}", end="")
        if out:
            _write(out, case)
    elif report.flaky is not None:
        print(f"\nthe run was not reproducible (Hypothesis reported flakiness):\n{report.flaky}")
    raise typer.Exit(0 if report.ok else 1)


@app.command("export-c")
def export_c(
    paths: Annotated[list[str], typer.Argument(help="Case files or folders of case files.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The folder to write the C files to.")],
    style: Annotated[str, typer.Option(
        "--style", help="kselftest (for tools/testing/selftests/kvm) or standalone (libc and "
                        "linux/kvm.h only, TAP output, judged as conform --kernel host)")] = "kselftest",
    model_cases: Annotated[str, typer.Option(
        "--model-cases", help="Cases written for the model: auto (export what a kernel can run of "
                              "checker counterexamples, skip the others), prefix, skip.")] = "auto",
) -> None:
    """Write each case file as a C program, one test per case (docs/UPSTREAM.md)."""
    from .export.cli import run_export

    command = " ".join(["gmemlab export-c", *paths, "-o", out, "--style", style]
                       + (["--model-cases", model_cases] if model_cases != "auto" else []))
    try:
        code = run_export(paths, out, style, model_cases, command)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    raise typer.Exit(code)


def main() -> None:
    """The console script: exit 0 when all is well, 1 for a violated promise, a divergence
    or a failed case, 2 for bad input or an internal error (one line, never a traceback)."""
    try:
        app()
    except KeyboardInterrupt:
        print("gmemlab: interrupted", file=sys.stderr)
        sys.exit(130)
    except UsageError as exc:
        print(f"gmemlab: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        print(internal_error_line(exc), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
