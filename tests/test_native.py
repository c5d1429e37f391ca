"""Building and choosing the compiled core, and doing without it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gmemlab import checker
from gmemlab.checker import Options, check, load
from gmemlab.checker.native import Native
from gmemlab.checker.native import load as load_core
from gmemlab.errors import UsageError


def test_without_a_compiler_it_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("GMEMLAB_CACHE_DIR", str(tmp_path))
    core = load_core.__wrapped__()  # (load() itself is cached per process)
    assert core.lib is None and "no C compiler" in core.why_not


def test_a_failing_build_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` program to stand in for a broken compiler")
    monkeypatch.setenv("CC", false)
    monkeypatch.setenv("GMEMLAB_CACHE_DIR", str(tmp_path))
    core = load_core.__wrapped__()
    assert core.lib is None and "failed on csearch.c" in core.why_not
    assert not list(tmp_path.glob("*.so")), "a failed build leaves no library behind"


def test_the_python_engine_stands_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checker, "available", lambda: Native(None, "no C compiler (gcc or cc, or $CC) found"))
    default = load("seed_default")
    v = check(default, "seed-as-written")
    assert v.engine == "python" and "no C compiler" in v.note
    assert v.violated() == ["P5"] and len(v.first.trace) == 7
    with pytest.raises(UsageError, match="no C compiler"):
        check(default, "seed", Options(engine="c"))
