"""docs/API.md: every Python block runs as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import HOST_MISSING

DOC = Path(__file__).resolve().parents[1] / "docs" / "API.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_every_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 6
    namespace: dict[str, Any] = {}
    ran = 0
    for n, code in enumerate(blocks, 1):
        if code.startswith("# needs /dev/kvm") and HOST_MISSING is not None:
            continue
        exec(compile(code, f"{DOC.name} block {n}", "exec"), namespace)
        ran += 1
    out = capsys.readouterr().out
    assert "passed, 0 failed" in out and "kernel " in out
    assert "EINVAL\nSIGSEGV\ncreate_guest_memfd: size must be an integer" in out
    assert ran >= len(blocks) - 1
