"""The gmemlab command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .errors import UsageError, internal_error_line

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Restricted guest memory on Linux/KVM: an exact model, the real "
                       "kernel, and the same cases on both.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"gmemlab {version('gmemlab')}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print gmemlab's version and exit.")] = False,
) -> None:
    """Restricted guest memory on Linux/KVM: an exact model, the real kernel, and the same
    cases on both.  Exit status: 0 all is well; 1 a failed case, a disagreement, a
    divergence or a violated promise; 2 bad input or an internal error."""

MaskOption = Annotated[str | None, typer.Option(
    "--mask", metavar="MASK", help="Hide kernel features, to see what a kernel without them gets: kvm, "
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
    json_file: Annotated[str | None, typer.Option("--json", metavar="FILE", help="Write every case's result "
                                                                 "here.")] = None,
    mask: MaskOption = None,
) -> None:
    """The main job: every bundled case on the model and the host, side by side."""
    from .mainjob import main_job

    _apply_mask(mask)
    if json_file and not Path(json_file).resolve().parent.is_dir():
        _fail_usage(f"cannot write {json_file}: no such folder")
    try:
        ok = main_job(host=host, verbose=verbose, json_file=json_file)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    raise typer.Exit(0 if ok else 1)


@app.command("host")
def host_profile(
    json_file: Annotated[str | None, typer.Option("--json", metavar="FILE", help="Also write the profile "
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


LISTS = ("designs", "scenarios", "ops", "mutants", "workloads")


@app.command("list")
def list_things(
    what: Annotated[str, typer.Argument(metavar="|".join(LISTS),
                                        help="What to list, one line each.")],
) -> None:
    """List the model's designs, the bundled scenarios, the case-file operations, the
    checker's mutants or the comparison's workloads."""
    from .listing import listing

    try:
        rows = listing(what)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    width = max((len(name) for name, _ in rows), default=0)
    for name, line in rows:
        print(f"{name:<{width}}  {line}".rstrip())


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        _fail_usage(f"cannot write {path}: {exc.strerror}")


@app.command()
def conform(
    paths: Annotated[list[str], typer.Argument(metavar="PATH...",
                                                help="Case files or folders of case files.")],
    kernel: Annotated[str, typer.Option("--kernel", metavar="model|host",
                                        help="The kernel that runs the cases.")] = "model",
    design: Annotated[str | None, typer.Option(
        "--design", metavar="NAME",
        help="Run every case on this model design instead of the one it names.")] = None,
    json_file: Annotated[str | None, typer.Option("--json", metavar="FILE",
                                                  help="Also write the results here.")] = None,
    mask: MaskOption = None,
) -> None:
    """Run case files (CASES.md format) and print PASS/FAIL/SKIP per case."""
    from .conform import conform as run_conform

    _apply_mask(mask)
    progress = _case_progress(paths)

    def show(result: object) -> None:
        print(result.line(), flush=True)  # type: ignore[attr-defined]
        if progress is not None:
            progress.advance(progress.task_ids[0])

    try:
        if progress is not None:
            progress.start()
        summary = run_conform(paths, kernel, design, on_result=show)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    finally:
        if progress is not None:
            progress.stop()
    print(summary.line())
    if json_file:
        doc = {"kernel": kernel, "design": design,
               "results": [r.as_json() for r in summary.results],
               "summary": {"passed": summary.passed, "failed": summary.failed,
                           "skipped": summary.skipped}}
        _write(json_file, json.dumps(doc, indent=2) + "\n")
    if summary.malformed:
        typer.echo(f"gmemlab: {summary.malformed} malformed case file(s) or case(s): see the "
                   "FAIL lines that say 'bad case'", err=True)
        raise typer.Exit(2)
    raise typer.Exit(1 if summary.failed else 0)


def _case_progress(paths: list[str]) -> Any:
    """A progress bar on a terminal's stderr for runs over many cases (else None)."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .conform import collect

    total = sum(len(f.cases) + bool(f.error) for f in collect(paths))
    if total < 20:
        return None
    progress = Progress(TextColumn("cases"), BarColumn(), MofNCompleteColumn(),
                        console=Console(stderr=True), transient=True)
    progress.add_task("cases", total=total)
    return progress


