"""What `gmemlab list` shows: the names a user passes to the other commands, one line each."""

from __future__ import annotations

import inspect
import tomllib
from difflib import get_close_matches

from .errors import UsageError

KINDS = ("designs", "scenarios", "ops", "mutants", "workloads")


def listing(what: str) -> list[tuple[str, str]]:
    """(name, one line about it) for every thing of that kind."""
    if what not in KINDS:
        near = get_close_matches(what, KINDS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"cannot list {what!r}{hint}: one of {', '.join(KINDS)}")
    return {"designs": _designs, "scenarios": _scenarios, "ops": _ops, "mutants": _mutants,
            "workloads": _workloads}[what]()


def _designs() -> list[tuple[str, str]]:
    from .model.designs import DESIGNS, VARIANTS

    return [(name, design.summary) for name, design in DESIGNS.items()] + \
        [(name, "(variant) " + design.summary) for name, design in VARIANTS.items()]


def _scenarios() -> list[tuple[str, str]]:
    from .checker.scenario import bundled_scenarios

    out = []
    for path in sorted(bundled_scenarios().glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        about = str(doc.get("about", "")).strip().splitlines()
        out.append((path.stem, f"[{doc.get('design', '?')}] " + (about[0] if about else "")))
    return out


def _ops() -> list[tuple[str, str]]:
    from .interface import INTERFACE_OPS, MODEL_ONLY_OPS, Kernel, ModelOnly, op_signature

    out = []
    for op in INTERFACE_OPS + MODEL_ONLY_OPS:
        proto = Kernel if op in INTERFACE_OPS else ModelOnly
        params = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in op_signature(op).parameters.values())
        doc = (inspect.getdoc(getattr(proto, op)) or "").split("\n")[0]
        where = "" if op in INTERFACE_OPS else "(model only) "
        out.append((op, f"{where}({params})" + (f": {doc}" if doc else "")))
    return out


def _mutants() -> list[tuple[str, str]]:
    from .checker.mutations import MUTANTS

    return [(name, f"[{m.scenario}] ({m.design}) " + " ".join(m.about.split()))
            for name, m in MUTANTS.items()]


def _workloads() -> list[tuple[str, str]]:
    from .compare.workloads import bundled_names, load

    out = []
    for name in bundled_names():
        about = " ".join(load(name).about.split())
        out.append((name, about))
    return out
