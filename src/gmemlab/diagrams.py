"""Page state machines as pictures: DOT, and SVG or PNG drawn by Graphviz.

The states and transitions are the model's (model/pagestates.py declares
them, model/statespace.py explores them); this module only lays them out.
Parallel arrows are merged into one arrow with every move that takes it; a
refused move is a dashed arrow labelled with its answer, a loop where it left
the page as it was; a move that let the host touch private bytes is bold.  A
move refused alike wherever it can be made is said once, in the legend.

The DOT text is deterministic (docs/img/states/*.dot are committed and the
tests compare them with what the model gives now); drawing it needs
Graphviz's `dot` program.
"""

from __future__ import annotations

import shutil
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import UsageError
from .model.pagestates import names, page_states
from .model.statespace import PageStates, Transition

FORMATS = ("svg", "dot", "png")
INSTALL_DOT = ("Graphviz's dot program is not installed: install Graphviz (Debian and Ubuntu: "
               "apt-get install graphviz; Fedora: dnf install graphviz; macOS: brew install "
               "graphviz)")
INSTALL_PACKAGE = ("drawing needs the Python package graphviz: pip install 'gmemlab[docs]' "
                   "(or pip install graphviz)")
# Fill colours by the kind of state (PageState.tone).
FILL = {"shared": "#dcefdc", "private": "#f6d5d0", "pending": "#fbe9b7", "gone": "#dddddd",
        "host": "#dcefdc", "lent": "#e3ecf8", "hyp": "#e6dcf2", "guest": "#f6d5d0"}
WRAP = 34  # characters per line of an arrow's label
LEGEND_WRAP = 96


def command(name: str) -> str:
    """The command that draws this machine again."""
    return f"gmemlab draw states {name}"


def _graphviz() -> Any:
    try:
        import graphviz
    except ImportError:
        raise UsageError(INSTALL_PACKAGE) from None
    return graphviz


def _wrap(items: list[str], suffix: str = "") -> str:
    text = ", ".join(items) + (f": {suffix}" if suffix else "")
    return "\n".join(textwrap.wrap(text, WRAP, break_on_hyphens=False, break_long_words=False))


def _move(t: Transition) -> str:
    return f"{t.move} (reaches private bytes)" if t.private_bytes else t.move


def _arrow_label(group: list[Transition]) -> str:
    """The moves that take one arrow, in the machine's order; refusals by answer."""
    if not group[0].refused:
        return _wrap([_move(t) for t in group])
    by_answer: dict[str, list[str]] = defaultdict(list)
    for t in group:
        by_answer[t.refused].append(_move(t))
    return "\n".join(_wrap(moves, answer) for answer, moves in by_answer.items())


def legend(ps: PageStates) -> list[str]:
    """The drawing's legend, line by line."""
    key = ("Solid: the move succeeds (a move that changes nothing drawn is not shown).  Dashed: "
           "refused (errno, signal, or the exit a guest access ends in).")
    if any(t.refused and t.src != t.dst for t in ps.transitions):
        key += "  A dashed arrow that leaves its state: the call changed the page before it failed."
    if any(t.private_bytes for t in ps.transitions):
        key += "  Bold: the host read or wrote a private page's bytes (promise P1 broken)."
    lines = [ps.title, ps.page + ".", key]
    if ps.glossary:
        lines.append("; ".join(f"{fact}: {meaning}" for fact, meaning in ps.glossary) + ".")
    if ps.never_made:
        lines.append("Never possible here (the caller never holds what they need): "
                     + ", ".join(ps.never_made) + ".")
    if ps.refused_everywhere:
        lines.append("Refused wherever the caller could make it: " + "; ".join(
            f"{move} {answer}" for move, answer in ps.refused_everywhere) + ".")
    if ps.exact:
        lines.append("Simplified where no move answers differently: " + "; ".join(ps.exact) + ".")
    if ps.coarsened:
        lines.append("Merged to keep the drawing small (an arrow may then hold for some of the "
                     "merged states only): " + "; ".join(ps.coarsened) + ".")
    lines.append(f"Drawn from the model by: {command(ps.name)}")
    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, LEGEND_WRAP, break_on_hyphens=False) or [""]
    return out