@app.command()
def check(
    scenario: Annotated[str, typer.Argument(
        metavar="SCENARIO", help="A scenario file, or the name of a bundled one (gmemlab list "
                                 "scenarios).")],
    design: Annotated[str | None, typer.Option(
        "--design", metavar="NAME", help="Check on this design instead of the scenario's "
                                         "own; all: every design, the verdicts in one "
                                         "table.")] = None,
    all_promises: Annotated[bool, typer.Option(
        "--all", help="Go on after the first violation: each promise's shortest counterexample.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", metavar="N",
                                      help="Explore in this many processes.")] = 1,
    fingerprints: Annotated[bool, typer.Option(help="Keep 128-bit fingerprints of visited states "
                                                    "(else the states).")] = True,
    symmetry: Annotated[bool, typer.Option(help="Reduce by the scenario's symmetries.")] = True,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 when a step never succeeded in any interleaving (the verdict "
                         "may be vacuous), not only warn.")] = False,
    verify_symmetry: Annotated[bool, typer.Option(
        "--verify-symmetry", help="Prove the scenario's symmetries against the model while "
                                  "searching (every permutation commutes with every step from every "
                                  "state reached); refuse the reduction where one does not.")] = False,
    por: Annotated[bool, typer.Option("--por/--no-por", help="Partial-order reduction.")] = True,
    memo: Annotated[bool, typer.Option(help="Reuse a step's result where it read the same state.")] = True,
    max_states: Annotated[int, typer.Option(metavar="N",
                                            help="Stop after this many states (0: no limit).")] = 0,
    engine: Annotated[str, typer.Option(
        "--engine", metavar="auto|c|python",
        help="Who searches: auto (the compiled core where it can, else Python), c, "
             "python.")] = "auto",
    case_out: Annotated[str | None, typer.Option(
        "--case-out", metavar="FILE",
        help="Write the counterexample case file here, and its sequence chart beside it as .svg "
             "(default: $XDG_STATE_HOME/gmemlab/counterexamples/SCENARIO-DESIGN.toml, "
             "~/.local/state/gmemlab/... without XDG_STATE_HOME).")] = None,
    html_file: Annotated[str | None, typer.Option(
        "--html", metavar="FILE", help="Also write an HTML report: the verdict, each "
                                       "counterexample's sequence chart, steps and case file.")] = None,
    no_case: Annotated[bool, typer.Option("--no-case", help="Write no case file.")] = False,
    json_file: Annotated[str | None, typer.Option("--json", metavar="FILE",
                                                  help="Also write the verdict here.")] = None,
    mutant: Annotated[str | None, typer.Option(
        "--mutant", metavar="NAME",
        help="Check a deliberately broken variant (gmemlab list mutants).")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", metavar="auto|local|ADDRESS",
        help="Search on a Ray cluster (pip install 'gmemlab[cluster]'): auto, the running one "
             "or a local one started for the search; local; or a cluster's address.")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", metavar="N", help="With --cluster: partitions of the state space (0: one "
                                       "per CPU of the cluster).")] = 0,
) -> None:
    """Explore every interleaving of a scenario's actors on the model; prove the
    promises or print the shortest counterexample (and write it as a case file)."""
    from .checker import ENGINES
    from .checker.cli import run_check

    if jobs < 1 or max_states < 0 or workers < 0:
        _fail_usage("--jobs must be at least 1, --max-states and --workers at least 0")
    if cluster is not None and (jobs > 1 or engine == "c"):
        _fail_usage("--cluster runs the Python engine on the cluster: not with --jobs or --engine c")
    if engine not in ENGINES:
        _fail_usage(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    try:
        if design == "all":
            if mutant or html_file or case_out or cluster is not None:
                _fail_usage("--design all prints the verdict matrix: not with --mutant, --html, "
                            "--case-out or --cluster")
            from .checker import Options
            from .checker.matrix import run_matrix

            raise typer.Exit(run_matrix(scenario, Options(
                fingerprints=fingerprints, symmetry=symmetry, por=por, memo=memo, jobs=jobs,
                max_states=max_states, engine=engine, verify_symmetry=verify_symmetry),
                strict=strict, json_file=json_file))
        code = run_check(scenario, design, all_promises=all_promises, jobs=jobs,
                         fingerprints=fingerprints, symmetry=symmetry, por=por, memo=memo,
                         max_states=max_states, case_out=None if no_case else (case_out or ""),
                         json_file=json_file, mutant=mutant, engine=engine, html_file=html_file,
                         cluster=cluster or "", workers=workers, verify_symmetry=verify_symmetry,
                         strict=strict)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    raise typer.Exit(code)


@app.command()
def fuzz(
    kernel_pair: Annotated[str, typer.Option(
        "--kernel-pair", metavar="A,B",
        help="The kernels to compare: model,host (the model design matching the running "
             "kernel), model:DESIGN,host, or model:DESIGN,model:DESIGN (every difference "
             "between two designs).")] = "model,host",
    examples: Annotated[int, typer.Option("--examples", metavar="N",
                                          help="Random operation sequences to run.")] = 1000,
    steps: Annotated[int, typer.Option("--steps", metavar="N",
                                       help="Operations per sequence at most.")] = 30,
    seed: Annotated[int | None, typer.Option("--seed", metavar="S",
                                             help="Random seed (default: a fixed one).")] = None,
    out: Annotated[str | None, typer.Option("--out", metavar="FILE",
                                            help="Also write the case file(s) found here.")] = None,
    mask: MaskOption = None,
) -> None:
    """Differential testing: random operation sequences on two kernels at once.

    Model against host: a divergence is printed as a minimal case file (CASES.md
    format) that `gmemlab conform` runs, and the exit status is 1.  Two designs:
    every distinct difference, each as a minimal case, shortest first (exit 0:
    differences between designs are the finding, not a failure).
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
    if report.differences:
        names = kernel_pair.replace("model:", "").split(",")
        cases = [d.case(f"{names[0]}-vs-{names[1]}-{n}")
                 for n, d in enumerate(report.differences, 1)]
        for n, (d, case) in enumerate(zip(report.differences, cases, strict=True), 1):
            print(f"\n{n}. {d.message} ({len(d.steps)} steps)\n\n{case}", end="")
        if out:
            _write(out, "\n".join(cases))
        raise typer.Exit(0)
    if report.divergence is not None:
        case = report.divergence.case()
        print(f"\n{report.divergence.message}\n\n{case}", end="")
        if out:
            _write(out, case)
    elif report.flaky is not None:
        print(f"\nthe run was not reproducible (Hypothesis reported flakiness):\n{report.flaky}")
    raise typer.Exit(0 if report.ok else 1)


# --- gmemlab compare / calibrate (gmemlab.compare) --------------------------------------------

def _wide_console() -> Console:
    """A console for wide tables: a terminal keeps its width, piped output gets room."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 220)


@app.command()
def compare(
    workload: Annotated[str, typer.Argument(help="A bundled workload (dma-pool, dma-dynamic, "
                                                 "cvm-boot, balloon, snapshot, fragment), a "
                                                 ".toml file, or `list`.")],
    designs: Annotated[str | None, typer.Option("--designs", help="Comma-separated designs "
                                                                  "(default: every one).")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Guest memory (1G, 1T).")] = None,
    pages: Annotated[str | None, typer.Option("--pages", help="Pool pages (dma-pool).")] = None,
    granule: Annotated[str | None, typer.Option("--granule", help="Sharing granule (4K, 64K).")] = None,
    pattern: Annotated[str | None, typer.Option("--pattern", help="Which granules go back first: "
                                                                  "alternate, odd, all, reverse, "
                                                                  "random, random:F, stride:N.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Any workload parameter: "
                                                                 "NAME=VALUE (repeatable).")] = None,
    kernel: Annotated[str, typer.Option("--kernel", help="model: count and predict; host: also "
                                                         "run each design's host side here with "
                                                         "a real guest and compare.")] = "model",
    calibration: Annotated[str | None, typer.Option(
        "--calibration", help="A file from gmemlab calibrate (default: measure now with --kernel "
                              "host, else the reference calibration shipped with gmemlab).")] = None,
    json_file: Annotated[str | None, typer.Option("--json", help="Write every figure here.")] = None,
    plots: Annotated[str | None, typer.Option("--plots", help="Draw PNG and SVG plots into this "
                                                              "folder.")] = None,
    host_side: Annotated[str | None, typer.Option("--host-side", help="Only try this host side "
                                                                      "(in-place, kvm-map, ...).")] = None,
    max_map_count: Annotated[int | None, typer.Option("--max-map-count", help="The model's "
                                                      "vm.max_map_count (default 65530).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Host runs per design (median).")] = 5,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Count designs in this many "
                                                                  "processes (default: CPUs, at "
                                                                  "most 4).")] = None,
    mask: MaskOption = None,
) -> None:
    """What each design costs on a workload: counted by the model, priced by a calibration
    of the running kernel, and (--kernel host) checked against a real guest."""
    from .compare.command import run_compare

    _apply_mask(mask)
    try:
        code = run_compare(workload, designs, sets or [],
                           {"memory": memory, "pages": pages, "granule": granule,
                            "pattern": pattern}, kernel, calibration, json_file, plots,
                           host_side, max_map_count, repeats, _wide_console(), jobs)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    raise typer.Exit(code)


