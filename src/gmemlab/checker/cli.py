"""`gmemlab check`: the verdict, printed for people, and the counterexample as a case file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import check, promises
from .chart import html_report, sequence_chart
from .compiled import NativeError
from .explore import Options, Progress, Verdict
from .reduce import NotSymmetric, ReductionError, SymmetryBroken
from .report import Replay, ReplayError, case_text, replay_counterexample, trace_rows, write_cases
from .scenario import Scenario, load, validate

ENGINE_NAMES = {"c": "compiled core", "python": "Python", "cluster": "Python on a Ray cluster"}
SHOW_AFTER = 1.0  # seconds: shorter runs print no progress


class ProgressDisplay:
    """States, states/s, frontier and elapsed time on stderr, once a run has taken a second."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self.last_line: float | None = None  # when the last line went to a non-terminal

    def __call__(self, p: Progress) -> None:
        if p.elapsed < SHOW_AFTER:
            return
        text = (f"exploring: {p.states:,} states ({p.states / p.elapsed:,.0f}/s), "
                f"{p.transitions:,} transitions, frontier {p.frontier:,}, depth {p.depth}, "
                f"{p.elapsed:.1f} s")
        if self.console.is_terminal:
            if self.live is None:
                self.live = Live(Text(text), console=self.console, transient=True, auto_refresh=False)
                self.live.start()
            self.live.update(Text(text), refresh=True)
        elif self.last_line is None or p.elapsed - self.last_line >= 5:
            # A log gets the first line after a second, then one every 5 s.
            self.last_line = p.elapsed
            self.console.print(text)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def counterexample_dir() -> Path:
    """Where counterexample case files go unless the user says: $XDG_STATE_HOME/gmemlab
    (~/.local/state/gmemlab), never the current directory."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gmemlab" / "counterexamples"


def run_check(name: str, design: str | None, *, all_promises: bool, jobs: int, fingerprints: bool,
              symmetry: bool, por: bool, memo: bool, max_states: int, case_out: str | None,
              json_file: str | None, mutant: str | None = None, engine: str = "auto",
              html_file: str | None = None, cluster: str = "", workers: int = 0,
              verify_symmetry: bool = False, strict: bool = False) -> int:
    """Check and print; the exit status (0 holds, 1 violated, incomplete, a step
    that must succeed never did, or with `strict` any step that never succeeded)."""
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    factory = None
    if mutant is not None:
        from .mutations import mutant as find_mutant

        m = find_mutant(mutant)
        factory = m.factory
        design = design or m.design  # the design the mutant breaks, unless told
    sc = load(name).with_design(design)
    validate(sc)
    options = Options(fingerprints=fingerprints, symmetry=symmetry, por=por, memo=memo,
                      all_promises=all_promises, jobs=jobs, max_states=max_states, engine=engine,
                      cluster=cluster, workers=workers, verify_symmetry=verify_symmetry)
    where = f" ({sc.path})" if sc.path else ""
    out.print(f"[bold]gmemlab check[/bold]: scenario [bold]{sc.name}[/bold]{where} on design "
              f"[bold]{sc.design}[/bold]" + (f", mutant [bold]{mutant}[/bold] ({m.about})" if mutant else ""))
    actors = ", ".join(f"{a.name} ({len(a.actions)} op{'s' if len(a.actions) > 1 else ''})"
                       for a in sc.actors)
    display = ProgressDisplay(err)
    start = time.perf_counter()
    try:
        verdict = check(sc, options=options, factory=factory, progress=display)
    except ReductionError as exc:
        out.print(f"[bold red]internal error[/bold red]: {exc}")
        return 3
    except (NotSymmetric, SymmetryBroken) as exc:
        out.print(f"[bold red]the scenario's symmetry is refused[/bold red]: {exc}. Without the "
                  "reduction: --no-symmetry")
        return 2
    except NativeError as exc:
        out.print(f"[bold red]the compiled core failed[/bold red]: {exc} "
                  "(--engine python searches without it)")
        return 3
    finally:
        display.stop()
    elapsed = time.perf_counter() - start
    out.print(f"actors: {actors}; promises: {', '.join(sorted(verdict.promises, key=promises.ORDER.index))}; "
              f"reductions: {options.describe()}" + (f"; {jobs} processes" if jobs > 1 else "")
              + f"; engine: {ENGINE_NAMES[verdict.engine]}")
    if verdict.note and engine == "auto":
        out.print(f"[dim]({verdict.note})[/dim]")
    rate = verdict.states / verdict.seconds if verdict.seconds else 0.0
    stats = (f"{verdict.states:,} states, {verdict.transitions:,} transitions, depth {verdict.depth}, "
             f"{verdict.seconds:.2f} s ({rate:,.0f} states/s)")
    replays: list[tuple[Any, Replay]] = []
    for cex in verdict.counterexamples:
        try:
            replays.append((cex, replay_counterexample(sc, cex, factory, active=verdict.promises)))
        except ReplayError as exc:
            hint = ""
            if options.symmetry and sc.symmetry and not verify_symmetry:
                hint = (" (the search merged states by the scenario's [[symmetry]]: --verify-symmetry "
                        "checks it against the model, --no-symmetry searches without it)")
            out.print(f"[bold red]internal error[/bold red]: {exc}{hint}")
            return 3
    warnings, unmet = verdict.warnings(), verdict.unmet()
    if unmet:
        out.print("[bold red]VACUOUS[/bold red]: " + "; ".join(
            f"{u} (the scenario says it must succeed somewhere)" for u in unmet))
    if verdict.holds and warnings:
        out.print("[bold yellow]HOLDS, but[/bold yellow] " + "; ".join(warnings))
        out.print(f"  every promise holds on every interleaving: {stats}")
        out.print("  [dim](what the scenario sets up may never have happened; --strict makes this "
                  "exit 1)[/dim]")
    elif verdict.holds:
        out.print(f"[bold green]HOLDS[/bold green]: every promise holds on every interleaving: {stats}")
    elif not verdict.counterexamples:
        out.print(f"[bold yellow]INCOMPLETE[/bold yellow]: no violation in the first {stats} "
                  f"(--max-states {max_states} reached)")
    if verdict.complete and verdict.coverage:
        _print_coverage(out, verdict)
    for cex, rp in replays:
        _print_counterexample(out, cex, rp, verdict, stats)
    command = _command(sc, name, all_promises)
    texts = [case_text(sc, verdict, cex, rp, command) for cex, rp in replays]
    if replays and case_out is not None:
        path = Path(case_out) if case_out else \
            counterexample_dir() / f"{sc.name}-{sc.design}{'-' + mutant if mutant else ''}.toml"
        chart = path.with_suffix(".svg")
        try:
            write_cases(path, texts)
            cex, rp = replays[0]
            chart.write_text(sequence_chart(sc, verdict, cex, rp))
        except OSError as exc:
            out.print(f"[red]cannot write {path}: {exc.strerror}[/red]")
            return 2
        if mutant:
            out.print(f"case file: {path} (it reproduces on the mutant, not on design {sc.design}: "
                      "tests/test_mutations.py runs such cases)")
        else:
            out.print(f"case file: {path} (reproduce: gmemlab conform {path} --kernel model)")
        out.print(f"sequence chart of the {replays[0][0].promise} counterexample: {chart}")
    if html_file:
        found = [(cex, rp, text) for (cex, rp), text in zip(replays, texts, strict=True)]
        try:
            Path(html_file).write_text(html_report(sc, verdict, found, command))
        except OSError as exc:
            out.print(f"[red]cannot write {html_file}: {exc.strerror}[/red]")
            return 2
        out.print(f"report: {html_file}")
    if json_file:
        Path(json_file).write_text(json.dumps(verdict_json(verdict, elapsed), indent=2) + "\n")
    return 0 if verdict.holds and not unmet and not (strict and warnings) else 1


def _print_coverage(out: Console, verdict: Verdict) -> None:
    """Each step's outcomes across the search, one line per step."""
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1), show_header=True)
    for col in ("actor", "step", "outcomes (transitions)"):
        table.add_column(col, overflow="fold")
    for c in verdict.coverage:
        shown = c.show() if c.succeeded else f"[yellow]{c.show()}[/yellow]"
        table.add_row(c.actor, f"{c.index + 1} {c.op}" + (" (must succeed)" if c.must_succeed else ""),
                      shown)
    out.print(table)


