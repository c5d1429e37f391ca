"""The host kernel: the real system calls, and never harm to the interpreter."""

from __future__ import annotations

import os

import pytest

from gmemlab import MemorySignal, UsageError
from gmemlab.host import HostKernel

from .conftest import needs_kvm

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
            f = k.create_guest_memfd(vm, 16 * P, 3)
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
    k.create_guest_memfd(vm, P, 0)
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
    f = host.create_guest_memfd(vm, P, 3)
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
    f = host.create_guest_memfd(vm, 64 << 20, 3)
    a = host.mmap(f, 64 << 20, 3, 1)
    host.write_mem(a, fill=0x5A, length=(64 << 20) - 3)
    data = host.read_mem(a, 64 << 20)
    assert data[:-3] == b"\x5a" * ((64 << 20) - 3) and data[-3:] == b"\0\0\0"


@needs_kvm
def test_vm_ioctl_from_forked_child_is_eio(host: HostKernel) -> None:
    """[A11] a VM ioctl from another mm (a forked child) is EIO."""
    from gmemlab import uapi
    from gmemlab.host import libc
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
    from gmemlab import uapi
    from gmemlab.host import libc
    vm = host.create_vm(0)
    with pytest.raises(OSError) as err:
        libc.ioctl_int(vm, uapi.KVM_CREATE_GUEST_MEMFD, 0x10)
    assert err.value.errno == 14
