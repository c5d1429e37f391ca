"""`gmemlab check SCENARIO --design all`: one scenario on every design, the
verdicts in one table (designs by promises), with the steps that never
succeeded on each design beside them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..model.designs import DESIGNS, VARIANTS
from . import check, promises
from .explore import Options, Verdict
from .scenario import ScenarioError, load, validate


def _why_not(message: str) -> str:
    """A scenario error, without the step's arguments (the table has no room)."""
    m = re.match(r"(setup step \d+) \((\w+)\(.*\)\) failed on design [\w.-]+: (.*)$", message)
    if m:
        return f"{m[1]} ({m[2]}) fails: {m[3]}"
    m = re.match(r"(actor \w+ step \d+) \((\w+)\(.*\)\): (?:\w+: )?(.*)$", message)
    if m:
        return f"{m[1]} ({m[2]}): {m[3]}"
    return message


def _cell(v: Verdict, promise: str) -> str:
    if promise not in v.promises:
        return "[dim]-[/dim]"
    for c in v.counterexamples:
        if c.promise == promise:
            return f"[red]violated ({len(c.trace)})[/red]"
    return "[green]holds[/green]" if v.complete else "[yellow]?[/yellow]"


def run_matrix(name: str, options: Options, *, strict: bool = False, json_file: str | None = None) -> int:
    """Check the scenario on every design it can run on; the exit status is 0
    when every promise holds everywhere (and, with `strict`, every step
    succeeded somewhere on every design)."""
    from .cli import verdict_json

    out = Console(highlight=False)
    base = load(name)
    where = f" ({base.path})" if base.path else ""
    out.print(f"[bold]gmemlab check[/bold]: scenario [bold]{base.name}[/bold]{where} on every design "
              "(each promise's shortest counterexample, in steps)")
    options = Options(**{**options.__dict__, "all_promises": True})
    verdicts: list[tuple[str, Verdict | str]] = []
    start = time.perf_counter()
    for design in [*DESIGNS, *VARIANTS]:
        sc = base.with_design(design)
        try:
            validate(sc)
            verdicts.append((design, check(sc, options=options)))
        except ScenarioError as exc:  # (its setup cannot run on this design)
            verdicts.append((design, str(exc)))
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    table.add_column("design", no_wrap=True)
    for p in promises.ORDER:
        table.add_column(p, no_wrap=True)
    table.add_column("states", justify="right", no_wrap=True)
    table.add_column("steps that never succeeded", overflow="fold")
    bad = False
    for design, v in verdicts:
        if isinstance(v, str):
            table.add_row(design, *["" for _ in promises.ORDER], "", f"[dim]not run: {_why_not(v)}[/dim]")
            continue
        warnings = v.warnings() + v.unmet()
        bad |= not v.holds or bool(v.unmet()) or (strict and bool(warnings))
        table.add_row(design, *[_cell(v, p) for p in promises.ORDER], f"{v.states:,}",
                      "[yellow]" + "; ".join(warnings) + "[/yellow]" if warnings else "")
    out.print(table)
    out.print(f"[dim]{len(verdicts)} designs in {time.perf_counter() - start:.1f} s; - the design makes "
              f"no such promise; a counterexample step by step: gmemlab check {name} --design NAME[/dim]")
    if json_file:
        doc: list[dict[str, Any]] = [verdict_json(v, v.seconds) if not isinstance(v, str)
                                     else {"design": d, "not_run": v} for d, v in verdicts]
        Path(json_file).write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if bad else 0
