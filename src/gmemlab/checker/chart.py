"""A counterexample as a message sequence chart (SVG), and as an HTML report.

One lifeline per actor, time running down: each step is a box on the
lifeline of the actor that took it, holding the operation and what happened;
the notifier calls a step made are arrows to a lifeline of their own; the
step where the promise breaks is drawn in red with the promise beside it;
the state the promises look at is written beside every step.  The SVG is
plain text (no dependency, no script), so it renders anywhere, and the HTML
report holds it together with the step table and the replayable case file.
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass

from ..model.events import Notify
from . import promises as pr
from .explore import Counterexample, Verdict
from .report import Replay, trace_rows
from .scenario import Scenario

COL = 190  # width of an actor's column
BOX = 170  # width of a step's box
STATE_W = 360  # width of the state column
CHAR = 6.6  # mean width of a character at FONT px
FONT = 11
LINE = 14  # line height
MARGIN = 20
TOP = 70  # title and actor names
NOTIFIERS = "notifiers"


@dataclass
class _Row:
    number: str
    actor: str
    op: str
    what: str
    state: str
    calls: list[str]  # the notifier calls this step made
    broken: list[str]  # the promises this step breaks


def _wrap(text: str, width: float) -> list[str]:
    return textwrap.wrap(text, max(8, int(width / CHAR)), break_long_words=True,
                         break_on_hyphens=False) or [""]


def _rows(rp: Replay, promise: str) -> list[_Row]:
    rows = []
    steps = [*rp.steps, *([rp.stuck_attempt] if rp.stuck_attempt else [])]
    for (number, actor, op, what, state), st in zip(trace_rows(rp), steps, strict=True):
        calls = [f"{ev.notifier}.{ev.event}" + (f" -> {ev.err}" if ev.err else " -> 0")
                 for ev in st.events if isinstance(ev, Notify)]
        broken = sorted({v.promise for v in st.violations})
        rows.append(_Row(number, actor, op.strip(), what, state, calls, broken))
    if rows and promise == "P8" and rp.stuck_attempt is not None:
        rows[-1].broken = ["P8"]
    elif rows and promise not in rows[-1].broken:
        rows[-1].broken.append(promise)
    return rows


def _text(x: float, y: float, lines: list[str], *, anchor: str = "start", cls: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    spans = "".join(f'<tspan x="{x:.0f}" dy="{0 if i == 0 else LINE}">{html.escape(line)}</tspan>'
                    for i, line in enumerate(lines))
    return f'<text x="{x:.0f}" y="{y:.0f}" text-anchor="{anchor}"{attrs}>{spans}</text>'


def sequence_chart(scenario: Scenario, verdict: Verdict, cex: Counterexample, rp: Replay) -> str:
    """The counterexample as an SVG message sequence chart."""
    rows = _rows(rp, cex.promise)
    actors = list(rp.program.names)
    lifelines = actors + ([NOTIFIERS] if any(r.calls for r in rows) else [])
    x_of = {name: MARGIN + COL * i + COL / 2 for i, name in enumerate(lifelines)}
    state_x = MARGIN + COL * len(lifelines) + 10
    width = state_x + STATE_W + MARGIN
    body: list[str] = []
    y = TOP + 10
    for row in rows:
        label = _wrap(f"{row.number}. {row.op}", BOX - 10)
        what = _wrap(row.what, BOX - 10)
        state = _wrap(row.state or "-", STATE_W)
        broken = [f"{p} violated" for p in row.broken]
        box_h = LINE * (len(label) + len(what)) + 10
        height = max(box_h, LINE * len(state) + 6) + LINE * len(row.calls) + 14
        x = x_of[row.actor]
        cls = "step broken" if row.broken else "step"
        body.append(f'<g class="row" data-step="{row.number}">')
        body.append(f'<rect class="{cls}" x="{x - BOX / 2:.0f}" y="{y:.0f}" width="{BOX}" '
                    f'height="{box_h}" rx="5"/>')
        body.append(_text(x, y + LINE, label, anchor="middle", cls="op"))
        body.append(_text(x, y + LINE * (len(label) + 1), what, anchor="middle", cls="what"))
        if broken:
            body.append(_text(x + BOX / 2 + 6, y + LINE, broken, cls="violated"))
        body.append(_text(state_x, y + LINE, state, cls="state"))
        arrow_y = y + box_h + LINE
        for call in row.calls:
            end = x_of[NOTIFIERS]
            body.append(f'<line class="call" x1="{x:.0f}" y1="{arrow_y - 4:.0f}" x2="{end:.0f}" '
                        f'y2="{arrow_y - 4:.0f}" marker-end="url(#arrow)"/>')
            body.append(_text((x + end) / 2, arrow_y - 7, [call], anchor="middle", cls="callname"))
            arrow_y += LINE
        body.append("</g>")
        y += height
    height_total = y + MARGIN
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height_total:.0f}" '
        f'viewBox="0 0 {width:.0f} {height_total:.0f}" font-family="DejaVu Sans, Arial, sans-serif" '
        f'font-size="{FONT}">',
        "<style>"
        ".step{fill:#f4f7ff;stroke:#335;stroke-width:1}"
        ".broken{fill:#ffecec;stroke:#c00;stroke-width:2}"
        ".op{font-weight:bold}.what{fill:#222}.state{fill:#555}"
        ".violated{fill:#c00;font-weight:bold}.lifeline{stroke:#999;stroke-dasharray:4 3}"
        ".actor{font-weight:bold;font-size:13px}.call{stroke:#06c}.callname{fill:#06c}"
        ".title{font-size:14px;font-weight:bold}"
        "</style>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#06c"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
        _text(MARGIN, 22, [f"{scenario.name} on {scenario.design}: {cex.promise} violated in "
                           f"{len(cex.trace)} steps ({verdict.states:,} states explored)"],
              cls="title"),
        _text(MARGIN, 40, _wrap(pr.PROMISES[cex.promise], width - 2 * MARGIN)[:1], cls="what"),
        _text(state_x, TOP - 6, ["state after the step"], cls="actor"),
    ]
    for name, x in x_of.items():
        head.append(_text(x, TOP - 6, [name], anchor="middle", cls="actor"))
        head.append(f'<line class="lifeline" x1="{x:.0f}" y1="{TOP:.0f}" x2="{x:.0f}" '
                    f'y2="{height_total - MARGIN:.0f}"/>')
    return "\n".join([*head, *body, "</svg>"]) + "\n"


def html_report(scenario: Scenario, verdict: Verdict,
                found: list[tuple[Counterexample, Replay, str]], command: str) -> str:
    """One page: the verdict, and per counterexample its chart, its steps and its case file."""
    esc = html.escape
    title = f"gmemlab check {scenario.name} on {scenario.design}"
    if verdict.holds:
        summary = f"every promise holds on every interleaving ({verdict.states:,} states)"
    else:
        summary = f"violates {', '.join(verdict.violated())} ({verdict.states:,} states explored)"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:DejaVu Sans,Arial,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
        "vertical-align:top;text-align:left}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        ".violated{color:#c00}.warning{color:#a60}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p id="verdict">{esc(summary)}. Reproduce: <code>{esc(command)}</code></p>',
    ]
    parts += [f'<p class="warning">but {esc(w)}</p>' for w in verdict.warnings() + verdict.unmet()]
    if verdict.complete and verdict.coverage:
        parts.append('<h2>What each step did</h2><table id="coverage"><tr><th>actor</th><th>step</th>'
                     "<th>outcomes (transitions)</th></tr>")
        for c in verdict.coverage:
            parts.append(f"<tr><td>{esc(c.actor)}</td><td>{c.index + 1} {esc(c.op)}</td>"
                         f"<td>{esc(c.show())}</td></tr>")
        parts.append("</table>")
    for cex, rp, case in found:
        parts.append(f'<h2 class="violated" id="{cex.promise}">{cex.promise} violated: '
                     f"{esc(pr.PROMISES[cex.promise])}</h2>")
        parts.append(f"<p>{esc(cex.violation.message)}</p>")
        parts.append(f'<div class="chart">{sequence_chart(scenario, verdict, cex, rp)}</div>')
        parts.append("<table><tr><th>#</th><th>actor</th><th>operation</th><th>what happened</th>"
                     "<th>state after</th></tr>")
        for row in trace_rows(rp):
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
        parts.append("<h3>The case file (gmemlab conform FILE --kernel model replays it)</h3>")
        parts.append(f"<pre>{esc(case)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
