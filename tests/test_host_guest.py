"""guest_access on the running kernel: a real guest, kept invisible to the case."""

from __future__ import annotations

import errno

import pytest

from gmemlab import GuestAccess, UsageError
from gmemlab.host import HostKernel
from gmemlab.model import ModelKernel

from .conftest import needs_gmem, needs_guest

P = 4096
RW = 3
SHARED, PRIVATE_ANON = 0x01, 0x22
pytestmark = [needs_guest]


def _plain_vm(k: HostKernel | ModelKernel, pages: int = 4) -> tuple[int, int, int]:
    vm = k.create_vm(0)
    a = k.mmap(-1, pages * P, RW, PRIVATE_ANON)
    k.write_mem(a, data=bytes(range(256)) * (pages * P // 256))
    k.set_user_memory_region(vm, 0, 0, 0x100000, pages * P, a)
    return vm, a, k.create_vcpu(vm, 0)


def test_loads_and_stores_agree_with_the_model(host: HostKernel) -> None:
    model = ModelKernel(guest_path=host.access_path())
    results = []
    for k in (host, model):
        _, _, cpu = _plain_vm(k)
        out = [k.guest_access(cpu, 0x100ffd, 7, write=True, data=b"ABCDEFG"),
               k.guest_access(cpu, 0x100ff8, 24),
               k.guest_access(cpu, 0x104000 - 3, 8),
               k.guest_access(cpu, 0x102000, 1 << 20)]
        assert out[0] == GuestAccess(exit="none")
        assert bytes.fromhex(out[1].data_hex)[5:12] == b"ABCDEFG"
        # 3 bytes are inside the slot; the next step (4 aligned bytes) is not.
        assert out[2] == GuestAccess(exit="mmio", gpa=0x104000, size=4, write=False)
        assert out[3] == GuestAccess(exit="mmio", gpa=0x104000, size=8, write=False)
        results.append(out)
    assert results[0] == results[1]


def test_a_large_load(host: HostKernel) -> None:
    vm = host.create_vm(0)
    a = host.mmap(-1, 1 << 20, RW, PRIVATE_ANON)
    host.write_mem(a, fill=0x5A, length=1 << 20)
    host.set_user_memory_region(vm, 3, 0, 0x40000000, 1 << 20, a)
    cpu = host.create_vcpu(vm, 0)
    result = host.guest_access(cpu, 0x40000000, 1 << 20)
    assert result.exit == "none" and bytes.fromhex(result.data_hex) == b"\x5a" * (1 << 20)


def test_the_runner_is_invisible(host: HostKernel) -> None:
    vm, a, cpu = _plain_vm(host)
    host.guest_access(cpu, 0x100000, 8)
    # The runner's slot id and guest physical range are free again.
    top = 1 << 48
    host.set_user_memory_region(vm, 32763, 0, top - (4 << 20), P, a)
    assert host.guest_access(cpu, top - (4 << 20) + 16, 2).data_hex == "1011"
    # ... and the runner moves out of the case's way.
    assert host.guest_access(cpu, 0x100004, 4).data_hex == "04050607"
    host.set_user_memory_region(vm, 32763, 0, 0, 0, 0)
    assert host.guest_access(cpu, top - 8, 8) == GuestAccess(exit="mmio", gpa=top - 8, size=8,
                                                              write=False)


def test_vcpu_outlives_vm_fd_and_dups(host: HostKernel) -> None:
    vm, _, cpu = _plain_vm(host)
    host.close(vm)  # the vCPU keeps the VM alive
    assert host.guest_access(cpu, 0x100001, 2).data_hex == "0102"
    other = host.dup(cpu)
    host.close(cpu)
    assert host.guest_access(other, 0x100002, 1).data_hex == "02"
    with pytest.raises(OSError) as err:
        host.guest_access(cpu, 0x100000, 1)
    assert err.value.errno == errno.EBADF


def _not_a_vcpu(k: HostKernel | ModelKernel, kind: str) -> int:
    vm = k.create_vm(0)
    if kind == "vm":
        return vm
    if kind == "kvm":
        return k.open_kvm()
    if kind == "gmem":
        return k.create_guest_memfd(vm, P, 0)
    if kind == "memfd":
        return k.memfd_create("x", 0)
    return 99  # closed


@pytest.mark.parametrize("kind", ["vm", "kvm", pytest.param("gmem", marks=needs_gmem), "memfd",
                                  "closed"])
def test_not_a_vcpu(host: HostKernel, kind: str) -> None:
    model = ModelKernel()
    got = []
    for k in (host, model):
        fd = _not_a_vcpu(k, kind)
        with pytest.raises(OSError) as err:
            k.guest_access(fd, 0, 1)
        got.append(err.value.errno)
    assert got[0] == got[1]


def test_bad_guest_accesses_are_refused(host: HostKernel) -> None:
    _, _, cpu = _plain_vm(host)
    for kwargs in ({"length": 0}, {"length": (1 << 20) + 1}, {"length": 2, "gpa": (1 << 64) - 1},
                   {"length": 2, "write": True, "data": b"x"}, {"length": 1, "data": b"x"},
                   {"length": 1, "private": True}, {"length": 1, "gpa": 1 << 60}):
        args = {"gpa": 0x100000, **kwargs}
        with pytest.raises(UsageError):
            host.guest_access(cpu, **args)
    assert host.guest_access(cpu, 0x100000, 1).exit == "none"  # the vCPU is fine


def test_access_path_is_probed(host: HostKernel) -> None:
    assert host.access_path() in ("mmu", "emulator")
    assert ModelKernel().access_path() == "mmu"
    assert ModelKernel(guest_path="emulator").access_path() == "emulator"
    with pytest.raises(UsageError):
        ModelKernel(guest_path="hardware")


def test_guest_cannot_touch_the_interpreters_memory(host: HostKernel) -> None:
    import ctypes
    buf = ctypes.create_string_buffer(3 * P)
    foreign = (ctypes.addressof(buf) + P - 1) & ~(P - 1)
    vm = host.create_vm(0)
    host.set_user_memory_region(vm, 0, 0, 0x100000, P, foreign)
    cpu = host.create_vcpu(vm, 0)
    with pytest.raises(UsageError, match="did not map"):
        host.guest_access(cpu, 0x100000, 8, write=True, data=b"\xff" * 8)
    assert buf.raw == bytes(3 * P)
