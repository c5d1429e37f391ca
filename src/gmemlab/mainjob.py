"""`gmemlab run`: the bundled cases on the model and the host, side by side."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .conform import bundled_cases, collect, kernel_factory
from .conform.runner import Result, run_files


@dataclass
class Row:
    name: str
    model: Result
    host: Result

    @property
    def verdict(self) -> str:
        statuses = {self.model.status, self.host.status}
        if "FAIL" in statuses:
            return "FAIL"
        if statuses == {"PASS"}:
            return "agree"
        return "n/a"


def compare_on_cases(host: bool = True) -> tuple[list[Row], str | None]:
    root = bundled_cases()
    files = collect([str(root)])
    for case_file in files:
        # Show cases as "gmem/caps.toml::id", relative to the bundled folder.
        rel = str(Path(case_file.path).relative_to(root)) if case_file.path.startswith(str(root)) \
            else case_file.path
        case_file.path = rel
        case_file.cases = [replace(c, file=rel) for c in case_file.cases]
    model_factory, _ = kernel_factory("model")
    host_factory, host_missing = kernel_factory("host")
    if not host:
        host_missing = "not asked for (--no-host)"
    model_results = list(run_files(files, "model", model_factory))
    host_results = list(run_files(files, "host", host_factory, host_missing))
    rows = [Row(m.case.name, m, h) for m, h in zip(model_results, host_results, strict=True)]
    return rows, host_missing


def _cell(result: Result) -> str:
    style = {"PASS": "green", "FAIL": "bold red", "SKIP": "dim"}[result.status]
    return f"[{style}]{result.status}[/{style}]"


def _guest_path_note() -> str:
    from .host import HostKernel

    with HostKernel() as k:
        missing = k.unsupported("guest_access")
        path = None if missing else k.access_path()
    if path is None:
        return f"[dim]guest accesses cannot run here: {missing}[/dim]"
    return (f"guest accesses on this machine go through KVM's {path}: cases that require the "
            "other path run on the model only (docs/CONFORMANCE.md, \"Guest access paths\")")


def main_job(host: bool = True) -> bool:
    console = Console(highlight=False)
    rows, host_missing = compare_on_cases(host)
    table = Table(title="gmemlab: bundled cases on the model and on this machine's kernel")
    table.add_column("case", overflow="fold")
    table.add_column("model")
    table.add_column("host")
    table.add_column("agree?")
    for row in rows:
        mark = {"agree": "[green]yes[/green]", "FAIL": "[bold red]NO[/bold red]", "n/a": "[dim]-[/dim]"}
        table.add_row(row.name, _cell(row.model), _cell(row.host), mark[row.verdict])
    console.print(table)
    failures = [r for r in rows if r.verdict == "FAIL"]
    for row in failures:
        for result in (row.model, row.host):
            if result.status == "FAIL":
                console.print(f"[red]{result.kernel}[/red] {result.line()}")
    by_design: dict[str, list[Result]] = {}
    for row in rows:
        by_design.setdefault(row.model.case.design or "?", []).append(row.model)
    designs = Table(title="the model's designs on their own cases")
    for col in ("design", "cases", "passed", "failed"):
        designs.add_column(col)
    for name, results in sorted(by_design.items()):
        passed = sum(r.status == "PASS" for r in results)
        failed = sum(r.status == "FAIL" for r in results)
        designs.add_row(name, str(len(results)), str(passed), f"[red]{failed}[/red]" if failed else "0")
    console.print(designs)
    checked_ok = check_seed_designs(console)
    if host_missing is None:
        console.print(_guest_path_note())
    both = sum(r.verdict == "agree" for r in rows)
    model_only = sum(r.model.status == "PASS" and r.host.status == "SKIP" for r in rows)
    host_note = f"host skipped: {host_missing}" if host_missing else \
        f"{model_only} cases ran on the model only"
    if failures or not checked_ok:
        console.print(f"[bold red]verdict: {len(failures)} of {len(rows)} cases failed[/bold red] "
                      f"({both} agree; {host_note})" + ("" if checked_ok else
                                                       "; the checker's verdicts are not the expected ones"))
        return False
    console.print(f"[bold green]verdict: model and kernel agree on all {both} cases both ran[/bold green]"
                  f"; {host_note}; 0 failures")
    return True


# What the checker must say about the seed designs on the default scenario
# (docs/CHECKER.md): the intended design keeps every promise, the sketch as
# written breaks these.
EXPECTED = {"seed": [], "seed-as-written": ["P1", "P2", "P3", "P4", "P5", "P8"]}


def check_seed_designs(console: Console) -> bool:
    """Every interleaving of scenarios/seed_default.toml on seed and seed-as-written."""
    from .checker import Options, check, load
    from .checker.promises import PROMISES

    sc = load("seed_default")
    table = Table(title=f"the checker: every interleaving of scenarios/{sc.name}.toml "
                        f"({len(sc.actors)} actors)")
    for col in ("design", "verdict", "states", "transitions", "seconds", "shortest counterexamples"):
        table.add_column(col, overflow="fold")
    ok = True
    said = []
    for design, expected in EXPECTED.items():
        v = check(sc, design, Options(all_promises=True))
        broken = v.violated()
        ok &= broken == expected and v.complete
        said.append(f"{design} {'holds' if v.holds else 'violates ' + ', '.join(broken)}")
        verdict = "[green]holds[/green]" if v.holds else f"[red]violates {', '.join(broken)}[/red]"
        shortest = "; ".join(f"{c.promise} in {len(c.trace)} steps" for c in v.counterexamples) or \
            f"all of {', '.join(sorted(v.promises))} hold"
        table.add_row(design, verdict, f"{v.states:,}", f"{v.transitions:,}", f"{v.seconds:.2f}", shortest)
    console.print(table)
    for p, text in PROMISES.items():
        console.print(f"  {p}: {text}", style="dim")
    console.print("  a counterexample, step by step, and as a case file: "
                  "gmemlab check seed_default --design seed-as-written", style="dim")
    style = "green" if ok else "bold red"
    console.print(f"[{style}]checker: {'; '.join(said)}"
                  f"{'' if ok else ' (NOT the expected verdicts)'}[/{style}]")
    return ok
