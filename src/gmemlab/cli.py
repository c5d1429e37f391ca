"""The gmemlab command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Restricted guest memory on Linux/KVM: an exact model, the real "
                       "kernel, and the same cases on both.")


def _fail_usage(message: str) -> None:
    typer.echo(f"gmemlab: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def run(
    host: Annotated[bool, typer.Option(help="Also run on the host kernel where /dev/kvm allows.")] = True,
) -> None:
    """The main job: every bundled case on the model and the host, side by side."""
    from .mainjob import main_job

    try:
        ok = main_job(host=host)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    raise typer.Exit(0 if ok else 1)


@app.command()
def conform(
    paths: Annotated[list[str], typer.Argument(help="Case files or folders of case files.")],
    kernel: Annotated[str, typer.Option("--kernel", help="model or host")] = "model",
    design: Annotated[str | None, typer.Option(
        "--design", help="Run every case on this model design instead of the one it names.")] = None,
    json_file: Annotated[str | None, typer.Option("--json", help="Also write the results here.")] = None,
) -> None:
    """Run case files (CASES.md format) and print PASS/FAIL/SKIP per case."""
    from .conform import conform as run_conform

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
        try:
            Path(json_file).write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            _fail_usage(f"cannot write {json_file}: {exc.strerror}")
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
) -> None:
    """Differential testing: random operation sequences on the model and the host at once.

    Any divergence is printed as a minimal case file (CASES.md format) that
    `gmemlab conform` runs; the exit status is then 1.
    """
    from .fuzz import run_fuzz

    def show(report: object) -> None:
        typer.echo(f"fuzz: {report.summary()}", err=True)  # type: ignore[attr-defined]

    try:
        report = run_fuzz(examples, kernel_pair, seed=seed, steps=steps, progress=show)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    print(report.summary())
    interesting = ("outcome ok", "outcome errno", "outcome signal", "guest exit none",
                   "guest exit mmio", "guest exit memory_fault")
    print("  " + ", ".join(f"{k}: {report.stats[k]}" for k in interesting))
    if report.divergence is not None:
        case = report.divergence.case()
        print(f"\n{report.divergence.message}\n\n{case}", end="")
        if out:
            try:
                Path(out).write_text(case)
            except OSError as exc:
                _fail_usage(f"cannot write {out}: {exc.strerror}")
    elif report.flaky is not None:
        print(f"\nthe run was not reproducible (Hypothesis reported flakiness):\n{report.flaky}")
    raise typer.Exit(0 if report.ok else 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