def _command(sc: Scenario, name: str, all_promises: bool) -> str:
    return f"gmemlab check {name} --design {sc.design}" + (" --all" if all_promises else "")


def _print_counterexample(out: Console, cex: Any, rp: Replay, verdict: Verdict, stats: str) -> None:
    out.print()
    out.print(f"[bold red]VIOLATED {cex.promise}[/bold red]: {promises.PROMISES[cex.promise]}")
    out.print(f"  {cex.violation.message}")
    if cex.promise == "P8" and rp.stuck_attempt is not None:
        st = rp.stuck_attempt
        out.print(f"  {st.actor} retries {st.action.show()} forever: {st.what}")
    steps = len(cex.trace)
    extra = f" (then {len(rp.steps) - steps} steps on which the others finish)" \
        if len(rp.steps) > steps else ""
    out.print(f"  shortest counterexample: {steps} steps{extra}, breadth-first over {stats}")
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    for col in ("#", "actor", "operation", "what happened", "state after"):
        table.add_column(col, overflow="fold")
    for row in trace_rows(rp):
        table.add_row(*row)
    out.print(table)


def verdict_json(v: Verdict, elapsed: float) -> dict[str, Any]:
    return {"scenario": v.scenario, "design": v.design, "holds": v.holds, "complete": v.complete,
            "states": v.states, "transitions": v.transitions, "depth": v.depth, "seconds": v.seconds,
            "wall_seconds": elapsed, "model_runs": v.model_runs, "reductions": v.options.describe(),
            "jobs": v.options.jobs, "engine": v.engine, "violated": v.violated(),
            "counterexamples": [{"promise": c.promise, "message": c.violation.message, "trace": c.trace,
                                 "stuck": c.stuck, "continuation": c.continuation}
                                for c in v.counterexamples],
            "coverage": [c.to_json() for c in v.coverage], "warnings": v.warnings(), "unmet": v.unmet()}
