"""Conformance: the case files of CASES.md, run on the model or the host kernel."""

from __future__ import annotations

from collections.abc import Callable
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
        from ..host import HostKernel, probe

        def make_host(case: Case) -> Kernel:
            return HostKernel()

        missing = probe.kvm_missing()
        return make_host, None if missing is None else f"no usable /dev/kvm: {missing}"
    raise UsageError(f"--kernel must be model or host, not {kind!r}")


def conform(paths: list[str], kind: str, design: str | None = None,
            on_result: Callable[[Result], None] | None = None) -> Summary:
    factory, unavailable = kernel_factory(kind, design)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    files = collect(paths)
    if not any(f.cases or f.error for f in files):
        where = ", ".join(paths) or "(nothing)"
        raise UsageError(f"no case found in {where}: give case files (TOML with [[case]] tables) "
                         "or folders holding them")
    summary = Summary()
    for result in run_files(files, kind, factory, unavailable):
        summary.results.append(result)
        if on_result is not None:
            on_result(result)
    return summary
