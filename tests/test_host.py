"""The host kernel: the real system calls, and never harm to the interpreter."""

from __future__ import annotations

import contextlib
import os

import pytest

from gmemlab import MemorySignal, UsageError
from gmemlab.host import HostKernel

from .conftest import MMAP_MISSING, guest_memory, needs_gmem_mmap, needs_kvm

P = 4096


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps() -> int:
    with open("/proc/self/maps") as fh:
        return sum(1 for _ in fh)


@needs_kvm
def test_shutdown_releases_everything() -> None:
    fds, maps = _open_fds(), _maps()
    for _ in range(20):
        with HostKernel() as k:
            vm = k.create_vm(0)
            f = guest_memory(k, vm, 16 * P)
            k.mmap(f, 16 * P, 3, 1)
            k.mmap(k.dup(f), 4 * P, 1, 1, offset=4 * P)
            k.create_vcpu(vm, 0)
    assert _open_fds() == fds
    assert _maps() == maps


@needs_kvm
def test_garbage_collection_releases() -> None:
    fds = _open_fds()
    k = HostKernel()
    vm = k.create_vm(0)
    guest_memory(k, vm, P)
    del k
    assert _open_fds() == fds


@needs_kvm
def test_foreign_memory_and_fds_are_off_limits(host: HostKernel) -> None:
    buf = bytearray(P * 4)
    import ctypes
    addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    with pytest.raises(UsageError, match="did not map"):
        host.write_mem(addr, data=b"x")
    with pytest.raises(UsageError, match="did not map"):
        host.munmap(addr & ~(P - 1), P)
    with pytest.raises(OSError) as err:
        host.close(1)  # stdout is not the case's to close
    assert err.value.errno == 9
    os.fstat(1)


@needs_kvm
def test_signals_are_classified(host: HostKernel) -> None:
    vm = host.create_vm(0)
    f = guest_memory(host, vm, P)
    a = host.mmap(f, 2 * P, 3, 1)
    with pytest.raises(MemorySignal) as sig:
        host.read_mem(a + P, 1)
    assert sig.value.signal_name == "SIGBUS"
    host.mprotect(a, P, 1)
    with pytest.raises(MemorySignal) as sig:
        host.write_mem(a, data=b"\x01")
    assert sig.value.signal_name == "SIGSEGV"
    host.munmap(a, 2 * P)
    with pytest.raises(MemorySignal) as sig:
        host.read_mem(a, 1)
    assert sig.value.signal_name == "SIGSEGV"


@needs_kvm
def test_bulk_fill_and_read(host: HostKernel) -> None:
    vm = host.create_vm(0)
    f = guest_memory(host, vm, 64 << 20)
    a = host.mmap(f, 64 << 20, 3, 1)
    host.write_mem(a, fill=0x5A, length=(64 << 20) - 3)
    data = host.read_mem(a, 64 << 20)
    assert data[:-3] == b"\x5a" * ((64 << 20) - 3) and data[-3:] == b"\0\0\0"


