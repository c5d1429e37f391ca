"""The conformance runner: verdicts, lines, summary, JSON, and bad case files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gmemlab.conform import bundled_cases, conform
from gmemlab.conform.cases import parse

from .conftest import GMEM_MISSING, needs_kvm

CASE = '''
[[case]]
id = "ok"
steps = [
  {op = "create_vm", type = 0, as = "vm"},
  {op = "create_guest_memfd", vm = "$vm", size = 16384, flags = 0, as = "f"},
  {op = "mmap", fd = "$f", length = 16384, prot = "READ|WRITE", flags = "SHARED", errno = "ENODEV"},
]

[[case]]
id = "wrong-expectation"
steps = [
  {op = "create_vm", type = 0, as = "vm"},
  {op = "create_guest_memfd", vm = "$vm", size = 16384, flags = 0, errno = "EINVAL"},
]

[[case]]
id = "unmet"
requires = ["cap:GUEST_MEMFD_FLAGS&4"]
steps = [{op = "create_vm", type = 0}]

[[case]]
id = "unknown-op"
steps = [{op = "frobnicate", x = 1}]

[[case]]
id = "model-only"
kernel = "model"
steps = [{op = "create_vm", type = 0}]

[[case]]
id = "unbound"
steps = [{op = "close", fd = "$nothing"}]

[[case]]
id = "bad-arg"
steps = [{op = "create_vm", type = "frob"}]
'''


def _run(tmp_path: Path, kind: str = "model", text: str = CASE) -> dict[str, str]:
    f = tmp_path / "c.toml"
    f.write_text(text)
    summary = conform([str(f)], kind)
    return {r.case.id: f"{r.status} {r.message}" for r in summary.results}


def test_verdicts(tmp_path: Path) -> None:
    got = _run(tmp_path)
    assert got["ok"].startswith("PASS")
    assert got["wrong-expectation"].startswith(
        "FAIL step 2 (create_guest_memfd): expected errno EINVAL, got success")
    assert got["unmet"].startswith("SKIP requires cap:GUEST_MEMFD_FLAGS&4 (the kernel reports 0x3)")
    assert got["unknown-op"].startswith("FAIL bad case: step 1 (frobnicate): unknown operation "
                                        "'frobnicate'")
    assert got["model-only"].startswith("PASS")
    assert "$nothing is not bound" in got["unbound"]
    assert got["bad-arg"].startswith("FAIL") and "unknown name 'frob'" in got["bad-arg"]


@needs_kvm
def test_verdicts_on_host(tmp_path: Path) -> None:
    got = _run(tmp_path, "host")
    assert got["model-only"].startswith("SKIP written for the model kernel only")
    if GMEM_MISSING is None:
        assert got["ok"].startswith("PASS")
        assert got["wrong-expectation"].startswith("FAIL")
    else:  # what the case needs is inferred from its steps: SKIP, never FAIL
        for case in ("ok", "wrong-expectation"):
            assert got[case].startswith(
                "SKIP step 2 (create_guest_memfd) creates a guest_memfd: needs cap:GUEST_MEMFD "
                "(the kernel reports 0x0)"), got[case]


@pytest.mark.parametrize("text, message", [
    ("[[case]]\nid = 1\nsteps = []", "non-empty string id"),
    ("[[case]]\nid = \"x\"\nsteps = []", "steps must be a non-empty array"),
    ("[[case]]\nid = \"x\"\nkernel = \"vm\"\nsteps = [{op=\"create_vm\"}]", "kernel must be one of"),
    ("[[case]]\nid = \"x\"\nsteps = [{op=\"close\", fd=1, errno=\"ENOPE\"}]", "unknown errno name"),
    ("[[case]]\nid = \"x\"\nsteps = [{op=\"close\", fd=1, errno=\"EBADF\", ret=0}]", "not several"),
    ("[[case]]\nid = \"x\"\nrequires = [\"kvm\"]\nsteps = [{op=\"close\", fd=1}]", "unknown requirement"),
    ("[[case]]\nid = \"x\"\nstep = []", "unknown keys"),
    ("[other]\nx = 1", "unknown top-level keys"),
])
def test_malformed_cases_are_reported(text: str, message: str) -> None:
    parsed = parse(__import__("tomllib").loads(text))
    errors = [parsed.error] + [c.error for c in parsed.cases]
    assert any(e and message in e for e in errors), errors


def test_duplicate_ids_fail_the_file() -> None:
    parsed = parse(__import__("tomllib").loads(
        '[[case]]\nid="a"\nsteps=[{op="create_vm"}]\n[[case]]\nid="a"\nsteps=[{op="create_vm"}]'))
    assert parsed.error == "duplicate case id 'a': ids name cases, so each is used once"
    assert parsed.cases == []


@pytest.mark.parametrize("step, message", [
    ('{op = "create_guest_memfd", vm = 3, length = 4096}',
     "step 1 (create_guest_memfd): unknown argument 'length' (did you mean 'size'?)"),
    ('{op = "creat_vm"}', "unknown operation 'creat_vm' (did you mean 'create_vm'?)"),
    ('{op = "create_guest_memfd", vm = 3}', "missing argument 'size'"),
    ('{op = "mmap", fd = 3, length = 4096, prot = "READ|WRTE", flags = "SHARED"}',
     "unknown name 'WRTE'"),
])
def test_bad_names_are_reported_at_load_with_a_suggestion(step: str, message: str) -> None:
    parsed = parse(__import__("tomllib").loads(f'[[case]]\nid="x"\nsteps=[{step}]'))
    assert message in str(parsed.cases[0].error)


def test_every_bundled_case_passes_on_the_model() -> None:
    summary = conform([str(bundled_cases())], "model")
    failures = [r.line() for r in summary.results if r.status == "FAIL"]
    assert not failures, "\n".join(failures)
    assert summary.passed > 100


@needs_kvm
def test_every_bundled_any_case_passes_on_the_host() -> None:
    summary = conform([str(bundled_cases())], "host")
    failures = [r.line() for r in summary.results if r.status == "FAIL"]
    assert not failures, "\n".join(failures)
    # Whatever the kernel lacks, a skip names what the case needs.
    reasons = ("written for the model kernel only", "requires ", "needs cap:")
    unexplained = [r.line() for r in summary.results
                   if r.status == "SKIP" and not r.reason.startswith(reasons)]
    assert not unexplained, "\n".join(unexplained)
    assert summary.passed > (80 if GMEM_MISSING is None else 30)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gmemlab", *args], capture_output=True, text=True,
                          timeout=600)


def test_cli_lines_summary_exit_and_json(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(CASE)
    out = tmp_path / "r.json"
    proc = _cli("conform", str(f), "--kernel", "model", "--json", str(out))
    lines = proc.stdout.splitlines()
    assert proc.returncode == 2  # two cases are malformed: bad input
    assert "2 malformed" in proc.stderr
    assert lines[0] == f"PASS {f}::ok"
    assert lines[-1] == "2 passed, 4 failed, 1 skipped"
    doc = json.loads(out.read_text())
    assert doc["summary"] == {"passed": 2, "failed": 4, "skipped": 1}
    assert {r["id"] for r in doc["results"]} == {"ok", "wrong-expectation", "unmet", "unknown-op",
                                                 "model-only", "unbound", "bad-arg"}


def test_cli_usage_errors(tmp_path: Path) -> None:
    proc = _cli("conform", str(tmp_path), "--kernel", "vm")
    assert proc.returncode == 2 and "--kernel must be model or host" in proc.stderr
    proc = _cli("conform", str(tmp_path), "--design", "nope")
    assert proc.returncode == 2 and "unknown design 'nope'" in proc.stderr
    proc = _cli("conform", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    # No case at all is bad input, not "0 passed".
    (tmp_path / "empty.toml").write_text("")
    for path in (tmp_path, tmp_path / "empty.toml", tmp_path / "nothing*.toml"):
        proc = _cli("conform", str(path))
        assert proc.returncode == 2, (path, proc.stdout, proc.stderr)
        assert "0 passed" not in proc.stdout and proc.stderr.startswith("gmemlab: no ")


def test_cli_design_override() -> None:
    """--design runs every case on that design: the 6.18 mmap cases fail on 6.8."""
    proc = _cli("conform", str(bundled_cases() / "gmem" / "mmap.toml"), "--design", "gmem-6.8")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "mmap-needs-flag" in proc.stdout


def test_cli_run_main_job() -> None:
    proc = _cli("run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())
    assert "verdict: ok" in text
    assert "model and kernel agree" in text or "host not run" in text
    # The checker's verdicts on the default scenario.
    assert "checker: seed holds; seed-as-written violates P1, P2, P3, P4, P5, P8" in \
        " ".join(proc.stdout.split())
