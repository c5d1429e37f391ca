"""A minimal VM of the vmm's own: anonymous memory slots and vCPUs.

For tools and benchmarks that want a guest without going through the
interface (HostKernel keeps its own bookkeeping of what a case created).
Everything is released by close() or garbage collection.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import weakref

from .. import libc, uapi
from .vcpu import KVM_DEV, CpuidEntry, Vcpu, phys_bits, supported_cpuid, vcpu_mmap_size


class Memory:
    """Anonymous host memory backing one memslot."""

    def __init__(self, gpa: int, size: int, slot: int) -> None:
        self.gpa = gpa
        self.size = size
        self.slot = slot
        self.address = libc.mmap(0, size, uapi.PROT_READ | uapi.PROT_WRITE,
                                 uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_NORESERVE, -1, 0)
        self._finalizer = weakref.finalize(self, _unmap, self.address, size)

    def write(self, offset: int, data: bytes) -> None:
        if not 0 <= offset <= self.size - len(data):
            raise ValueError(f"write of {len(data)} bytes at {offset:#x} is outside the slot")
        ctypes.memmove(self.address + offset, data, len(data))

    def read(self, offset: int, length: int) -> bytes:
        if not 0 <= offset <= self.size - length:
            raise ValueError(f"read of {length} bytes at {offset:#x} is outside the slot")
        return ctypes.string_at(self.address + offset, length)

    def close(self) -> None:
        self._finalizer()


def _unmap(addr: int, size: int) -> None:
    with contextlib.suppress(OSError):
        libc.munmap(addr, size)


class Machine:
    """A KVM VM (type 0) with plain memory and vCPUs that get KVM's supported CPUID."""

    def __init__(self) -> None:
        self.kvm = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.fd = libc.ioctl_int(self.kvm, uapi.KVM_CREATE_VM, 0)
        except BaseException:
            os.close(self.kvm)
            raise
        self.memory: list[Memory] = []
        self.vcpus: list[Vcpu] = []
        self._cpuid: list[CpuidEntry] | None = None
        self._finalizer = weakref.finalize(self, _close_fds, [self.fd, self.kvm])

    @property
    def cpuid(self) -> list[CpuidEntry]:
        if self._cpuid is None:
            self._cpuid = supported_cpuid(self.kvm)
        return self._cpuid

    @property
    def phys_bits(self) -> int:
        return phys_bits(self.cpuid)

    def add_memory(self, gpa: int, size: int) -> Memory:
        mem = Memory(gpa, size, len(self.memory))
        buf = bytearray(uapi.KVM_USERSPACE_MEMORY_REGION_STRUCT.pack(mem.slot, 0, gpa, size,
                                                                       mem.address))
        try:
            libc.ioctl_buf(self.fd, uapi.KVM_SET_USER_MEMORY_REGION, buf)
        except BaseException:
            mem.close()
            raise
        self.memory.append(mem)
        return mem

    def create_vcpu(self, vcpu_id: int = 0) -> Vcpu:
        fd = libc.ioctl_int(self.fd, uapi.KVM_CREATE_VCPU, vcpu_id)
        try:
            vcpu = Vcpu(fd, vcpu_mmap_size(self.kvm), owns_fd=True)
        except BaseException:
            os.close(fd)
            raise
        vcpu.set_cpuid(self.cpuid)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        self._finalizer()  # the VM fd goes before its memory is unmapped
        for mem in self.memory:
            mem.close()
        self.memory.clear()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