def dot_source(ps: PageStates) -> str:
    """The machine as DOT text (deterministic)."""
    graphviz = _graphviz()
    label = "".join(graphviz.escape(line) + r"\l" for line in legend(ps))
    g = graphviz.Digraph(
        ps.name.replace("-", "_").replace(".", "_"),
        graph_attr={"label": label, "labelloc": "b", "labeljust": "l", "rankdir": ps.layout,
                    "fontname": "Helvetica", "fontsize": "10", "nodesep": "0.5", "ranksep": "0.6"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                   "fontsize": "11"},
        edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    groups: dict[str, list[int]] = defaultdict(list)
    for i, st in enumerate(ps.states):
        groups[st.group].append(i)
    for n, (group, members) in enumerate(groups.items()):
        def add(target: Any, members: list[int] = members) -> None:
            for i in members:
                st = ps.states[i]
                target.node(f"s{i}", st.label, fillcolor=FILL.get(st.tone, "white"))
        if group:
            with g.subgraph(name=f"cluster_{n}") as c:
                c.attr(label=group, style="dashed", fontname="Helvetica", fontsize="10")
                add(c)
        else:
            add(g)
    for n, start in enumerate(ps.starts):
        g.node(f"start{n}", "", shape="point", width="0.12")
        g.edge(f"start{n}", f"s{start.state}", _wrap([start.label]))
    arrows: dict[tuple[int, int, bool], list[Transition]] = defaultdict(list)
    for t in ps.transitions:
        arrows[(t.src, t.dst, bool(t.refused))].append(t)
    for (src, dst, refused), taking in arrows.items():
        style = {"style": "dashed", "color": "#a04040", "fontcolor": "#a04040"} if refused else {}
        if any(t.private_bytes for t in taking):
            style = {"style": "bold", "color": "#c00000", "fontcolor": "#c00000"}
        g.edge(f"s{src}", f"s{dst}", _arrow_label(taking), **style)
    source: str = g.source
    return source


def require_dot() -> None:
    """UsageError (one line: how to install it) unless Graphviz's dot can be run."""
    _graphviz()
    if shutil.which("dot") is None:
        raise UsageError(INSTALL_DOT)


def render(source: str, fmt: str) -> bytes:
    """DOT text drawn as fmt ("svg" or "png") by Graphviz's dot."""
    graphviz = _graphviz()
    try:
        out: bytes = graphviz.pipe("dot", fmt, source.encode())
    except graphviz.ExecutableNotFound:
        raise UsageError(INSTALL_DOT) from None
    return out


def arrows(ps: PageStates) -> int:
    """The arrows drawn: transitions merged by (from, to, refused), and the starts."""
    return len({(t.src, t.dst, bool(t.refused)) for t in ps.transitions}) + len(ps.starts)


def _format(fmt: str | None, out: str | None) -> str:
    if fmt is None:
        suffix = Path(out).suffix.lstrip(".") if out else ""
        fmt = suffix if suffix in FORMATS else "svg"
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    return fmt


def run_draw(name: str, out: str | None, fmt: str | None) -> tuple[bytes | None, list[str]]:
    """`gmemlab draw states NAME|all`: the drawing for standard output (None
    when it went to a file), and what was written, one line each."""
    fmt = _format(fmt, out)
    if name != "all" and name not in names():
        raise UsageError(f"no page state machine named {name!r} (known: {', '.join(names())}; "
                         "or all)")
    if fmt != "dot":
        require_dot()
    if name == "all":
        if out is None:
            raise UsageError("gmemlab draw states all needs -o FOLDER")
        folder = Path(out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {out}: {exc.strerror}") from None
        return None, [_write(folder / f"{n}.{fmt}", n, fmt, also_dot=True) for n in names()]
    if out is None:
        if fmt == "png":
            raise UsageError("a PNG goes to a file: -o FILE")
        source = dot_source(page_states(name))
        return source.encode() if fmt == "dot" else render(source, fmt), []
    return None, [_write(Path(out), name, fmt, also_dot=False)]


def _write(path: Path, name: str, fmt: str, also_dot: bool) -> str:
    """Write machine `name` to path (and, if asked, its DOT text beside it); a line saying so."""
    ps = page_states(name)
    source = dot_source(ps)
    try:
        if also_dot and fmt != "dot":
            path.with_suffix(".dot").write_text(source)
        path.write_bytes(source.encode() if fmt == "dot" else render(source, fmt))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    return f"wrote {path}: {len(ps.states)} states, {arrows(ps)} arrows"


__all__ = ["FORMATS", "arrows", "command", "dot_source", "legend", "render",
           "require_dot", "run_draw"]
