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
    this kernel, whatever it lacks: each case must end at the same step either way.
    (All the bundled cases in one program, to build it once.)"""
    from gmemlab.conform import runner
    from gmemlab.conform.cases import CaseFile
    from gmemlab.export import plan as plan_module

    merged = str(tmp_path / "all.toml")
    cases = [dataclasses.replace(c, file=merged, id=f"{Path(f.path).stem}::{c.id}",
                                 requires=tuple(r for r in c.requires if r.startswith("guest:")))
             for f in collect([str(bundled_cases())]) for c in f.cases if c.kernel != "model"]
    files = [CaseFile(path=merged, cases=cases)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "infer", lambda case: [])
        mp.setattr(plan_module, "infer", lambda case: [])
        report = export_files(files, tmp_path, "standalone")
        factory, unavailable = kernel_factory("host")
        py = {}
        for case in cases:
            r = run_case(case, "host", factory, unavailable)
            py[(merged, case.id)] = (r.status, r.message)
    assert not [why for f in report.files for why in f.refusals()]
    c = _build_and_run(report)
    assert not _compare(c, py), "\n".join(_compare(c, py))
    statuses = [s for s, _ in py.values()]
    assert statuses.count("FAIL") >= 100 and statuses.count("PASS") >= 40  # steps the kernel refuses
    # The NUMA policy calls ran, and guest accesses.
    reached = set()
    for case in cases:
        status, message = py[(merged, case.id)]
        last = int(message.split()[1]) if status == "FAIL" and message.startswith("step ") else 0
        reached |= {s.op for s in case.steps if status == "PASS" or s.index <= last}
    assert {"mbind", "get_mempolicy", "set_mempolicy", "guest_access"} <= reached


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


# --- who says private: the C runtime's rule against the Python host's ------------------------

PRIVATE_RULE_MAIN = ROOT / "tests" / "data" / "private_rule_main.c"


def _private_rule_scenarios(seed: int, count: int) -> tuple[str, list[str]]:
    """Random VMs, attributes, guest_memfds and memslots, and accesses to ask about:
    the C program's input, and what the Python host says of each access."""
    import random
    from types import SimpleNamespace

    from gmemlab import uapi
    from gmemlab.errors import UsageError
    from gmemlab.guestaccess import check_call, check_private
    from gmemlab.host.kernel import GFNS, HostKernel, _GmemInfo, _Slot, _VmInfo
    from gmemlab.rangemap import RangeMap

    rng = random.Random(seed)
    private = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
    lines, want = [], []
    for _ in range(count):
        vm_type, inplace = rng.choice([0, 1, 1, 1, 1, 4, 5]), rng.random() < 0.6
        vm = _VmInfo(vm_type)
        gmems: list[_GmemInfo] = []
        lines.append(f"vm {vm_type} {int(inplace)}")
        for _ in range(rng.randrange(12)):
            kind = rng.choice(["attr", "gmem", "gattr", "gattr", "slot", "slot"])
            lo = rng.randrange(16)
            hi = lo + rng.randrange(1, 8)
            value = rng.choice([0, private, private | 1, 1])
            if kind == "attr":
                vm.attributes.set(lo, hi, value)
                lines.append(f"attr {lo} {hi} {value}")
            elif kind == "gmem":
                shared = rng.random() < 0.5
                gmems.append(_GmemInfo(RangeMap(0 if shared else private, GFNS) if inplace else None))
                lines.append(f"gmem {int(shared)}")
            elif kind == "gattr" and gmems:
                g = rng.randrange(len(gmems))
                attributes = gmems[g].attributes
                if attributes is not None:
                    attributes.set(lo, hi, value)
                lines.append(f"gattr {g} {lo} {hi} {value}")
            elif kind == "slot":
                key, g = rng.randrange(4), rng.randrange(-1, len(gmems)) if gmems else -1
                size = rng.choice([0, 0, 4, 8]) << 12
                gpa, offset = rng.randrange(12) << 12, rng.randrange(4) << 12
                if size:
                    vm.slots[key] = _Slot(gpa, size, 0, gmems[g] if g >= 0 else None, offset)
                else:
                    vm.slots.pop(key, None)
                lines.append(f"slot {key} {gpa} {size} {g + 1} {offset}")
        host = SimpleNamespace(_inplace=lambda inplace=inplace: inplace)
        for _ in range(6):
            gpa, length = rng.randrange(16 << 12), rng.randrange(1, 3 << 12)
            asked = rng.choice([None, False, True])
            lines.append(f"check {gpa} {length} {0 if asked is None else int(asked) + 1}")
            try:
                check_call(vm_type != 0, vm_type, gpa, length, False, asked, b"")
                check_private(vm_type, asked, gpa, length,
                              lambda gfn, vm=vm, host=host: HostKernel._kvm_private(host, vm, gfn))
                want.append("ok")
            except UsageError as exc:
                want.append(str(exc))
    return "\n".join(lines) + "\n", want


