"""`gmemlab export-c`: what was written, and what could not be."""

from __future__ import annotations

from . import ExportReport, export_paths


def summary_lines(report: ExportReport) -> list[str]:
    """One line per case file, then one per case that was not exported or was cut."""
    out = []
    for f in report.files:
        exported = sum(p.verdict is None and not p.refused for p in f.plans)
        model = sum(p.verdict is not None and p.verdict[0] == "SKIP" for p in f.plans)
        bad = sum(p.verdict is not None and p.verdict[0] == "FAIL" for p in f.plans)
        refused = sum(bool(p.refused) for p in f.plans)
        parts = [f"{exported} exported"]
        kept = "SKIP" if report.style == "standalone" else "left out"
        if model:
            parts.append(f"{model} written for the model ({kept}, as conform skips them)")
        if bad:
            parts.append(f"{bad} malformed ({'FAIL' if report.style == 'standalone' else 'left out'})")
        if refused:
            parts.append(f"{refused} not exported")
        where = str(f.path) if f.path else "nothing written"
        out.append(f"{f.source}: {len(f.plans)} cases: {', '.join(parts)} -> {where}")
        for plan in f.plans:
            for why in plan.refused:
                out.append(f"  not exported: {plan.case.id}: {why}")
            if plan.static_failure is not None and not plan.refused:
                out.append(f"  fails before any step, as conform fails it: {plan.case.id}: "
                           f"{plan.static_failure}")
            if plan.note:
                out.append(f"  {plan.case.id}: {plan.note}")
            elif plan.left_out and plan.verdict is not None:
                out.append(f"  {plan.case.id}: nothing a real kernel can run "
                           f"({'; '.join(plan.left_out)})")
    written = len([f for f in report.files if f.path])
    out.append(f"{report.exported} of {report.cases} cases exported as {report.style} C "
               f"({written} file{'s' if written != 1 else ''})")
    return out


def run_export(paths: list[str], out_dir: str, style: str, model_cases: str, command: str) -> int:
    report = export_paths(paths, out_dir, style, model_cases, command)
    for line in summary_lines(report):
        print(line)
    return 0
