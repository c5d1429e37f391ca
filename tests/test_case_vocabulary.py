"""What cases can say beyond CASES.md's base format: table fields, differs,
align_up, error_offset, design: requirements; who says `private`; the ported
selftests' shape."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gmemlab import UsageError, uapi
from gmemlab.conform import conform
from gmemlab.conform.cases import CaseError, parse, parse_requirement
from gmemlab.conform.needs import infer
from gmemlab.host import probe
from gmemlab.model import ModelKernel
from gmemlab.spelling import resolve

ROOT = Path(__file__).resolve().parents[1]
P = uapi.PAGE_SIZE


def _statuses(tmp_path: Path, text: str, kind: str = "model") -> dict[str, str]:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return {r.case.id: f"{r.status} {r.message}" for r in conform([str(f)], kind).results}


def test_fields_align_up_and_offsets_resolve() -> None:
    from gmemlab.interface import Stat

    st = Stat(size=1, mode=2, blksize=3, blocks=4, nlink=5, ino=77, dev=9)
    env = {"st": st, "r": 0x7F0000123000, "t": {"mode": 2}}
    assert resolve("$st.ino", env) == 77
    assert resolve("$st.ino+3", env) == 80
    assert resolve("$t.mode", env) == 2
    assert resolve("align_up($r, 0x200000)", env) == 0x7F0000200000
    assert resolve("align_up($r+0x1000, 0x1000)", env) == 0x7F0000124000
    assert resolve("align_up($r, 4096)", env) == 0x7F0000123000
    for bad in ("$st.nope", "$r.ino", "align_up($r)", "align_up($r, 0)"):
        with pytest.raises(UsageError):
            resolve(bad, env)


CASES = '''
[[case]]
id = "differs-holds"
steps = [
  {op = "memfd_create", name = "a", flags = 0, as = "a"},
  {op = "fstat", fd = "$a", as = "sa"},
  {op = "memfd_create", name = "b", flags = 0, as = "b"},
  {op = "fstat", fd = "$b", ret = {dev = "$sa.dev"}, differs = {ino = "$sa.ino"}},
  {op = "dup", fd = "$a", as = "c"},
  {op = "dup", fd = "$a", differs = "$c"},
]

[[case]]
id = "differs-fails"
steps = [
  {op = "memfd_create", name = "a", flags = 0, as = "a"},
  {op = "fstat", fd = "$a", as = "sa"},
  {op = "fstat", fd = "$a", differs = {ino = "$sa.ino"}},
]

[[case]]
id = "aligned-fixed-mapping"
steps = [
  {op = "mmap", fd = -1, length = 0x400000, prot = "NONE", flags = "PRIVATE|ANONYMOUS", as = "r"},
  {op = "mmap", fd = -1, length = 0x200000, prot = "READ", flags = "PRIVATE|ANONYMOUS|FIXED",\
 addr = "align_up($r, 0x200000)", ret = "align_up($r, 0x200000)"},
]

[[case]]
id = "error-offset-holds"
kernel = "model"
design = "inplace"
steps = [
  {op = "create_vm", type = "sw_protected", as = "vm"},
  {op = "create_guest_memfd", vm = "$vm", size = 0x4000, flags = "MMAP|INIT_SHARED", as = "f"},
  {op = "mmap", fd = "$f", length = 0x4000, prot = "READ|WRITE", flags = "SHARED", as = "m"},
  {op = "gup_pin", addr = "$m+8192", length = 4096},
  {op = "set_memory_attributes2", fd = "$f", offset = 0, size = 0x4000, attributes = 8,\
 errno = "EAGAIN", error_offset = 8192},
]

[[case]]
id = "error-offset-fails"
kernel = "model"
design = "inplace"
steps = [
  {op = "create_vm", type = "sw_protected", as = "vm"},
  {op = "create_guest_memfd", vm = "$vm", size = 0x4000, flags = "MMAP|INIT_SHARED", as = "f"},
  {op = "mmap", fd = "$f", length = 0x4000, prot = "READ|WRITE", flags = "SHARED", as = "m"},
  {op = "gup_pin", addr = "$m+8192", length = 4096},
  {op = "set_memory_attributes2", fd = "$f", offset = 0, size = 0x4000, attributes = 8,\
 errno = "EAGAIN", error_offset = 4096},
]

[[case]]
id = "error-offset-absent"
steps = [
  {op = "close", fd = 1000, errno = "EBADF", error_offset = 0},
]

[[case]]
id = "design-met"
design = "gmem-6.19"
requires = ["design:gmem-6.19"]
steps = [{op = "create_vm", type = 0}]

[[case]]
id = "design-unmet"
requires = ["design:gmem-6.19"]
steps = [{op = "create_vm", type = 0}]
'''


def test_new_expectations_on_the_model(tmp_path: Path) -> None:
    got = _statuses(tmp_path, CASES)
    assert got["differs-holds"].startswith("PASS"), got["differs-holds"]
    assert got["differs-fails"].startswith("FAIL") and "to differ" in got["differs-fails"]
    assert got["aligned-fixed-mapping"].startswith("PASS"), got["aligned-fixed-mapping"]
    assert got["error-offset-holds"].startswith("PASS"), got["error-offset-holds"]
    assert "expected error_offset 0x1000, got 0x2000" in got["error-offset-fails"]
    assert "reports none" in got["error-offset-absent"]
    assert got["design-met"].startswith("PASS")
    assert got["design-unmet"].startswith("SKIP") and "behaves as gmem-6.18" in got["design-unmet"]


def test_design_requirement_on_the_host_is_the_probes(tmp_path: Path) -> None:
    if not probe.profile().usable:
        pytest.skip(f"no usable /dev/kvm: {probe.profile().kvm_missing}")
    got = _statuses(tmp_path, CASES, "host")
    design = probe.profile().design
    assert got["design-met"].startswith("PASS" if design == "gmem-6.19" else "SKIP")
    assert got["differs-holds"].startswith("PASS"), got["differs-holds"]
    assert got["aligned-fixed-mapping"].startswith("PASS"), got["aligned-fixed-mapping"]


@pytest.mark.parametrize("text, message", [
    ('[[case]]\nid = "x"\nsteps = [{op = "close", fd = 3, error_offset = 1}]', "goes with the errno"),
    ('[[case]]\nid = "x"\nsteps = [{op = "close", fd = 3, errno = "EBADF", differs = 1}]', "not several"),
    ('[[case]]\nid = "x"\nrequires = ["design:gmem-9.9"]\nsteps = [{op = "close", fd = 3}]', "no design"),
])
def test_malformed_new_keys(text: str, message: str) -> None:
    case = parse(tomllib.loads(text)).cases[0]
    assert case.error is not None and message in case.error, case.error


def test_design_requirement_parses() -> None:
    req = parse_requirement("design:inplace")
    assert (req.cmp, req.cap) == ("design", "inplace")
    with pytest.raises(CaseError):
        parse_requirement("design:")


def test_set_memory_attributes2_needs_the_in_place_capability() -> None:
    text = '''
[[case]]
id = "x"
steps = [
  {op = "memfd_create", name = "m", flags = 0, as = "m"},
  {op = "set_memory_attributes2", fd = "$m", offset = 0, size = 4096, attributes = 8, errno = "EINVAL"},
]
[[case]]
id = "y"
steps = [
  {op = "memfd_create", name = "m", flags = 0, as = "m"},
  {op = "set_memory_attributes2", fd = "$m", offset = 0, size = 4096, attributes = 8, errno = "ENOTTY"},
]
'''
    x, y = parse(tomllib.loads(text)).cases
    assert [n.requirement.text for n in infer(x)] == ["cap:GUEST_MEMFD_MEMORY_ATTRIBUTES"]
    assert infer(y) == []


# --- who says `private` ---------------------------------------------------------------------


def _sw_protected(design: str = "gmem-6.18") -> tuple[ModelKernel, int, int]:
    k = ModelKernel(design)
    vm = k.create_vm("sw_protected")
    f = k.create_guest_memfd(vm, 2 * P, 0)
    u = k.mmap(-1, 2 * P, "READ|WRITE", "SHARED|ANONYMOUS")
    k.write_mem(u, fill=0x5A, length=2 * P)
    k.set_user_memory_region2(vm, 0, uapi.KVM_MEM_GUEST_MEMFD, 0x100000, 2 * P, u, f, 0)
    k.set_memory_attributes(vm, 0x101000, P, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
    return k, k.create_vcpu(vm, 0), u


def test_attributes_decide_private_on_sw_protected() -> None:
    k, cpu, _ = _sw_protected()
    assert k.guest_access(cpu, 0x100000, 2).data_hex == "5a5a"  # shared: userspace_addr
    assert k.guest_access(cpu, 0x101000, 2).data_hex == "0000"  # private: guest_memfd
    assert k.guest_access(cpu, 0x101000, 2, private=True).data_hex == "0000"
    assert k.guest_access(cpu, 0x100000, 2, private=False).data_hex == "5a5a"
    for gpa, private in ((0x100000, True), (0x101000, False), (0x100ffe, True)):
        with pytest.raises(UsageError, match="no guest can make"):
            k.guest_access(cpu, gpa, 4, private=private)


def test_snp_guests_choose_and_kvm_exits_on_a_mismatch() -> None:
    k = ModelKernel("inplace")
    vm = k.create_vm("snp")
    f = k.create_guest_memfd(vm, 2 * P, uapi.GUEST_MEMFD_FLAG_MMAP)
    k.set_user_memory_region2(vm, 0, uapi.KVM_MEM_GUEST_MEMFD, 0x100000, 2 * P, 0, f, 0)
    cpu = k.create_vcpu(vm, 0)
    shared_access = k.guest_access(cpu, 0x100010, 1)
    assert (shared_access.exit, shared_access.flags, shared_access.gpa) == ("memory_fault", 0, 0x100000)
    assert k.guest_access(cpu, 0x100010, 1, private=True).exit == "none"
    k.set_memory_attributes2(f, P, P, 0)
    private_access = k.guest_access(cpu, 0x101010, 1, private=True)
    assert (private_access.exit, private_access.flags) == ("memory_fault", 8)


def test_in_place_capability() -> None:
    for design, system, vm0, vm1 in (("gmem-6.18", 0, 0, 0), ("gmem-6.19", 0, 0, 0),
                                     ("inplace", 8, 0, 8), ("pkvm-inplace", 8, 0, 8)):
        k = ModelKernel(design)
        cap = uapi.KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES
        assert k.check_extension(cap) == system, design
        assert k.check_extension(cap, k.create_vm(0)) == vm0, design
        assert k.check_extension(cap, k.create_vm(1)) == vm1, design


def test_probe_matches_designs() -> None:
    base = probe.KernelProfile(release="x", mask=frozenset(), kvm_missing=None,
                               caps={"GUEST_MEMFD": 1, "GUEST_MEMFD_FLAGS": 3})
    from dataclasses import replace

    assert base.design == "gmem-6.18"
    assert replace(base, gmem_fs_magic=uapi.ANON_INODE_FS_MAGIC).design == "gmem-6.18"
    assert replace(base, gmem_fs_magic=uapi.GUEST_MEMFD_MAGIC).design == "gmem-6.19"
    assert replace(base, caps={"GUEST_MEMFD": 1, "GUEST_MEMFD_FLAGS": 0}).design == "gmem-6.8"
    assert replace(base, caps={**base.caps, "GUEST_MEMFD_MEMORY_ATTRIBUTES": 8},
                   gmem_fs_magic=uapi.GUEST_MEMFD_MAGIC).design == "inplace"


# --- the ported selftests ---------------------------------------------------------------------

ABOUT = re.compile(r"^(?:\[[A-K]\d+\])*\S+\.c \w+\(\) at [^:]+: \S")


def test_every_selftest_case_names_file_function_and_version() -> None:
    files = sorted((ROOT / "cases" / "selftests").glob("*.toml"))
    assert files
    for f in files:
        doc = tomllib.loads(f.read_text())
        for case in doc["case"]:
            assert ABOUT.match(case["about"]), f"{f.name}::{case['id']}: {case['about'][:80]}"
            assert case.get("design"), f"{f.name}::{case['id']} names no design"
