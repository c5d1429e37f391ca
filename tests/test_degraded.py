"""Every kernel: what gmemlab does on kernels that lack what the cases need.

Masks (gmemlab.host.probe) hide features of the running kernel, so each
degraded path runs on any machine with /dev/kvm: `kvm` is a machine without
KVM, `guest_memfd` a kernel without guest_memfd, `mmap` one whose guest_memfd
cannot be mapped (6.8 to 6.17).  The `kvm` mask runs everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gmemlab import UsageError, uapi
from gmemlab.conform import bundled_cases
from gmemlab.conform.cases import parse
from gmemlab.conform.needs import infer
from gmemlab.conform.runner import run_case
from gmemlab.host import HostKernel, probe

from .conftest import HOST_MISSING, needs_kvm

MASKS = ["guest_memfd", "mmap", "guest_memfd,mmap"]
P = uapi.PAGE_SIZE


def _cli(*args: str, mask: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(probe.MASK_ENV, None)
    env["COLUMNS"] = "250"
    if mask is not None:
        env[probe.MASK_ENV] = mask
    return subprocess.run([sys.executable, "-m", "gmemlab", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def masked() -> Iterator[None]:
    yield
    probe.set_mask(None)


# --- the probe ---------------------------------------------------------------------------


def test_unknown_mask_is_bad_input() -> None:
    with pytest.raises(UsageError, match="unknown mask frob"):
        probe.parse_mask("guest_memfd,frob")
    proc = _cli("host", "--mask", "frob")
    assert proc.returncode == 2 and proc.stderr.startswith("gmemlab: unknown mask frob")


def test_no_kvm_everywhere(masked: None) -> None:
    probe.set_mask("kvm")
    prof = probe.profile()
    assert not prof.usable and "hidden by the mask" in str(prof.kvm_missing)
    assert prof.line().endswith("[masked: kvm]")
    assert any(what == "/dev/kvm" and "model only" in meaning for what, _, meaning in prof.rows())
    with pytest.raises(OSError) as err:
        HostKernel()
    assert err.value.errno == errno.ENOENT


@needs_kvm
@pytest.mark.parametrize("mask", MASKS)
def test_masked_profile(masked: None, mask: str) -> None:
    probe.set_mask(mask)
    prof = probe.profile()
    assert prof.usable and prof.mask == frozenset(mask.split(","))
    assert prof.gmem_flags == 0  # both masks take the creation flags away
    if "guest_memfd" in mask:
        assert not prof.has_guest_memfd
        assert prof.kind == "KVM without guest_memfd"
    rows = {what: (value, meaning) for what, value, meaning in prof.rows()}
    assert rows["KVM_CAP_GUEST_MEMFD_FLAGS"][0] == "0x0"
    if prof.has_guest_memfd:
        assert prof.design == "gmem-6.8"
        assert "gmem-6.8" in rows["KVM_CAP_GUEST_MEMFD_FLAGS"][1]
    else:
        assert "not applicable" in rows["KVM_CAP_GUEST_MEMFD"][1]


@needs_kvm
def test_masked_host_answers_as_the_poorer_kernel(masked: None) -> None:
    probe.set_mask("guest_memfd")
    with HostKernel() as k:
        assert k.check_extension(uapi.KVM_CAP_GUEST_MEMFD) == 0
        assert k.check_extension(uapi.KVM_CAP_GUEST_MEMFD_FLAGS) == 0
        vm = k.create_vm(0)
        assert k.check_extension(uapi.KVM_CAP_GUEST_MEMFD, vm) == 0
        with pytest.raises(OSError) as err:
            k.create_guest_memfd(vm, P, 0)
        assert err.value.errno == errno.ENOTTY
        with pytest.raises(OSError) as err:  # not a VM fd: what every kernel answers there
            k.create_guest_memfd(k.open_kvm(), P, 0)
        assert err.value.errno == errno.EINVAL
        with pytest.raises(OSError) as err:
            k.set_user_memory_region2(vm, 0, uapi.KVM_MEM_GUEST_MEMFD, 0x100000, P)
        assert err.value.errno == errno.EINVAL
    probe.set_mask("mmap")
    with HostKernel() as k:
        vm = k.create_vm(0)
        assert k.check_extension(uapi.KVM_CAP_GUEST_MEMFD_FLAGS) == 0
        assert k.check_extension(uapi.KVM_CAP_GUEST_MEMFD, vm) == 0  # 6.8: private VMs only
        with pytest.raises(OSError) as err:
            k.create_guest_memfd(vm, P, uapi.GUEST_MEMFD_FLAG_MMAP)
        assert err.value.errno in (errno.EINVAL, errno.ENOTTY)  # ENOTTY: no guest_memfd at all
        with pytest.raises(OSError) as err:
            k.set_user_memory_region2(vm, 0, uapi.KVM_MEM_GUEST_MEMFD, 0x100000, P)
        assert err.value.errno == errno.EINVAL


# --- inference -----------------------------------------------------------------------------


class _PoorKernel:
    """Just enough of a kernel for the runner's requirement checks: no guest_memfd."""

    name = "host"
    EXTRA_OPS: tuple[str, ...] = ()

    def __init__(self, caps: dict[str, int]) -> None:
        self.caps = caps

    def check_extension(self, cap: int, vm: int | None = None) -> int:
        names = {v: k for k, v in uapi.CAPS.items()}
        return self.caps.get(names[cap], 0)

    def unsupported(self, op: str) -> str | None:
        return None

    def access_path(self) -> str:
        return "emulator"

    def shutdown(self) -> None:
        pass

    def __getattr__(self, op: str) -> Any:
        raise AssertionError(f"a case with an unmet need must not run {op}")


