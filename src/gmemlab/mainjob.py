"""`gmemlab run`: the bundled cases on the model and the host, side by side.

Each case gets one of three outcomes: the model and the kernel *agree* (both
ran it and both pass), they *disagree* (both ran it, and one passes where the
other fails), or it is *not applicable* on this kernel (the kernel lacks what
the case needs, or the case is written for the model alone).  The host is
compared with the model design whose guest_memfd behaves as the kernel's does
(probe.KernelProfile.design): a kernel whose guest_memfd cannot be mapped is
compared with gmem-6.8, not with the 6.18 design the cases are written for.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .conform import bundled_cases, collect, kernel_factory
from .conform.cases import Case, CaseFile
from .conform.runner import Result, run_case, run_files
from .errors import UsageError

# Designs that stand for a mainline kernel: a case written for one of them is
# compared with the host under the design that matches the host's profile.
MAINLINE = ("gmem-6.8", "gmem-6.18", "gmem-6.19")


@dataclass
class Row:
    case: Case
    model: Result  # the case on its own design
    host: Result
    matched: Result  # the case on the design that matches the host (is `model` when the same)

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def verdict(self) -> str:
        """agree, disagree, n/a, or model-fail (the model fails its own case)."""
        if self.model.status == "FAIL":
            return "model-fail"
        if self.host.status == "SKIP" or self.matched.status == "SKIP":
            return "n/a"
        if self.host.status == self.matched.status == "PASS":
            return "agree"
        return "disagree"

    @property
    def why_na(self) -> str:
        if self.host.status == "SKIP":
            return self.host.reason or self.host.message
        return f"the model skips it: {self.matched.reason or self.matched.message}"


@dataclass
class Report:
    rows: list[Row]
    host_missing: str | None
    design: str  # the model design the host is compared with
    profile_line: str

    def count(self, verdict: str) -> int:
        return sum(r.verdict == verdict for r in self.rows)

    def na_reasons(self) -> Counter[str]:
        return Counter(r.why_na for r in self.rows if r.verdict == "n/a")

    def as_json(self) -> dict[str, Any]:
        return {"kernel": self.profile_line, "compared_design": self.design,
                "host_missing": self.host_missing,
                "counts": {v: self.count(v) for v in ("agree", "disagree", "n/a", "model-fail")},
                "not_applicable": dict(self.na_reasons()),
                "cases": [{"case": r.name, "design": r.case.design, "verdict": r.verdict,
                           "model": r.model.as_json(), "host": r.host.as_json(),
                           "compared_with": r.matched.as_json()} for r in self.rows]}


def _bundled() -> list[CaseFile]:
    root = bundled_cases()
    files = collect([str(root)])
    for case_file in files:
        # Show cases as "gmem/caps.toml::id", relative to the bundled folder.
        rel = str(Path(case_file.path).relative_to(root)) if case_file.path.startswith(str(root)) \
            else case_file.path
        case_file.path = rel
        case_file.cases = [replace(c, file=rel) for c in case_file.cases]
    return files


def compare_on_cases(host: bool = True) -> Report:
    """Every bundled case on the model (its own design), on the host, and on the
    model design matching the host where that differs."""
    from .host import probe

    files = _bundled()
    prof = probe.profile()
    model_factory, _ = kernel_factory("model")
    host_factory, host_missing = kernel_factory("host")
    if not host:
        host_missing = "not asked for (--no-host)"
    model_results = list(run_files(files, "model", model_factory))
    host_results = list(run_files(files, "host", host_factory, host_missing))
    matched_factory, _ = kernel_factory("model", prof.design)
    rows = []
    for m, h in zip(model_results, host_results, strict=True):
        matched = m
        if h.status != "SKIP" and m.case.design in MAINLINE and m.case.design != prof.design:
            matched = run_case(m.case, f"model:{prof.design}", matched_factory)
            matched = replace(matched, kernel=f"model:{prof.design}")
        rows.append(Row(m.case, m, h, matched))
    return Report(rows, host_missing, prof.design, prof.line())


def _cell(result: Result) -> str:
    style = {"PASS": "green", "FAIL": "bold red", "SKIP": "dim"}[result.status]
    return f"[{style}]{result.status}[/{style}]"


def _by_file(report: Report) -> Table:
    table = Table(title="per case file", title_justify="left")
    for col in ("file", "cases", "agree", "disagree", "n/a", "model fails"):
        table.add_column(col, justify="left" if col == "file" else "right")
    files: dict[str, list[Row]] = {}
    for row in report.rows:
        files.setdefault(row.case.file, []).append(row)
    for name, rows in files.items():
        counts = Counter(r.verdict for r in rows)
        bad = counts["disagree"]
        table.add_row(name, str(len(rows)), str(counts["agree"]),
                      f"[red]{bad}[/red]" if bad else "0", str(counts["n/a"]),
                      f"[red]{counts['model-fail']}[/red]" if counts["model-fail"] else "0")
    return table


def _by_design(report: Report) -> Table:
    table = Table(title="the model's designs on their own cases", title_justify="left")
    for col in ("design", "cases", "passed", "failed", "skipped"):
        table.add_column(col, justify="left" if col == "design" else "right")
    designs: dict[str, list[Result]] = {}
    for row in report.rows:
        designs.setdefault(row.case.design or "?", []).append(row.model)
    for name, results in sorted(designs.items()):
        counts = Counter(r.status for r in results)
        table.add_row(name, str(len(results)), str(counts["PASS"]),
                      f"[red]{counts['FAIL']}[/red]" if counts["FAIL"] else "0", str(counts["SKIP"]))
    return table


def _na_table(report: Report) -> Table:
    table = Table(title="not applicable on this kernel, by reason", title_justify="left")
    table.add_column("cases", justify="right")
    table.add_column("reason")
    for reason, n in report.na_reasons().most_common():
        table.add_row(str(n), reason)
    return table


def _full_listing(report: Report, console: Console) -> None:
    """Every case on a line of its own: outcome, model, host, name (never folded)."""
    marks = {"agree": "[green]agree     [/green]", "disagree": "[bold red]DISAGREE  [/bold red]",
             "n/a": "[dim]n/a       [/dim]", "model-fail": "[bold red]MODEL FAIL[/bold red]"}
    console.print("[bold]every case[/bold] (outcome, model, host, case)")
    for row in report.rows:
        console.print(f"{marks[row.verdict]} {_cell(row.model)} {_cell(row.host)} {row.name}",
                      soft_wrap=True)


def main_job(host: bool = True, verbose: bool = False, json_file: str | None = None,
             console: Console | None = None) -> bool:
    console = console or Console(highlight=False)
    from .host import probe

    title = "gmemlab run: the bundled cases on the model" + \
        (" and on this kernel" if host else " (the host kernel not asked for)")
    console.print(f"[bold]{title}[/bold]")
    console.print(probe.profile().line(), style="cyan", markup=False)
    report = compare_on_cases(host)
    checked_ok, checker_line, checker_table = check_seed_designs()
    agree, disagree = report.count("agree"), report.count("disagree")
    na, model_fail = report.count("n/a"), report.count("model-fail")
    model_pass = sum(r.model.status == "PASS" for r in report.rows)
    ran = agree + disagree
    if report.host_missing:
        host_part = f"host not run ({report.host_missing})"
    else:
        host_part = (f"model and kernel agree on {agree} of the {ran} cases both ran"
                     f" (host compared with design {report.design}); "
                     f"{na} not applicable on this kernel")
    ok = disagree == 0 and model_fail == 0 and checked_ok
    style = "bold green" if ok else "bold red"
    verdict = "verdict: " + ("ok" if ok else "ATTENTION")
    console.print(f"[{style}]{verdict}[/{style}]: {host_part}; {disagree} disagree; the model "
                  f"passes {model_pass} of {len(report.rows)} of its own cases "
                  f"({model_fail} fail)")
    console.print(f"[{'green' if checked_ok else 'bold red'}]{checker_line}[/]")
    console.print(_by_file(report))
    if not report.host_missing and na:
        console.print(_na_table(report))
    console.print(_by_design(report))
    console.print(checker_table)
    attention = [r for r in report.rows if r.verdict in ("disagree", "model-fail")]
    if attention:
        console.print("[bold red]needs attention:[/bold red]")
        for row in attention:
            for result in (row.model, row.host, row.matched):
                if result.status == "FAIL":
                    console.print(f"  [red]{result.kernel}[/red] {result.line()}")
            if row.verdict == "disagree":
                console.print(f"  {row.name}: model ({row.matched.kernel}) {row.matched.status}, "
                              f"host {row.host.status}")
    if verbose:
        _full_listing(report, console)
    if json_file:
        doc = report.as_json()
        doc["checker"] = checker_line
        try:
            Path(json_file).write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"cannot write {json_file}: {exc.strerror}") from None
        console.print(f"[dim]every case's result: {json_file}[/dim]")
    elif not verbose:
        console.print("[dim]every case's result: gmemlab run --verbose, or --json FILE[/dim]")
    return ok


# What the checker must say about the seed designs on the default scenario
# (docs/CHECKER.md): the intended design keeps every promise, the sketch as
# written breaks these.
EXPECTED = {"seed": [], "seed-as-written": ["P1", "P2", "P3", "P4", "P5", "P8"]}


def check_seed_designs() -> tuple[bool, str, Table]:
    """Every interleaving of scenarios/seed_default.toml on seed and seed-as-written."""
    from .checker import Options, check, load

    sc = load("seed_default")
    table = Table(title=f"the checker: every interleaving of scenarios/{sc.name}.toml "
                        f"({len(sc.actors)} actors)", title_justify="left")
    table.add_column("design", no_wrap=True)
    table.add_column("states", no_wrap=True, justify="right")
    table.add_column("s", no_wrap=True, justify="right")
    table.add_column("verdict (counterexample lengths)")
    ok = True
    said = []
    for design, expected in EXPECTED.items():
        v = check(sc, design, Options(all_promises=True))
        broken = v.violated()
        ok &= broken == expected and v.complete
        said.append(f"{design} {'holds' if v.holds else 'violates ' + ', '.join(broken)}")
        if v.holds:
            verdict = f"[green]holds[/green]: {', '.join(sorted(v.promises))}"
        else:
            verdict = "[red]violates[/red] " + ", ".join(f"{c.promise} ({len(c.trace)})"
                                                        for c in v.counterexamples)
        table.add_row(design, f"{v.states:,}", f"{v.seconds:.2f}", verdict)
    table.caption = ("a counterexample step by step, and as a case file: "
                     "gmemlab check seed_default --design seed-as-written")
    line = f"checker: {'; '.join(said)}" + ("" if ok else " (NOT the expected verdicts)")
    return ok, line, table
