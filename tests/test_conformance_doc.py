"""docs/CONFORMANCE.md and the cases' [item] tags must describe the same coverage."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ITEMS = range(1, 98)


def _tags() -> dict[int, set[str]]:
    tags: dict[int, set[str]] = {}
    for f in sorted((ROOT / "cases").rglob("*.toml")):
        for case in tomllib.loads(f.read_text()).get("case", []):
            for _, num in re.findall(r"\[([A-K])(\d+)\]", case.get("about", "")):
                tags.setdefault(int(num), set()).add(f"{f.relative_to(ROOT / 'cases')}::{case['id']}")
    return tags


def _rows() -> dict[int, str]:
    text = (ROOT / "docs" / "CONFORMANCE.md").read_text()
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| [^|]+ \| (.+) \|$", text, re.M)}


def test_every_item_has_a_row() -> None:
    rows = _rows()
    assert sorted(rows) == list(ITEMS)


def test_rows_and_tags_agree() -> None:
    rows, tags = _rows(), _tags()
    for item, cell in rows.items():
        named = set(re.findall(r"`([^`]+\.toml::[^`]+)`", cell))
        if named or item in tags:
            assert named == tags.get(item, set()), f"item {item}: doc {named} vs cases {tags.get(item)}"
        else:
            assert cell.startswith(("not expressible", "not applicable")), f"item {item}: {cell}"


def test_named_tests_exist() -> None:
    for cell in _rows().values():
        for path, name in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", cell):
            assert f"def {name}(" in (ROOT / path).read_text(), f"{path}::{name} is missing"
