"""Conformance: the case files of CASES.md, run on the model or the host kernel."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from ..errors import UsageError
from ..interface import Kernel
from .cases import Case, CaseFile, collect, guest_path_of
from .runner import Result, Summary, run_files

__all__ = ["Case", "CaseFile", "Result", "Summary", "bundled_cases", "collect", "conform",
           "kernel_factory"]


def bundled_cases() -> Path:
    """The project's own cases/ folder (installed with the package)."""
    packaged = resources.files("gmemlab") / "cases"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "cases"


def kernel_factory(kind: str, design: str | None = None) -> tuple[Callable[[Case], Kernel], str | None]:
    """A kernel maker for `kind` ("model" or "host"), and why it is unavailable."""
    if kind == "model":
        from ..model import ModelKernel
        from ..model.designs import make_design

        if design is not None:
            make_design(design)  # an unknown name is a usage error, before any case runs

        def make_model(case: Case) -> Kernel:
            # The model takes whichever guest path a case is written for.
            return ModelKernel(design or case.design, guest_path=guest_path_of(case) or "mmu")

        return make_model, None
    if kind == "host":
        from ..host import HostKernel, host_unavailable

        def make_host(case: Case) -> Kernel:
            return HostKernel()

        return make_host, host_unavailable()
    raise UsageError(f"--kernel must be model or host, not {kind!r}")


def conform(paths: list[str], kind: str, design: str | None = None,
            on_result: Callable[[Result], None] | None = None) -> Summary:
    factory, unavailable = kernel_factory(kind, design)
    summary = Summary()
    for result in run_files(collect(paths), kind, factory, unavailable):
        summary.results.append(result)
        if on_result is not None:
            on_result(result)
    return summary


def write_json(path: str, summaries: Iterable[tuple[str, Summary]]) -> None:
    doc = {kind: {"results": [r.as_json() for r in s.results],
                  "summary": {"passed": s.passed, "failed": s.failed, "skipped": s.skipped}}
           for kind, s in summaries}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