CASES = '''
[[case]]
id = "gmem"
steps = [
  {op = "create_vm", type = 0, as = "vm"},
  {op = "create_guest_memfd", vm = "$vm", size = 4096, flags = "MMAP|INIT_SHARED"},
]

[[case]]
id = "gmem-on-dev-kvm"
steps = [
  {op = "open_kvm", as = "kvm"},
  {op = "create_guest_memfd", vm = "$kvm", size = 4096, flags = 0, errno = "EINVAL"},
]

[[case]]
id = "expects-enotty"
steps = [
  {op = "create_vm", type = 0, as = "vm"},
  {op = "set_memory_attributes", vm = "$vm", address = 0, size = 4096, attributes = 0, errno = "ENOTTY"},
]

[[case]]
id = "private-vm"
steps = [{op = "create_vm", type = "sw_protected"}]

[[case]]
id = "explicit-wins"
requires = ["cap:GUEST_MEMFD_FLAGS=0"]
steps = [
  {op = "create_vm", type = 0, as = "vm"},
  {op = "create_guest_memfd", vm = "$vm", size = 4096, flags = "MMAP"},
]
'''


def test_needs_are_inferred_from_steps() -> None:
    cases = {c.id: c for c in parse(__import__("tomllib").loads(CASES)).cases}
    texts = {cid: [n.requirement.text for n in infer(c)] for cid, c in cases.items()}
    assert texts["gmem"] == ["cap:GUEST_MEMFD", "cap:GUEST_MEMFD_FLAGS&0x1",
                             "cap:GUEST_MEMFD_FLAGS&0x2"]
    assert texts["gmem-on-dev-kvm"] == []  # /dev/kvm answers EINVAL on every kernel
    assert texts["expects-enotty"] == []  # the answer of a kernel without attributes
    assert texts["private-vm"] == ["cap:VM_TYPES&0x2"]
    assert texts["explicit-wins"] == ["cap:GUEST_MEMFD"]  # the flags need is the case's own


def test_unmet_needs_skip_with_the_reason() -> None:
    poor = _PoorKernel({"VM_TYPES": 1, "USER_MEMORY2": 1})
    cases = {c.id: c for c in parse(__import__("tomllib").loads(CASES)).cases}
    got = run_case(cases["gmem"], "host", lambda c: poor)  # type: ignore[arg-type,return-value]
    assert got.status == "SKIP"
    assert got.message == ("step 2 (create_guest_memfd) creates a guest_memfd: needs "
                           "cap:GUEST_MEMFD (the kernel reports 0x0)")
    assert got.reason == "needs cap:GUEST_MEMFD"
    got = run_case(cases["private-vm"], "host", lambda c: poor)  # type: ignore[arg-type,return-value]
    assert got.status == "SKIP" and got.reason == "needs cap:VM_TYPES&0x2"
    # The model runs a case on the design it names: nothing is inferred there.
    from gmemlab.model import ModelKernel
    assert run_case(cases["gmem"], "model", lambda c: ModelKernel()).status == "PASS"


# --- the commands under each mask ------------------------------------------------------------


def test_run_without_kvm() -> None:
    proc = _cli("run", mask="kvm")
    text = _flat(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no usable /dev/kvm (hidden by the mask 'kvm')" in text
    assert "verdict: ok: host not run" in text and "Traceback" not in proc.stderr
    proc = _cli("conform", str(bundled_cases()), "--kernel", "host", mask="kvm")
    assert proc.returncode == 0 and "0 failed" in proc.stdout.splitlines()[-1]
    proc = _cli("fuzz", "--examples", "5", mask="kvm")
    assert proc.returncode == 2 and "fuzz needs the host kernel" in proc.stderr
    proc = _cli("host", mask="kvm")
    assert proc.returncode == 0 and "every case runs on the model only" in _flat(proc.stdout)


@needs_kvm
@pytest.mark.parametrize("mask", MASKS)
def test_commands_under_a_mask(tmp_path: Path, mask: str) -> None:
    out = tmp_path / "run.json"
    proc = _cli("run", "--mask", mask, "--json", str(out))
    text = _flat(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"[masked: {', '.join(sorted(mask.split(',')))}]" in text
    assert "verdict: ok" in text and " 0 disagree" in text
    doc = json.loads(out.read_text())
    assert doc["counts"]["disagree"] == 0 and doc["counts"]["model-fail"] == 0
    assert doc["counts"]["agree"] > 10 and doc["counts"]["n/a"] > 100
    # A missing feature is "not applicable", never a disagreement, and says why.
    reasons = doc["not_applicable"]
    assert any(r.startswith("needs cap:GUEST_MEMFD") or r.startswith("requires cap:GUEST_MEMFD")
               for r in reasons), reasons
    proc = _cli("conform", str(bundled_cases()), "--kernel", "host", mask=mask)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1].split(", ")[1] == "0 failed"
    proc = _cli("fuzz", "--examples", "30", "--seed", "2", mask=mask)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no divergence" in proc.stdout and "left out: create_guest_memfd" in proc.stdout
    proc = _cli("host", "--mask", mask)
    assert proc.returncode == 0 and re.search(r"KVM_CAP_GUEST_MEMFD_FLAGS\s*│\s*0x0\s", proc.stdout)


@pytest.mark.skipif(HOST_MISSING is None, reason="this machine has /dev/kvm: the mask tests cover it")
def test_commands_on_a_machine_without_kvm() -> None:
    proc = _cli("run")
    assert proc.returncode == 0 and "host not run" in _flat(proc.stdout)
