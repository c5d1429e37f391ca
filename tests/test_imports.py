"""The import graph: no cycle anywhere, and the leaf modules import nothing of gmemlab.

Every import counts, at module level or inside a function, under TYPE_CHECKING
or not: a cycle that only a lazy import hides is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LEAVES = ("gmemlab.libc", "gmemlab.rangemap", "gmemlab.uapi")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[:len(up) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # "from . import x" names modules x, not the package's face.
                targets = [f"{base}.{a.name}" for a in node.names]
                if node.module:
                    targets.append(base)
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("gmemlab"):
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_no_package_cycle() -> None:
    """Packages (host, vmm, model, checker, ...) form layers too."""
    graph = _graph()
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        mine = ".".join(name.split(".")[:2])
        for t in targets:
            theirs = ".".join(t.split(".")[:2])
            if theirs != mine:
                packages.setdefault(mine, set()).add(theirs)
        packages.setdefault(mine, set())
    cycle = _cycle(packages)
    assert cycle is None, " -> ".join(cycle or [])


def test_leaves_import_nothing_of_gmemlab() -> None:
    graph = _graph()
    for leaf in LEAVES:
        assert graph[leaf] == set(), f"{leaf} imports {sorted(graph[leaf])}"