@needs_kvm
def test_vm_ioctl_from_forked_child_is_eio(host: HostKernel) -> None:
    """[A11] a VM ioctl from another mm (a forked child) is EIO."""
    from gmemlab import libc, uapi
    vm = host.create_vm(0)
    pid = os.fork()
    if pid == 0:
        try:
            libc.ioctl_buf(vm, uapi.KVM_CREATE_GUEST_MEMFD,
                           bytearray(uapi.KVM_CREATE_GUEST_MEMFD_STRUCT.pack(P, 0, *[0] * 6)))
            os._exit(0)
        except OSError as exc:
            os._exit(exc.errno or 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 5  # EIO


@needs_kvm
def test_bad_struct_pointer_is_efault(host: HostKernel) -> None:
    """[B21] a struct pointer the kernel cannot read is EFAULT (copy_from_user)."""
    from gmemlab import libc, uapi
    vm = host.create_vm(0)
    with pytest.raises(OSError) as err:
        libc.ioctl_int(vm, uapi.KVM_SET_USER_MEMORY_REGION, 0x10)
    assert err.value.errno == 14


@needs_gmem_mmap
def test_bad_guest_memfd_struct_pointer_is_efault(host: HostKernel) -> None:
    """[B21] KVM_CREATE_GUEST_MEMFD copies its struct in first: EFAULT."""
    from gmemlab import libc, uapi
    vm = host.create_vm(0)
    with pytest.raises(OSError) as err:
        libc.ioctl_int(vm, uapi.KVM_CREATE_GUEST_MEMFD, 0x10)
    assert err.value.errno == 14


@needs_kvm
def test_thousands_of_operations_leak_nothing() -> None:
    """Every fd, mapping, VM, vCPU and kvm_run page goes back, whether the kernel
    object is shut down, used as a context manager or garbage-collected."""
    import gc

    from gmemlab.vmm import asm

    guests = asm.missing_reason() is None
    if guests:
        with HostKernel() as warm:  # the runner's program and the path probe are per process
            warm.access_path()
    gc.collect()
    fds, maps = _open_fds(), _maps()
    ops = 0
    for round_ in range(30):
        k = HostKernel()
        vm = k.create_vm(0)
        f = guest_memory(k, vm, 64 * P)
        m = k.memfd_create("leak", 0)
        k.ftruncate(m, 16 * P)
        ops += 5
        for i in range(16):
            a = k.mmap(f, 4 * P, 3, 1, offset=(i % 8) * P)
            k.write_mem(a, fill=i, length=4 * P)
            k.mprotect(a + P, P, 1)
            k.read_mem(a, 16)
            d = k.dup(f)
            k.close(d)
            k.munmap(a, 4 * P)
            ops += 7
        u = k.mmap(m, 16 * P, 3, 1)
        k.set_user_memory_region(vm, 1, 0, 0x100000, 16 * P, u)
        if MMAP_MISSING is None:
            k.set_user_memory_region2(vm, 2, 4, 0x200000, 16 * P, 0, f, 0)
        else:  # the same memory bound the way a kernel without guest_memfd allows
            k.set_user_memory_region2(vm, 2, 0, 0x200000, 16 * P, k.mmap(f, 16 * P, 3, 1))
        cpu = k.create_vcpu(vm, 0)
        ops += 4
        if guests:
            for i in range(4):
                k.guest_access(cpu, 0x100000 + i * P, 8, write=True, data=bytes(8))
                k.guest_access(cpu, 0x200000 + i * 8, 8)
                ops += 2
            other = k.dup(cpu)
            k.close(cpu)
            k.guest_access(other, 0x100000, 1)
            ops += 3
        k.set_user_memory_region(vm, 1, 0, 0x100000, 0, 0)
        k.fallocate(f, 3, 0, 64 * P)
        ops += 2
        if round_ % 3 == 0:
            k.shutdown()
        elif round_ % 3 == 1:
            with k:
                k.close(vm)
                ops += 1
        else:
            del k
            gc.collect()
    assert ops >= 3000
    assert _open_fds() == fds
    assert _maps() == maps


@needs_kvm
def test_bad_input_never_crashes(host: HostKernel) -> None:
    """Invalid addresses, overflowing lengths and closed fds are errors, never a crash."""
    vm = host.create_vm(0)
    f = guest_memory(host, vm, 4 * P)
    a = host.mmap(f, 4 * P, 3, 1)
    calls = [
        lambda: host.read_mem(0, 8), lambda: host.write_mem(8, data=b"x"),
        lambda: host.read_mem(a, 1 << 30), lambda: host.write_mem((1 << 64) - 8, data=b"0" * 16),
        lambda: host.read_mem((1 << 47) - 4, 8), lambda: host.read_mem(a + 4 * P - 4, 8),
        lambda: host.munmap(a, (1 << 64) - P), lambda: host.mprotect(a, 1 << 63, 1),
        lambda: host.mmap(f, (1 << 64) - P, 3, 1), lambda: host.mmap(f, P, 3, 1, offset=-P),
        lambda: host.mremap(a, P, (1 << 64) - P, 1), lambda: host.madvise(0, 1 << 62, 4),
        lambda: host.fallocate(f, 3, (1 << 63) - 1, 1 << 62), lambda: host.close(12345),
        lambda: host.pread(f, 1 << 30, 0), lambda: host.fstat(-1), lambda: host.dup(1 << 30),
        lambda: host.set_user_memory_region(vm, 0, 0, 0, (1 << 64) - P, a),
        lambda: host.set_user_memory_region2(vm, 1, 4, 0, P, 0, 99, 0),
        lambda: host.create_guest_memfd(vm, 1 << 63, 0), lambda: host.ftruncate(f, -1),
    ]
    for call in calls:
        with contextlib.suppress(OSError, MemorySignal, UsageError):
            call()
    assert host.read_mem(a, 4) == b"\0" * 4


@needs_kvm
def test_fast_copies_never_fault(host: HostKernel) -> None:
    """Bulk copies use memmove on populated pages; every operation that could
    make a page fault sends the next copy back through the safe path."""
    m = host.memfd_create("fast", 0)
    host.ftruncate(m, 8 * P)
    a = host.mmap(m, 8 * P, 3, 1)
    host.write_mem(a, fill=0x11, length=8 * P)  # populated now
    assert host.read_mem(a + 8 * P - 2, 2) == b"\x11\x11"
    host.ftruncate(m, 4 * P)  # pages 4.. are beyond EOF
    with pytest.raises(MemorySignal) as sig:
        host.write_mem(a, data=b"\x22" * 8 * P)
    assert sig.value.signal_name == "SIGBUS" and sig.value.addr == a + 4 * P
    assert host.read_mem(a + 4 * P - 1, 1) == b"\x22"  # stored up to the fault
    host.mprotect(a, P, 1)
    with pytest.raises(MemorySignal) as sig:
        host.write_mem(a, fill=0, length=16)
    assert sig.value.signal_name == "SIGSEGV"
    assert host.read_mem(a, 4) == b"\x22" * 4


@needs_gmem_mmap
def test_fast_copies_after_a_failed_fixed_mapping(host: HostKernel) -> None:
    """A MAP_FIXED that guest_memfd refuses leaves a gap the next copy must not fault on."""
    vm = host.create_vm(0)
    f = host.create_guest_memfd(vm, 4 * P, 3)
    g = host.mmap(f, 4 * P, 3, 1)
    host.write_mem(g, fill=0x33, length=4 * P)
    with pytest.raises(OSError):
        host.mmap(f, P, 3, 0x12, addr=g + P)  # MAP_PRIVATE|FIXED: EINVAL, leaves a gap
    with pytest.raises(MemorySignal) as sig:
        host.read_mem(g, 4 * P)
    assert sig.value.signal_name == "SIGSEGV" and sig.value.addr == g + P
    host.fallocate(f, 3, 0, 4 * P)  # punched: refaulted as zero pages
    assert host.read_mem(g, 8) == bytes(8)