@app.command()
def calibrate(
    out: Annotated[str, typer.Option("--out", help="The calibration file to write.")] =
        "gmemlab-calibration.json",
    reps: Annotated[int, typer.Option("--reps", help="Repetitions of each measurement.")] = 7,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller batches (a rougher, faster "
                                                        "calibration).")] = False,
    mask: MaskOption = None,
) -> None:
    """Measure what each event the model counts costs on the running kernel."""
    from .compare.command import run_calibrate

    _apply_mask(mask)
    try:
        code = run_calibrate(out, reps, quick, _wide_console())
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    raise typer.Exit(code)


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


draw_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Draw what the model says, with Graphviz.")
app.add_typer(draw_app, name="draw")


@draw_app.command("states")
def draw_states(
    name: Annotated[str, typer.Argument(
        metavar="DESIGN", help="A design or variant (gmemlab list designs), pkvm for the pKVM "
                               "hypervisor's page ownership, or all.")],
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="FILE", help="Write here (a folder for all, which writes NAME.FORMAT "
                                            "and NAME.dot for each); default: standard output.")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", metavar="svg|dot|png", help="What to write (default: the suffix of -o, else "
                                                "svg).")] = None,
) -> None:
    """One page's state machine in a design, explored on the model: its states, every move
    between them, and what each design refuses (docs/DESIGNS.md)."""
    from .diagrams import run_draw

    try:
        drawing, lines = run_draw(name, out, fmt)
    except UsageError as exc:
        _fail_usage(str(exc))
        return
    if drawing is not None:
        sys.stdout.buffer.write(drawing)
        sys.stdout.flush()
    for line in lines:
        print(line)


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
