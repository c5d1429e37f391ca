"""docs/DESIGNS.md shows each design as the row of policies the model declares."""

from __future__ import annotations

from pathlib import Path

from gmemlab.model.designs import DESIGNS, VARIANTS, policy_tables

DOC = Path(__file__).resolve().parents[1] / "docs" / "DESIGNS.md"


def test_the_policy_tables_are_the_models() -> None:
    text = DOC.read_text()
    begin, end = "<!-- policy tables: begin -->\n", "<!-- policy tables: end -->"
    shown = text[text.index(begin) + len(begin):text.index(end)]
    assert shown == policy_tables(), (
        "docs/DESIGNS.md's policy tables are out of date: paste the output of "
        "python3 -c 'from gmemlab.model.designs import policy_tables; print(policy_tables(), end=\"\")'")
    for name in [*DESIGNS, *VARIANTS]:
        assert f"`{name}`" in shown