@needs_cc
def test_private_access_rule_in_c_is_the_hosts(tmp_path: Path) -> None:
    """Which gfns KVM holds private (VM attributes, or a guest_memfd's own under in-place
    conversion, through memslots changed and deleted) and what `private` may say of an
    access, per VM type: this machine has only VM type 0, so the rule is compared here."""
    from gmemlab.export import standalone

    source = "\n".join(["#define _GNU_SOURCE", *[f"#include <{h}>" for h in standalone.INCLUDES],
                        uapi_c.constants_block(), standalone.runtime("standalone.c"),
                        PRIVATE_RULE_MAIN.read_text()])
    (tmp_path / "rule.c").write_text(source)
    built = subprocess.run([str(CC), "-O1", "-Wall", "-Werror", "-o", str(tmp_path / "rule"),
                            str(tmp_path / "rule.c")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[:4000]
    scenarios, want = _private_rule_scenarios(seed=7, count=400)
    ran = subprocess.run([str(tmp_path / "rule")], input=scenarios, capture_output=True, text=True,
                         timeout=60)
    got = ran.stdout.splitlines()
    assert len(got) == len(want)
    diffs = [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not diffs, diffs[:5]
    # Every rule was asked: accesses allowed, refused on type 0, refused by the attributes.
    assert want.count("ok") > 100
    assert any("has no private memory" in w for w in want)
    assert any("is private, and on a VM of type 1" in w for w in want)
    assert any("is shared, and on a VM of type 1" in w for w in want)


# --- kselftest ---------------------------------------------------------------------------------


def _standin_constants(include: Path) -> None:
    include.mkdir(exist_ok=True)
    (include / "gmemlab_constants.h").write_text("".join(
        f"#ifndef {name}\n#define {name} {value:#x}\n#endif\n"
        for name, value in uapi_c.kernel_names().items()))


def _syntax_check(paths: list[Path], include: Path) -> None:
    for path in paths:
        proc = subprocess.run([str(CC), "-fsyntax-only", "-std=gnu11", "-Wall", "-Werror",
                               "-D_GNU_SOURCE", "-I", str(STANDINS), "-I", str(include), str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name}:\n{proc.stderr[:4000]}"


@needs_cc
def test_kselftest_exports_compile_against_standins(tmp_path: Path) -> None:
    edge = ROOT / "tests" / "data" / "export_edge_cases.toml"
    report = export_paths([str(bundled_cases()), str(edge)], tmp_path / "out", "kselftest",
                          command="gmemlab export-c cases -o out --style kselftest")
    _standin_constants(tmp_path / "include")
    written = [f.path for f in report.files if f.path is not None]
    assert len(written) >= 20
    _syntax_check(written, tmp_path / "include")
    out = tmp_path / "out"
    mmap = (out / "gmem_mmap_test.c").read_text()
    # It reads like guest_memfd_test.c: kvm_util, the harness, the SIGBUS pattern.
    for text in ("#include \"kselftest_harness.h\"", "TEST(fault_beyond_size_sigbus)",
                 "vm_create_guest_memfd(vm, 0x4000ULL, GUEST_MEMFD_FLAG_MMAP | "
                 "GUEST_MEMFD_FLAG_INIT_SHARED)", "EXPECT_SIGNAL(SIGBUS, ",
                 "SKIP(return, \"step 2 (create_guest_memfd) creates a guest_memfd: needs "
                 "cap:GUEST_MEMFD\")", "TEST_HARNESS_MAIN"):
        assert text in mmap
    # The NUMA policy as the kernel's tests call it (numaif.h), the generation of
    # guest_memfd asked at run time, fields of earlier results, differs.
    mempolicy = (out / "gmem_mempolicy_test.c").read_text()
    for text in ('#include "numaif.h"', "kvm_mbind(a, 0x2000ULL, MPOL_BIND, nodes, 64ULL, 0);",
                 "kvm_get_mempolicy(&mode, got_nodes, 64ULL, a + 0x1000, MPOL_F_ADDR);",
                 "TEST_ASSERT_EQ(mode, MPOL_BIND);", "TEST_ASSERT_EQ(got_nodes[0], 1);",
                 "ret = mbind(a, 0x1000ULL, 999, nodes, 64ULL, 0);",
                 "design = gmem_design();", "if (strcmp(design, \"gmem-6.19\"))",
                 "TEST_ASSERT(sf.st_dev != svm.st_dev, ", "TEST_ASSERT_EQ(st.st_dev, sf.st_dev);",
                 "why = numa_unavailable();"):
        assert text in mempolicy, text
    # In-place conversion through the series' kvm_util helpers, skipped on kernels without it.
    conversions = (out / "selftests_guest_memfd_conversions_test_inplace_v8_test.c").read_text()
    assert "gmem_set_private(f, 0, 0x1000ULL);" in conversions
    assert "kvm_check_cap(KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES)" in conversions
    # A one-word case id is not a C library function's name.
    assert "TEST(truncate_test)" in conversions
    # Private accesses on a VM whose attributes decide are the same access, exported.
    guest = (out / "gmem_guest_test.c").read_text()
    assert "guest_access(cpu, " in guest
    # Cases the model alone runs are not written as tests; their files not at all.
    assert not (out / "pkvm_test.c").exists()
    refused = {(f.source, r) for f in report.files for r in f.refusals()}
    assert {r for f, r in refused if f != str(edge)} == {
        "restricted-syscall-missing-elsewhere: step 1 (memfd_restricted): memfd_restricted was "
        "never merged into Linux: no kernel has a system call number for it"}
    # What a selftest does not write of the odd cases, and why.
    assert sorted(r.partition(":")[0] for f, r in refused if f == str(edge)) == [
        "guest-field-not-a-number", "guest-fields-as-values", "guest-on-memfd", "huge-delta",
        "mempolicy-fields-as-values", "model-only-op", "private-access"]
    assert (str(edge), "guest-fields-as-values: step 3 (guest_access): a later step reads this "
            "guest access's result") in refused


def _refusals(doc: dict[str, object], style: str, tmp_path: Path) -> list[str]:
    report = export_files([parse(doc, "x.toml")], tmp_path / style, style)
    return [r for f in report.files for r in f.refusals()]


def test_what_cannot_be_exported_is_refused_at_its_step(tmp_path: Path) -> None:
    vcpu = [{"op": "create_vm", "type": "snp", "as": "vm"},
            {"op": "create_vcpu", "vm": "$vm", "id": 0, "as": "cpu"}]
    doc = {"case": [
        {"id": "snp-private", "steps": [
            *vcpu, {"op": "guest_access", "vcpu": "$cpu", "gpa": 0x1000, "length": 1,
                    "private": True}]},
        {"id": "data-hex-of-a-guest", "steps": [
            *vcpu, {"op": "guest_access", "vcpu": "$cpu", "gpa": 0x1000, "length": 1, "as": "ga"},
            {"op": "memfd_create", "name": "t", "flags": 0, "as": "m"},
            {"op": "pread", "fd": "$m", "length": 1, "offset": 0, "differs": "$ga.data_hex"}]},
        {"id": "exit-as-a-name", "steps": [
            *vcpu, {"op": "guest_access", "vcpu": "$cpu", "gpa": 0x1000, "length": 1, "as": "ga"},
            {"op": "memfd_create", "name": "$ga.exit", "flags": 0}]},
    ]}
    standalone = _refusals(doc, "standalone", tmp_path)
    assert standalone == [
        "data-hex-of-a-guest: step 5 (pread): differs compares the bytes read with "
        "$ga.data_hex, a hex string known only when the guest access has run",
        "exit-as-a-name: step 4 (memfd_create): argument name is field 'exit' of a bound guest "
        "result, which the export does not pass on"]
    kselftest = _refusals(doc, "kselftest", tmp_path)
    assert kselftest[0] == ("snp-private: step 3 (guest_access): a private access of an SNP or "
                            "TDX guest: gmemlab's access program sets no C-bit or shared bit")
    assert len(kselftest) == 3


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



def test_a_collapsed_actor_keeps_every_expectation() -> None:
    doc = {"case": [{"id": "c", "kernel": "model", "design": "gmem-6.19", "steps": [
        {"op": "memfd_create", "name": "t", "flags": 0, "as": "m"},
        {"op": "fstat", "fd": "$m", "as": "st"},
        {"op": "actor_begin", "actor": "a", "call": "fstat", "args": {"fd": "$m"}},
        {"op": "actor_step", "actor": "a", "ret": {"size": 0}, "differs": {"ino": 0}},
        {"op": "actor_begin", "actor": "b", "call": "set_memory_attributes2",
         "args": {"fd": "$m", "offset": 0, "size": 4096, "attributes": "PRIVATE"}},
        {"op": "actor_step", "actor": "b", "errno": "EAGAIN", "error_offset": 0},
        {"op": "observe"}]}]}
    prefix = kernel_prefix(parse(doc, "c.toml").cases[0])
    assert prefix.case is not None
    fstat, convert = prefix.case.steps[2:]
    assert (fstat.op, fstat.ret, fstat.differs, fstat.has_differs) == \
        ("fstat", {"size": 0}, {"ino": 0}, True)
    assert (convert.op, convert.error_offset) == ("set_memory_attributes2", 0)
    assert "models a proposal" not in prefix.note  # 6.19 is a kernel


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
