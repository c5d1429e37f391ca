"""Case files as C programs: a kernel selftest, or a standalone TAP program.

`export_paths` writes one C file per case file, one test per case, in one of
two flavours (docs/UPSTREAM.md):

* ``standalone``: libc and linux/kvm.h only; each case judged exactly as
  `gmemlab conform --kernel host` judges it, SKIP included;
* ``kselftest``: a file for tools/testing/selftests/kvm/, written with the
  kernel's harness (kselftest_harness.h) and library (kvm_util).

A case written for the model is exported as the part of it a real kernel can
run when it is a checker counterexample (`--model-cases auto`, prefix.py), or
always (`prefix`), or skipped as conform skips it (`skip`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..conform.cases import Case, CaseFile, collect
from ..errors import UsageError
from ..vmm import asm
from . import emitters
from .plan import CasePlan, bad_file, plan_case
from .prefix import is_counterexample, kernel_prefix

STYLES = ("standalone", "kselftest")
MODEL_CASES = ("auto", "prefix", "skip")


@dataclass
class FileExport:
    source: str
    path: Path | None  # the C file written (None: no case to write)
    plans: list[CasePlan] = field(default_factory=list)

    def refusals(self) -> list[str]:
        return [f"{p.case.id}: {why}" for p in self.plans for why in p.refused]


@dataclass
class ExportReport:
    style: str
    files: list[FileExport] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(len(f.plans) for f in self.files)

    @property
    def exported(self) -> int:
        return sum(1 for f in self.files for p in f.plans if p.verdict is None and not p.refused)


def plan_for(case: Case, cfile: str, style: str, model_cases: str = "auto") -> CasePlan:
    """The plan of one case in a style (the kernel-runnable prefix of a model case, if asked)."""
    note, left_out = "", []
    if case.kernel == "model" and case.error is None and (
            model_cases == "prefix" or (model_cases == "auto" and is_counterexample(case))):
        prefix = kernel_prefix(case)
        if prefix.case is None:
            plan = CasePlan(case=case, cfile=cfile, left_out=prefix.left_out)
            plan.verdict = ("SKIP", "written for the model kernel only: no step a real kernel can "
                                    "run (" + "; ".join(prefix.left_out) + ")")
            return plan
        case, note, left_out = prefix.case, prefix.note, prefix.left_out

    def has_emitter(op: str) -> str | None:
        why = emitters.missing(op, style)
        if why is None and op == "guest_access":
            why = asm.missing_reason()
        return why

    plan = plan_case(case, cfile, has_emitter, emitters.host_check)
    plan.note, plan.left_out = note, left_out
    return plan


def _output_name(source: Path, root: Path | None, style: str) -> str:
    rel = source.relative_to(root) if root is not None else Path(source.name)
    stem = "_".join(rel.with_suffix("").parts).replace("-", "_").replace(".", "_")
    return f"{stem}_test.c" if style == "kselftest" else f"{stem}.c"


def _render(style: str, source: str, plans: list[CasePlan], command: str) -> str | None:
    if style == "standalone":
        from . import standalone
        for plan in plans:
            standalone.exportable(plan)
        guest = asm.missing_reason() is None and \
            any(p.guest and p.verdict is None and not p.refused for p in plans)
        return standalone.render(source, plans, guest, command)
    from . import kselftest
    return kselftest.render(source, plans, command)


def export_files(files: list[CaseFile], out_dir: Path, style: str, model_cases: str = "auto",
                 roots: dict[str, Path | None] | None = None, command: str = "") -> ExportReport:
    if style not in STYLES:
        raise UsageError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
    if model_cases not in MODEL_CASES:
        raise UsageError(f"--model-cases must be one of {', '.join(MODEL_CASES)}, not {model_cases!r}")
    report = ExportReport(style)
    names: set[str] = set()
    for case_file in files:
        source = case_file.path
        if case_file.error is not None:
            plans = [bad_file(source, case_file.error)]
        else:
            plans = [plan_for(c, source, style, model_cases) for c in case_file.cases]
        if not plans:
            report.files.append(FileExport(source, None))
            continue
        text = _render(style, source, plans, command)
        if text is None:
            report.files.append(FileExport(source, None, plans))
            continue
        name = _output_name(Path(source), (roots or {}).get(source), style)
        while name in names:
            name = name.replace(".c", "_.c")
        names.add(name)
        path = out_dir / name
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None
        report.files.append(FileExport(source, path, plans))
    return report


def export_paths(paths: list[str], out_dir: str | Path, style: str = "standalone",
                 model_cases: str = "auto", command: str = "") -> ExportReport:
    """Export every case file under paths (files or folders) into out_dir."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    files = collect(paths)
    if not any(f.cases or f.error for f in files):
        raise UsageError(f"no case found in {', '.join(paths) or '(nothing)'}: give case files "
                         "(TOML with [[case]] tables) or folders holding them")
    roots: dict[str, Path | None] = {}
    for p in paths:
        path = Path(p)
        for f in files:
            if path.is_dir() and Path(f.path).is_relative_to(path):
                roots.setdefault(f.path, path)
    return export_files(files, Path(out_dir), style, model_cases, roots, command)
