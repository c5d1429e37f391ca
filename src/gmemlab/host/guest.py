"""guest_access on the running kernel: a real guest performs the access.

The access is done by `vmm/guests/access.s` in 64-bit mode on the case's
own vCPU, and reported back through port I/O (a PVM host's KVM gives no
exit for vmcall).  The program needs memory of its own in the guest: code,
page tables, a GDT and IDT, a stack and a buffer for the bytes it moves.

Where that memory goes, and why the case cannot see it:

* It is one 4 MiB memslot backed by anonymous memory of this process that
  the case never mapped (so no case operation can touch it).  The slot is
  added with KVM_SET_USER_MEMORY_REGION right before KVM_RUN and deleted
  right after, so between two guest accesses the VM has exactly the case's
  memslots: a later set_user_memory_region cannot collide with it, and a
  guest access cannot land in it.
* Its slot id is the highest id the case does not use (32763 unless the
  case took it); its guest physical address is the highest 4 MiB-aligned
  range below the guest's MAXPHYADDR that overlaps no memslot of the case
  and not the 4 MiB around the accessed range.  HostKernel records every
  successful memslot call, so it knows both.
* Guest virtual addresses: the runner at 2 MiB (two 2 MiB pages: program
  and tables, then the data buffer) and a window at 1 GiB mapping the
  accessed range's two 2 MiB pages.  Paging is the guest's own; the
  accessed guest physical address can be anything below MAXPHYADDR.

The vCPU gets KVM's supported CPUID (so MAXPHYADDR is the host's, 48 bits
here, rather than the 36 of a vCPU without CPUID) at its first access.
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
from dataclasses import dataclass

from .. import libc, uapi
from ..errors import UsageError
from ..interface import GuestAccess
from ..vmm import asm, modes
from ..vmm.errors import VmmError
from ..vmm.exits import IoExit, MemoryFaultExit, MmioExit
from ..vmm.regs import DTable, Regs
from ..vmm.vcpu import Vcpu, phys_bits, supported_cpuid, vcpu_mmap_size

MIB = 1 << 20
LARGE = modes.LARGE_PAGE
RUNNER_SIZE = 4 * MIB
# Offsets in the runner's memory.
TABLES = 0x0000  # up to 8 page tables
GDT = 0x8000
IDT = 0x9000
STACK_TOP = 0xC000
CODE = 0x10000
BUFFER = 2 * MIB  # the second 2 MiB page
# Guest virtual addresses.
VA_RUNNER = 2 * MIB
VA_WINDOW = 1 << 30
TIMEOUT = 10.0  # a 1 MiB access is ~1.2 M emulated instructions, ~0.4 s here


@dataclass
class VcpuState:
    """What the runner did to one vCPU: set its CPUID, and the CR3 it last loaded."""

    cpuid_set: bool = False
    cr3: int | None = None


class GuestRunner:
    """The access program, its memory, and the CPUID every vCPU gets."""

    def __init__(self, kvm_fd: int) -> None:
        self.program = asm.load("access")
        self.cpuid = supported_cpuid(kvm_fd)
        self.phys_bits = phys_bits(self.cpuid)
        self.mmap_size = vcpu_mmap_size(kvm_fd)
        self.done_port = self.program["DONE_PORT"]
        self.fault_port = self.program["FAULT_PORT"]
        self.address = libc.mmap(0, RUNNER_SIZE, uapi.PROT_READ | uapi.PROT_WRITE,
                                 uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_NORESERVE, -1, 0)
        self._write(GDT, modes.GDT_LONG)
        self._write(IDT, self._idt())
        self._write(CODE, self.program.code)

    def close(self) -> None:
        if self.address:
            with contextlib.suppress(OSError):
                libc.munmap(self.address, RUNNER_SIZE)
            self.address = 0

    def _write(self, offset: int, data: bytes) -> None:
        assert offset >= 0 and offset + len(data) <= RUNNER_SIZE
        ctypes.memmove(self.address + offset, data, len(data))

    def _read(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= RUNNER_SIZE
        return ctypes.string_at(self.address + offset, length)

    def _idt(self) -> bytes:
        stubs = self.program["vectors"]
        stride = self.program["VECTOR_STUB_SIZE"]
        if self.program["vectors_end"] - stubs <= 31 * stride:
            raise VmmError("access.s: fewer than 32 exception stubs")
        out = bytearray()
        for vector in range(32):
            handler = VA_RUNNER + CODE + stubs + vector * stride
            # 64-bit interrupt gate: present, DPL 0, type 0xE, selector = code segment
            out += struct.pack("<HHBBHII", handler & 0xFFFF, modes.SEL_CODE, 0, 0x8E,
                               (handler >> 16) & 0xFFFF, handler >> 32, 0)
        return bytes(out)

    # --- placement ----------------------------------------------------------------------------

    def place(self, slots: list[tuple[int, int]], gpa: int, length: int) -> int:
        """The runner's guest physical address: free, reachable, away from the access."""
        top = 1 << min(self.phys_bits, 52)
        # The window's two 2 MiB pages hold [gpa, gpa + length): length <= 1 MiB.
        busy = [*slots, (gpa & ~(LARGE - 1), 2 * LARGE)]
        base = (top - RUNNER_SIZE) & ~(RUNNER_SIZE - 1)
        while base >= 0:
            end = base + RUNNER_SIZE
            clash = [s for s, n in busy if s < end and base < s + n]
            if not clash:
                return base
            # Jump below the lowest clashing range in one step.
            base = (min(clash) - RUNNER_SIZE) & ~(RUNNER_SIZE - 1)
        raise UsageError("guest_access: the case's memslots leave no 4 MiB of guest physical "
                         "address space for gmemlab's access program")

    # --- one access -----------------------------------------------------------------------------

    def access(self, vcpu: Vcpu, state: VcpuState, vm_fd: int, slot_id: int,
               slots: list[tuple[int, int]], gpa: int, length: int, write: bool,
               data: bytes) -> GuestAccess:
        if gpa + length > 1 << self.phys_bits:
            raise UsageError(f"guest_access: [{gpa:#x}, {gpa + length:#x}) is beyond this guest's "
                             f"physical address width ({self.phys_bits} bits): no guest "
                             "instruction can reach it")
        if not state.cpuid_set:
            vcpu.set_cpuid(self.cpuid)
            state.cpuid_set = True
        base = self.place(slots, gpa, length)
        window = gpa & ~(LARGE - 1)
        tables = modes.PageTables(base + TABLES)
        tables.map_large(VA_RUNNER, base, RUNNER_SIZE)
        tables.map_large(VA_WINDOW, window, LARGE)
        if gpa + length > window + LARGE:
            tables.map_large(VA_WINDOW + LARGE, window + LARGE, LARGE)
        self._write(TABLES, bytes(tables.buf))
        target = VA_WINDOW + gpa - window
        buffer = VA_RUNNER + BUFFER + (gpa & 7)  # same alignment as the target
        if write:
            self._write(BUFFER + (gpa & 7), data)
        regs = Regs(rip=VA_RUNNER + CODE + self.program["access"], rsp=VA_RUNNER + STACK_TOP,
                    rsi=buffer if write else target, rdi=target if write else buffer, rcx=length)
        region = uapi.KVM_USERSPACE_MEMORY_REGION_STRUCT
        libc.ioctl_buf(vm_fd, uapi.KVM_SET_USER_MEMORY_REGION,
                       bytearray(region.pack(slot_id, 0, base, RUNNER_SIZE, self.address)))
        try:
            if state.cr3 != tables.cr3:
                sregs = modes.long_mode(vcpu.get_sregs(), tables.cr3,
                                        gdt=DTable(VA_RUNNER + GDT, len(modes.GDT_LONG) - 1),
                                        idt=DTable(VA_RUNNER + IDT, 32 * 16 - 1))
                vcpu.set_sregs(sregs)
                state.cr3 = tables.cr3
            vcpu.set_regs(regs)
            return self._run(vcpu, length, write, gpa)
        finally:
            with contextlib.suppress(OSError):
                libc.ioctl_buf(vm_fd, uapi.KVM_SET_USER_MEMORY_REGION,
                               bytearray(region.pack(slot_id, 0, base, 0, self.address)))

    def _run(self, vcpu: Vcpu, length: int, write: bool, gpa: int) -> GuestAccess:
        with vcpu.deadline(TIMEOUT):
            exit = vcpu.run()
        if isinstance(exit, IoExit) and exit.out and exit.port == self.done_port:
            if write:
                return GuestAccess(exit="none")
            return GuestAccess(exit="none", data_hex=self._read(BUFFER + (gpa & 7), length).hex())
        if isinstance(exit, MmioExit):
            vcpu.complete_pending()
            return GuestAccess(exit="mmio", gpa=exit.gpa, size=exit.length, write=exit.write)
        if isinstance(exit, MemoryFaultExit):
            return GuestAccess(exit="memory_fault", gpa=exit.gpa, size=exit.size, flags=exit.flags,
                               errno=uapi.errno_name(exit.errno))
        if isinstance(exit, IoExit) and exit.port == self.fault_port:
            vector = exit.value
            regs = vcpu.get_regs()
            cr2 = vcpu.get_sregs().cr2
            raise VmmError(f"guest_access: the access program took exception {vector} "
                           f"(cr2 {cr2:#x}, rsp {regs.rsp:#x})")
        raise VmmError(f"guest_access: unexpected exit {exit!r}")
