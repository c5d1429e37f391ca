"""gmemlab export-c: the standalone programs judge every bundled case as
`gmemlab conform --kernel host` does on this machine, the kselftest files
compile against stand-ins for the kernel's headers, refusals name their step,
and a counterexample exports what a kernel can run of it."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gmemlab.conform import bundled_cases, collect, kernel_factory
from gmemlab.conform.cases import Case, parse
from gmemlab.conform.runner import run_case
from gmemlab.export import STYLES, ExportReport, emitters, export_files, export_paths, plan_for, uapi_c
from gmemlab.export.prefix import kernel_prefix
from gmemlab.interface import INTERFACE_OPS
from gmemlab.vmm import asm

from .conftest import HOST_MISSING

ROOT = Path(__file__).resolve().parents[1]
STANDINS = ROOT / "tests" / "data" / "kselftest"
CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc) to build the exports")
needs_kvm_and_cc = pytest.mark.skipif(CC is None or HOST_MISSING is not None,
                                      reason=HOST_MISSING or "no C compiler (cc)")
TAP = re.compile(r"^(not ok|ok) (\d+) - (.*?)(?: # SKIP (.*)|: (.*))?$")


def _tap(text: str) -> list[tuple[str, str, str]]:
    """(id, PASS/FAIL/SKIP, message) per test line of a TAP stream."""
    out = []
    for line in text.splitlines():
        m = TAP.match(line)
        if m:
            status = "FAIL" if m.group(1) == "not ok" else "SKIP" if m.group(4) is not None else "PASS"
            out.append((m.group(3), status, m.group(4) or m.group(5) or ""))
    return out


def _build_and_run(report: ExportReport) -> dict[tuple[str, str], tuple[str, str]]:
    """Compile every standalone file warning-free, run it: (file, id) -> (status, message)."""
    def one(path: Path) -> tuple[Path, str]:
        exe = path.with_suffix("")
        built = subprocess.run([str(CC), "-O2", "-Wall", "-Werror", "-o", str(exe), str(path)],
                               capture_output=True, text=True)
        assert built.returncode == 0, f"{path.name} does not build:\n{built.stderr[:4000]}"
        ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
        return path, ran.stdout

    files = [f for f in report.files if f.path is not None]
    with ThreadPoolExecutor(2) as pool:
        outputs = dict(pool.map(one, [f.path for f in files if f.path is not None]))
    results = {}
    for f in files:
        assert f.path is not None
        lines = _tap(outputs[f.path])
        assert [i for i, _, _ in lines] == [p.case.id for p in f.plans], outputs[f.path][-2000:]
        results.update({(f.source, i): (s, m) for i, s, m in lines})
    return results


def _compare(c: dict[tuple[str, str], tuple[str, str]],
             py: dict[tuple[str, str], tuple[str, str]]) -> list[str]:
    """Where the C verdicts differ from Python's: the status, a SKIP's reason, a FAIL's step.
    (Without GNU as, guest steps are not exported: such a case skips for that reason.)"""
    diffs = []
    for key, (status, message) in py.items():
        got, text = c[key]
        no_as = asm.missing_reason()
        same = got == status and (status == "PASS" or (
            text == message or bool(no_as and text.startswith("not exported:") and no_as in text)
            if status == "SKIP" else text.split(":")[0] == message.split(":")[0]))
        if not same:
            diffs.append(f"{key[0]}::{key[1]}: C {got} {text!r}, Python {status} {message!r}")
    return diffs


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return export_paths([str(bundled_cases())], tmp_path_factory.mktemp("standalone"), "standalone")


# --- the vocabulary ------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_every_host_operation_has_an_emitter(style: str) -> None:
    missing = [op for op in INTERFACE_OPS if emitters.missing(op, style)]
    assert not missing, f"operations without a {style} C export: {', '.join(missing)}"


def test_an_operation_without_an_emitter_is_refused_at_its_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(emitters.EMITTERS, "fsync")
    doc = {"case": [{"id": "memfd-fsync", "steps": [
        {"op": "memfd_create", "name": "t", "flags": 0, "as": "m"},
        {"op": "fsync", "fd": "$m"}]}]}
    case = parse(doc, "x.toml").cases[0]
    plan = plan_for(case, "x.toml", "standalone")
    assert plan.refused == ["step 2 (fsync): no C export for fsync yet"]
    report = export_files([parse(doc, "x.toml")], tmp_path, "standalone")
    text = report.files[0].path.read_text()  # type: ignore[union-attr]
    assert '"not exported: step 2 (fsync): no C export for fsync yet"' in text


# --- standalone: the same verdicts as conform --kernel host --------------------------------------


@needs_kvm_and_cc
def test_standalone_exports_judge_as_conform_does(standalone: ExportReport, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GMEMLAB_HOST_MASK"}
    subprocess.run([sys.executable, "-m", "gmemlab", "conform", str(bundled_cases()), "--kernel",
                    "host", "--json", str(tmp_path / "conform.json")], capture_output=True, env=env,
                   cwd=ROOT)
    doc = json.loads((tmp_path / "conform.json").read_text())
    py = {(r["file"], r["id"]): (r["status"], r["message"]) for r in doc["results"]}
    c = _build_and_run(standalone)
    assert set(c) == set(py)
    assert not _compare(c, py), "\n".join(_compare(c, py))
    # The comparison means something here: cases pass, skip, and run guests.
    statuses = [s for s, _ in py.values()]
    assert statuses.count("PASS") >= 20 and statuses.count("SKIP") >= 20


@needs_kvm_and_cc
def test_standalone_exports_fail_where_conform_fails(tmp_path: Path) -> None:
    """With what the cases require and need ignored on both sides, every step runs on
    this kernel, whatever it lacks: each case must end at the same step either way."""
    from gmemlab.conform import runner
    from gmemlab.export import plan as plan_module

    files = [f for f in collect([str(bundled_cases())])
             if any(c.kernel != "model" for c in f.cases)]
    for f in files:
        f.cases = [dataclasses.replace(c, requires=tuple(r for r in c.requires
                                                         if r.startswith("guest:")))
                   for c in f.cases]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "infer", lambda case: [])
        mp.setattr(plan_module, "infer", lambda case: [])
        report = export_files(files, tmp_path, "standalone")
        factory, unavailable = kernel_factory("host")
        py = {}
        for f in files:
            for case in f.cases:
                r = run_case(case, "host", factory, unavailable)
                py[(f.path, case.id)] = (r.status, r.message)
    c = _build_and_run(report)
    assert not _compare(c, py), "\n".join(_compare(c, py))
    assert sum(s == "FAIL" for s, _ in py.values()) >= 20  # steps the kernel refuses


@needs_kvm_and_cc
def test_standalone_odd_cases_judge_as_conform_does(tmp_path: Path) -> None:
    """Unbound names, malformed calls, foreign fds and memory, a load through PROT_WRITE
    alone, tables with wrong keys, guest exits where bytes were expected, ..."""
    edge = ROOT / "tests" / "data" / "export_edge_cases.toml"
    report = export_paths([str(edge)], tmp_path, "standalone")
    factory, unavailable = kernel_factory("host")
    py = {}
    for f in report.files:
        for case in collect([str(edge)])[0].cases:
            r = run_case(case, "host", factory, unavailable)
            py[(f.source, case.id)] = (r.status, r.message)
    assert not [why for f in report.files for why in f.refusals()]
    c = _build_and_run(report)
    assert not _compare(c, py), "\n".join(_compare(c, py))
    assert sorted(s for s, _ in py.values()).count("FAIL") >= 25


# --- kselftest ---------------------------------------------------------------------------------


@needs_cc
def test_kselftest_exports_compile_against_standins(tmp_path: Path) -> None:
    report = export_paths([str(bundled_cases())], tmp_path / "out", "kselftest",
                          command="gmemlab export-c cases -o out --style kselftest")
    include = tmp_path / "include"
    include.mkdir()
    (include / "gmemlab_constants.h").write_text("".join(
        f"#ifndef {name}\n#define {name} {value:#x}\n#endif\n"
        for name, value in uapi_c.kernel_names().items()))
    written = [f.path for f in report.files if f.path is not None]
    assert len(written) >= 8
    for path in written:
        proc = subprocess.run([str(CC), "-fsyntax-only", "-std=gnu11", "-Wall", "-Werror",
                               "-D_GNU_SOURCE", "-I", str(STANDINS), "-I", str(include), str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name}:\n{proc.stderr[:4000]}"
    mmap = (tmp_path / "out" / "gmem_mmap_test.c").read_text()
    # It reads like guest_memfd_test.c: kvm_util, the harness, the SIGBUS pattern.
    for text in ("#include \"kselftest_harness.h\"", "TEST(fault_beyond_size_sigbus)",
                 "vm_create_guest_memfd(vm, 0x4000ULL, GUEST_MEMFD_FLAG_MMAP | "
                 "GUEST_MEMFD_FLAG_INIT_SHARED)", "EXPECT_SIGNAL(SIGBUS, ",
                 "SKIP(return, \"step 2 (create_guest_memfd) creates a guest_memfd: needs "
                 "cap:GUEST_MEMFD\")", "TEST_HARNESS_MAIN"):
        assert text in mmap
    # Cases the model alone runs are not written as tests; their files not at all.
    assert not (tmp_path / "out" / "pkvm_test.c").exists()
    refused = [r for f in report.files for r in f.refusals()]
    assert any("private guest accesses" in r for r in refused) == (asm.missing_reason() is None)


# --- counterexamples ------------------------------------------------------------------------

COUNTEREXAMPLE = ROOT / "tests" / "data" / "counterexample_gmem.toml"


def test_a_counterexample_exports_what_a_kernel_can_run() -> None:
    case = parse(tomllib.loads(COUNTEREXAMPLE.read_text()), "cex.toml").cases[0]
    prefix = kernel_prefix(case)
    assert prefix.case is not None
    assert [(s.index, s.op) for s in prefix.case.steps] == \
        [(1, "memfd_create"), (2, "ftruncate"), (3, "mmap"), (5, "write_mem")]
    assert prefix.case.steps[2].bind == "vmm_a" and prefix.case.steps[3].ret == 8192
    assert prefix.left_out == ["steps 7..11: from actor reader's read_mem on, the actors "
                               "interleave; no kernel can be made to stop a system call between "
                               "two of its steps"]
    assert "steps 1..6" in prefix.note
    # Only counterexamples are cut down by default; other model cases skip as in conform.
    assert plan_for(case, "cex.toml", "standalone").note == prefix.note
    plain = Case(file="x", id="y", about="", kernel="model", design="seed", requires=(),
                 steps=prefix.case.steps)
    assert plan_for(plain, "x", "standalone").verdict == ("SKIP", "written for the model kernel only")


@needs_kvm_and_cc
def test_a_counterexample_prefix_runs_as_conform_runs_it(tmp_path: Path) -> None:
    """The checker's own counterexample (a P5 violation of the 2022 sketch) and a gmem one."""
    checked = subprocess.run([sys.executable, "-m", "gmemlab", "check", "seed_default", "--design",
                              "seed-as-written", "--case-out", str(tmp_path / "seed.toml")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    shutil.copy(COUNTEREXAMPLE, tmp_path / "cex.toml")
    report = export_paths([str(tmp_path / "seed.toml"), str(tmp_path / "cex.toml")],
                          tmp_path / "out", "standalone")
    # The 2022 sketch's counterexample starts with memfd_restricted: no kernel runs any of it.
    seed = report.files[0].plans[0]
    assert seed.verdict is not None and seed.verdict[0] == "SKIP"
    assert "memfd_restricted on; the 2022 proposal's system call was never merged" in seed.verdict[1]
    factory, unavailable = kernel_factory("host")
    cex = report.files[1].plans[0]
    r = run_case(cex.case, "host", factory, unavailable)
    c = _build_and_run(report)
    assert c[(str(tmp_path / "cex.toml"), "cex")] == (r.status, r.message) == ("PASS", "")
    assert c[(str(tmp_path / "seed.toml"), seed.case.id)] == seed.verdict


# --- the command -----------------------------------------------------------------------------


def test_export_command(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gmemlab", "export-c", *args],
                              capture_output=True, text=True, cwd=ROOT)

    ok = cli("cases/gmem/mmap.toml", "-o", str(tmp_path), "--style", "standalone")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "mmap.c").exists()
    assert ok.stdout.splitlines()[-1] == "14 of 14 cases exported as standalone C (1 file)"
    for bad, message in ((("cases", "-o", str(tmp_path), "--style", "x"), "--style must be one of"),
                         (("nope.toml", "-o", str(tmp_path)), "no such file or folder: nope.toml"),
                         (("cases", "-o", str(tmp_path), "--model-cases", "x"), "--model-cases")):
        proc = cli(*bad)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
