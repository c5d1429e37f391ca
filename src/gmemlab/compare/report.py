"""What `gmemlab compare` prints and writes: tables per design, and JSON for scripts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from .costmodel import ASSUMED, CostModel, ordered
from .counting import DesignRun
from .validation import Validation
from .workloads import Resolved

TOLERANCE = 0.25  # the largest validation error the cost model may make on the default sizes


@dataclass
class Comparison:
    """A workload compared across designs."""

    resolved: Resolved
    model: CostModel
    runs: list[DesignRun]
    validations: dict[str, Validation] = field(default_factory=dict)
    max_map_count: int = 65530
    sweep: dict[str, list[tuple[Any, float, int]]] = field(default_factory=dict)  # value, s/conv., n
    notes: list[str] = field(default_factory=list)

    def ran(self) -> list[DesignRun]:
        return [r for r in self.runs if r.ran]

    def predicted(self, run: DesignRun) -> float:
        return self.model.predict(run.total())

    def per_conversion(self, run: DesignRun) -> float | None:
        return conversion_cost(self.model, run)

    def totals(self) -> dict[str, Counter[str]]:
        return {r.design: r.total() for r in self.ran()}

    def failed_validations(self) -> list[Validation]:
        return [v for v in self.validations.values() if v.ran and abs(v.error) > TOLERANCE]


def conversion_cost(model: CostModel, run: DesignRun) -> float | None:
    """Predicted seconds per conversion: the steps that convert, over their conversions
    (a dma step's I/O included, a separate I/O step's not)."""
    steps = [s for s in run.steps if s.conversions]
    count = sum(s.conversions for s in steps)
    if not count:
        return None
    return sum(model.predict(s.events) for s in steps) / count


def ms(seconds: float) -> str:
    value = seconds * 1e3
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3f}"


def us(seconds: float) -> str:
    value = seconds * 1e6
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def n(value: int) -> str:
    return f"{value:,}"


def print_comparison(c: Comparison, console: Console) -> None:
    r = c.resolved
    console.print(f"[bold]{r.describe()}[/bold]")
    console.print(f"  {r.workload.about}", markup=False)
    table = Table(title="per design: events counted by the model, time at calibrated costs",
                  title_justify="left")
    cols = ["design", "host side", "requests", "conv.", "syscalls", "exits", "hypercalls",
            "VMA split/merge", "VMAs max", "zaps host/KVM", "TLB", "predicted ms", "assumed",
            "µs/conv."]
    if c.validations:
        cols += ["measured ms", "error"]
    cols.append("limits and refusals")
    for col in cols:
        left = col in ("design", "host side", "limits and refusals")
        table.add_column(col, justify="left" if left else "right",
                         no_wrap=col != "limits and refusals")
    snapshot = any(p.do == "snapshot" for p in r.plans)
    for run in c.runs:
        if not run.ran:
            continue
        events, costs = run.total(), _costs(run)
        total = c.predicted(run)
        assumed = c.model.assumed_part(events)
        conv = run.conversions
        per = c.per_conversion(run)
        row = [run.design, run.host_side or "", n(len(run.requests)), n(conv),
               n(costs["syscalls"]), n(events["exit"]), n(costs["hypercalls"]),
               f"{n(costs['vma_splits'])}/{n(costs['vma_merges'])}", n(run.max_vmas),
               f"{n(costs['host_pte_zaps'])}/{n(costs['kvm_zaps'])}", n(costs["tlb_flushes"]),
               ms(total), f"{assumed / total:.0%}" if total else "-",
               us(per) if per is not None else "-"]
        if c.validations:
            v = c.validations.get(run.design)
            if v is not None and v.ran:
                style = "green" if abs(v.error) <= TOLERANCE else "red"
                row += [ms(v.measured), f"[{style}]{v.error:+.0%}[/{style}]"]
            else:
                row += ["-", "-"]
        row.append(_limits(run))
        table.add_row(*row)
    console.print(table)
    if snapshot:
        snap = Table(title="what the snapshot could read", title_justify="left")
        for col in ("design", "readable pages", "private pages (unreadable)",
                    "private pages the host read"):
            snap.add_column(col, justify="left" if col == "design" else "right")
        for run in c.ran():
            step = next(s for s in run.steps if s.kind == "snapshot")
            leak = f"[red]{n(step.leaked_pages)}[/red]" if step.leaked_pages else "0"
            snap.add_row(run.design, n(step.readable_pages), n(step.private_pages), leak)
        console.print(snap)
    cannot = [run for run in c.runs if not run.ran]
    if cannot:
        t = Table(title="designs that cannot express this workload", title_justify="left")
        t.add_column("design")
        t.add_column("why (each host side tried)")
        for run in cannot:
            t.add_row(run.design, "\n".join(f"{side}: {why}" for side, why in run.tried)
                      or (run.reason or ""))
        console.print(t)
    if c.validations:
        print_validations(c, console)
    print_costs(c, console)
    for note in c.notes:
        console.print(f"  note: {note}", markup=False)


def _costs(run: DesignRun) -> Counter[str]:
    out: Counter[str] = Counter()
    for step in run.steps:
        out.update(step.costs.as_table())
    return out


def _limits(run: DesignRun) -> str:
    parts = [f"{k} x{v}" for k, v in run.limits().items()]
    stopped = [s.stopped for s in run.steps if s.stopped and not s.stopped.startswith("not run")]
    if stopped:
        parts.append(f"stopped at {stopped[0]} after {n(len(run.requests))} requests")
    other = [f"{k} x{v}" for k, v in run.refusals().items() if not any(
        lim in k for lim in ("ENOMEM",))]
    return "; ".join(parts + other[:2]) or "none"


def print_validations(c: Comparison, console: Console) -> None:
    t = Table(title=f"validation on this kernel: the host side carried out for real, a real "
                    f"guest asking (VMM thread CPU time; within {TOLERANCE:.0%} required)",
              title_justify="left")
    for col in ("design", "requests", "measured ms", "predicted ms (range)", "error",
                "left out ms", "wall ms", "VMAs host/model", "why not / notes"):
        t.add_column(col, justify="left" if col in ("design", "why not / notes") else "right")
    for design, v in c.validations.items():
        if not v.ran:
            t.add_row(design, "", "", "", "", "", "", "", v.reason or "")
            continue
        style = "green" if abs(v.error) <= TOLERANCE else "red"
        t.add_row(design, n(v.requests), ms(v.measured),
                  f"{ms(v.predicted)} ({ms(v.predicted_low)}-{ms(v.predicted_high)})",
                  f"[{style}]{v.error:+.1%}[/{style}]", ms(v.left_out), ms(v.wall),
                  f"{v.vmas_host}/{v.vmas_model}", "; ".join(v.notes))
    console.print(t)
    console.print("  left out: events this kernel cannot perform (conversions, hypercalls, KVM "
                  "zaps, cross-CPU shootdowns), priced in the prediction above but not run here.  "
                  "Each run is priced with the exit round trip measured on its vCPU just before "
                  "it (the median run is shown).", markup=False)


def print_costs(c: Comparison, console: Console) -> None:
    used: Counter[str] = Counter()
    for events in c.totals().values():
        used.update(events)
    t = Table(title=f"costs per event ({c.model.calibration.source})", title_justify="left")
    for col in ("event", "cost µs", "range µs", "source", "how / what"):
        t.add_column(col, justify="right" if "µs" in col else "left")
    for cost in c.model.table(ordered(used)):
        label = {"measured": "measured", "proxy": "proxy", "assumed": "[yellow]ASSUMED[/yellow]",
                 "missing": "[red]missing[/red]"}[cost.kind]
        scale = 1e9 if cost.event == "copy_byte" else 1e6
        unit = " ns/B" if cost.event == "copy_byte" else ""
        t.add_row(cost.event, f"{cost.seconds * scale:.3g}{unit}",
                  f"{cost.low * scale:.3g}-{cost.high * scale:.3g}", label, cost.how)
    console.print(t)
    assumed = [e for e in ordered(used) if c.model.cost(e).kind == "assumed"]
    for e in assumed:
        console.print(f"  assumed {e}: {ASSUMED[e].source}", markup=False, highlight=False)


def as_json(c: Comparison) -> dict[str, Any]:
    r = c.resolved
    designs = []
    for run in c.runs:
        doc: dict[str, Any] = {"design": run.design, "host_side": run.host_side,
                               "expressible": run.ran, "reason": run.reason,
                               "tried": [{"host_side": s, "why": w} for s, w in run.tried]}
        if run.ran:
            events = run.total()
            doc.update({
                "requests": len(run.requests), "conversions": run.conversions,
                "events": dict(events), "costs": dict(_costs(run)),
                "predicted_s": c.predicted(run),
                "predicted_by_event_s": c.model.breakdown(events),
                "assumed_s": c.model.assumed_part(events),
                "per_conversion_s": c.per_conversion(run),
                "max_vmas": run.max_vmas, "max_fragments": run.max_fragments,
                "memslots": run.memslots, "limits": dict(run.limits()),
                "refusals": dict(run.refusals()), "model_seconds": run.seconds,
                "setup": run.setup.as_json(), "steps": [s.as_json() for s in run.steps],
                "vma_samples": run.vma_samples[:: max(1, len(run.vma_samples) // 500)]})
        if run.design in c.validations:
            doc["validation"] = c.validations[run.design].as_json()
        designs.append(doc)
    used: Counter[str] = Counter()
    for events in c.totals().values():
        used.update(events)
    return {
        "workload": r.name, "guest": r.guest.name, "params": r.params,
        "calibration": {"source": c.model.calibration.source,
                        "profile": c.model.calibration.profile,
                        "machine": c.model.calibration.machine, "when": c.model.calibration.when},
        "costs": {cost.event: {"seconds": cost.seconds, "low": cost.low, "high": cost.high,
                               "kind": cost.kind, "how": cost.how,
                               **({"source": ASSUMED[cost.event].source}
                                  if cost.kind == "assumed" and cost.event in ASSUMED else {})}
                  for cost in c.model.table(ordered(used))},
        "max_map_count": c.max_map_count, "designs": designs,
        "sweep": {d: [{"value": v, "per_conversion_s": p, "conversions": k} for v, p, k in pts]
                  for d, pts in c.sweep.items()},
        "notes": c.notes,
    }
