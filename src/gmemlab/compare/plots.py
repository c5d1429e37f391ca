"""The comparison drawn (matplotlib, Agg backend): PNG and SVG of each figure.

* ``predicted``: each design's predicted time, stacked by event kind (assumed
  kinds hatched);
* ``per-conversion``: predicted cost per conversion against the workload's
  sweep parameter (the pool size for dma-pool);
* ``vmas``: host VMAs against the number of shared fragments, with the
  vm.max_map_count line;
* ``measured``: measured against predicted time where the host validated a
  design (the diagonal and the 25% band);
* ``sensitivity``: each design's predicted time as each assumed cost runs
  over its range, so a change of ranking is visible.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .costmodel import ASSUMED, ordered, sensitivity
from .report import TOLERANCE, Comparison

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                     "figure.dpi": 100, "savefig.bbox": "tight"})
MAX_KINDS = 9


def draw(c: Comparison, folder: str | Path) -> list[Path]:
    """Every figure that has data, as PNG and SVG in folder; the files written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    name = c.resolved.name
    written: list[Path] = []
    for kind, fn in (("predicted", predicted), ("per-conversion", per_conversion),
                     ("vmas", vmas), ("measured", measured), ("sensitivity", sensitivity_plot)):
        fig = fn(c)
        if fig is None:
            continue
        for ext in ("png", "svg"):
            path = out / f"{name}-{kind}.{ext}"
            fig.savefig(path)
            written.append(path)
        plt.close(fig)
    return written


def _title(c: Comparison, what: str) -> str:
    return f"{c.resolved.name}: {what}"


def predicted(c: Comparison) -> Figure | None:
    runs = c.ran()
    if not runs:
        return None
    totals = {r.design: c.model.breakdown(r.total()) for r in runs}
    kinds: dict[str, float] = {}
    for per in totals.values():
        for e, s in per.items():
            kinds[e] = kinds.get(e, 0.0) + abs(s)
    top = [e for e in ordered({e: 1 for e in kinds}) if e in sorted(kinds, key=kinds.__getitem__,
                                                                      reverse=True)[:MAX_KINDS]]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(runs) + 1.6))
    cmap = plt.get_cmap("tab10")
    designs = [r.design for r in runs]
    left = [0.0] * len(runs)
    for i, e in enumerate([*top, "other"]):
        widths = []
        for d in designs:
            per = totals[d]
            v = sum(s for k, s in per.items() if k not in top) if e == "other" else per.get(e, 0.0)
            widths.append(max(v, 0.0) * 1e3)
        if not any(widths):
            continue
        assumed = e != "other" and c.model.cost(e).kind == "assumed"
        ax.barh(designs, widths, left=left, color=cmap(i % 10), hatch="//" if assumed else None,
                edgecolor="white", label=f"{e} (assumed)" if assumed else e)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("predicted time, ms")
    ax.set_title(_title(c, "predicted time by event kind"))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def per_conversion(c: Comparison) -> Figure | None:
    if not any(c.sweep.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for design, points in c.sweep.items():
        xs = [float(v) for v, _, _ in points]
        ys = [p * 1e6 for _, p, _ in points]
        if xs:
            ax.plot(xs, ys, marker="o", label=design)
    sweep = c.resolved.workload.sweep or ""
    ax.set_xscale("log")
    unit = {"pages": "pages of 4 KiB", "pool": "bytes"}.get(sweep, "count")
    ax.set_xlabel(f"{sweep} ({unit})")
    ax.set_ylabel("predicted µs per conversion")
    ax.set_title(_title(c, f"cost per conversion against {sweep}"))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def vmas(c: Comparison) -> Figure | None:
    runs = [r for r in c.ran() if len(r.vma_samples) > 1]
    if not runs or not any(r.max_fragments for r in runs):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in runs:
        pts = r.vma_samples[:: max(1, len(r.vma_samples) // 2000)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", markersize=2, label=r.design)
    ax.axhline(c.max_map_count, color="red", linestyle="--", linewidth=1,
               label=f"vm.max_map_count = {c.max_map_count:,}")
    ax.set_xlabel("shared fragments (runs of shared guest pages)")
    ax.set_ylabel("host VMAs")
    ax.set_title(_title(c, "VMAs against shared fragments"))
    ax.legend(fontsize=7, markerscale=4)
    ax.grid(alpha=0.3)
    return fig


def measured(c: Comparison) -> Figure | None:
    done = [v for v in c.validations.values() if v.ran]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = max(max(v.measured, v.predicted) for v in done) * 1e3 * 1.15
    xs = [0.0, top]
    ax.plot(xs, xs, color="black", linewidth=1, label="measured = predicted")
    ax.fill_between(xs, [x * (1 - TOLERANCE) for x in xs], [x * (1 + TOLERANCE) for x in xs],
                    color="green", alpha=0.12, label=f"±{TOLERANCE:.0%}")
    for v in done:
        ax.errorbar(v.predicted * 1e3, v.measured * 1e3,
                    xerr=[[max(0.0, (v.predicted - v.predicted_low) * 1e3)],
                          [max(0.0, (v.predicted_high - v.predicted) * 1e3)]],
                    fmt="o", capsize=3, label=f"{v.design} ({v.error:+.0%})")
        for _, m, p in v.steps:
            ax.plot(p * 1e3, m * 1e3, "x", color="grey", markersize=4)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("predicted ms (calibrated costs of the events run here)")
    ax.set_ylabel("measured ms (VMM thread CPU time)")
    ax.set_title(_title(c, "measured against predicted (x: steps)"))
    ax.legend(fontsize=7)
    return fig


def sensitivity_plot(c: Comparison) -> Figure | None:
    curves = sensitivity(c.model, c.totals())
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.4), squeeze=False)
    for ax, (event, per_design) in zip(axes[0], curves.items(), strict=True):
        for design, pts in per_design.items():
            ax.plot([v * 1e6 for v, _ in pts], [t * 1e3 for _, t in pts], label=design)
        ax.axvline(ASSUMED[event].value * 1e6, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"{event} µs (assumed)")
        ax.set_ylabel("predicted ms")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(_title(c, "how the ranking moves with each assumed cost"))
    fig.tight_layout()
    return fig
