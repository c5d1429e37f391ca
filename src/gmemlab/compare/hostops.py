"""The running kernel, driven the way a VMM would: the primitives that
calibration measures and validation replays.

Everything here is the plain system call through ctypes (gmemlab.host.libc),
with no bookkeeping beyond what a VMM keeps, so that what calibration
measures per call is what a replayed workload pays per call.  Files are
memfds (standing for a restricted memfd, which is a shmem file with
restrictions, or for a guest_memfd where the kernel has none) or real
guest_memfds; each file gets a canonical place in a part of the address
space nothing else uses (from 16 TiB up), where its pages are mapped with
MAP_FIXED_NOREPLACE, so a mapping never lands on anything of the
interpreter's.

`Doorbell` is the guest: `vmm/guests/doorbell.s` in 64-bit mode on a vCPU
of the host VM, ringing once per request (KVM_EXIT_IO), with its code, the
request table and the mailbox in a memslot of its own far above guest
memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .. import libc, uapi
from ..host import probe
from ..vmm import asm, modes
from ..vmm.errors import VmmError
from ..vmm.exits import IoExit
from ..vmm.regs import Regs
from ..vmm.vcpu import KVM_DEV, Vcpu, phys_bits, supported_cpuid

P = uapi.PAGE_SIZE
MIB = 1 << 20
CANONICAL_START = 1 << 44  # 16 TiB: far below the interpreter's mappings, far above its heap
FILE_GAP = 2 * MIB
RUNNER_SLOT = 32763  # the highest memslot id; workloads use the low ones
RUNNER_VA = 2 * MIB
ENTRY = struct.Struct("<QII")  # gpa, size, kind
RW = uapi.PROT_READ | uapi.PROT_WRITE
FIXED = uapi.MAP_SHARED | uapi.MAP_FIXED_NOREPLACE
KINDS = {"share": 1, "unshare": 2, "io": 3, "discard": 4, "allocate": 5, "snapshot": 6, "noop": 7}


def missing() -> str | None:
    """Why nothing here can run on this machine, or None."""
    prof = probe.profile()
    if not prof.usable:
        return f"no usable /dev/kvm ({prof.kvm_missing})"
    return asm.missing_reason()


@dataclass
class HostFile:
    """A file of the workload on the host: its fd, its size and its canonical address."""

    fd: int
    kind: str  # "memfd" or "gmem"
    size: int = 0
    base: int = 0  # canonical host address of offset 0

    def address(self, offset: int) -> int:
        return self.base + offset


@dataclass
class Host:
    """The host side of one replay or calibration: a VM, files, mappings, scratch buffers."""

    vm: int = -1
    kvm: int = -1
    files: list[HostFile] = field(default_factory=list)
    next_base: int = CANONICAL_START
    slots: list[int] = field(default_factory=list)
    src: ctypes.Array[ctypes.c_char] = field(default_factory=lambda: ctypes.create_string_buffer(MIB))
    scratch: ctypes.Array[ctypes.c_char] = field(
        default_factory=lambda: ctypes.create_string_buffer(MIB))

    def __post_init__(self) -> None:
        ctypes.memset(self.src, 0x5A, MIB)

    # --- VM and memslots --------------------------------------------------------------------

    def create_vm(self) -> int:
        if self.kvm < 0:
            self.kvm = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
        self.vm = libc.ioctl_int(self.kvm, uapi.KVM_CREATE_VM, 0)
        return self.vm

    def set_slot(self, slot: int, gpa: int, size: int, uaddr: int) -> None:
        region = uapi.KVM_USERSPACE_MEMORY_REGION_STRUCT
        libc.ioctl_buf(self.vm, uapi.KVM_SET_USER_MEMORY_REGION,
                       bytearray(region.pack(slot, 0, gpa, size, uaddr)))
        if size:
            self.slots.append(slot)
        elif slot in self.slots:
            self.slots.remove(slot)

    def check_extension(self, cap: int) -> int:
        return libc.ioctl_int(self.vm, uapi.KVM_CHECK_EXTENSION, cap)

    # --- files ----------------------------------------------------------------------------------

    def memfd(self, name: str = "gmemlab-compare") -> HostFile:
        f = HostFile(os.memfd_create(name, os.MFD_CLOEXEC), "memfd")
        self.files.append(f)
        return f

    def guest_memfd(self, size: int, flags: int) -> HostFile:
        buf = bytearray(uapi.KVM_CREATE_GUEST_MEMFD_STRUCT.pack(size, flags, *([0] * 6)))
        fd = libc.ioctl_buf(self.vm, uapi.KVM_CREATE_GUEST_MEMFD, buf)
        f = HostFile(fd, "gmem")
        self.files.append(f)
        self.place(f, size)
        return f

    def ftruncate(self, f: HostFile, size: int) -> None:
        os.ftruncate(f.fd, size)
        self.place(f, size)

    def unmapped_range(self, size: int) -> int:
        """An address range nothing will map: a memslot's userspace_addr for memory KVM
        takes from a file, not from the VMM's mappings (so the VMM's own munmap and
        madvise never reach KVM's MMU notifier, as they would not in those designs)."""
        base = self.next_base
        self.next_base += (size + FILE_GAP - 1) // FILE_GAP * FILE_GAP + FILE_GAP
        return base

    def place(self, f: HostFile, size: int) -> None:
        """Give f its canonical address range (once its size is known)."""
        f.size = size
        if not f.base:
            f.base = self.next_base
            self.next_base += (size + FILE_GAP - 1) // FILE_GAP * FILE_GAP + FILE_GAP

    # --- mappings and memory ------------------------------------------------------------------

    def map(self, f: HostFile, offset: int, length: int) -> int:
        return libc.mmap(f.base + offset, length, RW, FIXED, f.fd, offset)

    def close(self) -> None:
        for f in self.files:
            if f.base and f.size:
                with contextlib.suppress(OSError):
                    libc.munmap(f.base, f.size)
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self.files.clear()
        for fd in (self.vm, self.kvm):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.vm = self.kvm = -1

    def write(self, addr: int, nbytes: int) -> None:
        """The host fills an I/O buffer (faulting its pages in as needed)."""
        done = 0
        while done < nbytes:
            n = min(MIB, nbytes - done)
            ctypes.memmove(addr + done, self.src, n)
            done += n

    def read(self, addr: int, nbytes: int) -> None:
        """The host copies memory out (a snapshot), one chunk at a time."""
        done = 0
        while done < nbytes:
            n = min(MIB, nbytes - done)
            ctypes.memmove(self.scratch, addr + done, n)
            done += n


# The VMM thread's CPU time, not the wall clock: on a machine shared with other
# work the wall clock counts their time too, while this thread's CPU time (its
# system calls and the guest's run included) stays what the work costs.
clock = time.thread_time


def timed(fn: Callable[[], None]) -> float:
    start = clock()
    fn()
    return clock() - start


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No garbage collection inside a measurement: a full collection walks every object
    of the interpreter (a long trace included), which no VMM loop would pay."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Doorbell:
    """The validation guest on a vCPU of `host`'s VM."""

    DOORBELL_PORT = 0x0FE0
    DONE_PORT = 0x0FE1

    def __init__(self, host: Host, entries: Sequence[tuple[int, int, int]], gpa_floor: int) -> None:
        self.program = asm.load("doorbell")
        self.doorbell = self.program["DOORBELL_PORT"]
        self.done = self.program["DONE_PORT"]
        cpuid = supported_cpuid(host.kvm)
        bits = phys_bits(cpuid)
        table = ENTRY.size * max(1, len(entries))
        self.size = (16 * P + table + 2 * MIB - 1) // (2 * MIB) * (2 * MIB)
        self.gpa = max(1 << 40, (gpa_floor + 2 * MIB - 1) // (2 * MIB) * (2 * MIB))
        if self.gpa + self.size > 1 << bits:
            raise VmmError(f"no room for the doorbell guest above guest memory ({bits}-bit "
                           "guest physical addresses)")
        self.mem = libc.mmap(0, self.size, RW, uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS
                             | uapi.MAP_NORESERVE, -1, 0)
        tables = modes.PageTables(self.gpa)
        tables.map_large(RUNNER_VA, self.gpa, self.size)
        ctypes.memmove(self.mem, bytes(tables.buf), len(tables.buf))
        # Page tables, then code, mailbox and request table on pages of their own.
        code_off = (len(tables.buf) + P - 1) // P * P
        mailbox_off = code_off + P
        table_off = mailbox_off + P
        ctypes.memmove(self.mem + code_off, self.program.code, len(self.program.code))
        packed = b"".join(ENTRY.pack(*e) for e in entries)
        ctypes.memmove(self.mem + table_off, packed, len(packed))
        self.mailbox = (ctypes.c_char * 16).from_address(self.mem + mailbox_off)
        host.set_slot(RUNNER_SLOT, self.gpa, self.size, self.mem)
        self.host = host
        self.count = len(entries)
        self.entries = list(entries)
        self.vcpu = Vcpu.create(host.vm, 0, host.kvm)
        self.vcpu.set_cpuid(cpuid)
        sregs = modes.long_mode(self.vcpu.get_sregs(), tables.cr3)
        self.vcpu.set_sregs(sregs)
        self.regs = Regs(rip=RUNNER_VA + code_off + self.program["start"],
                         rsp=RUNNER_VA + code_off, rdi=RUNNER_VA + table_off,
                         rsi=RUNNER_VA + mailbox_off, rcx=len(entries))

    def warm(self) -> None:
        """Run the guest once with no request: its first entry costs more than the rest."""
        self.vcpu.set_regs(replace(self.regs, rcx=0))
        with self.vcpu.deadline(60.0):
            exit = self.vcpu.run()
        if not (isinstance(exit, IoExit) and exit.port == self.done):
            raise VmmError(f"doorbell guest: unexpected exit {exit!r}")

    def exit_cost(self, n: int = 2000) -> float:
        """Seconds per request of the guest's first n requests answered with nothing (by
        the replay's own dispatcher): the exit round trip measured on this very vCPU,
        next to the run it prices."""
        n = min(n, self.count)
        if n == 0:
            return 0.0
        idle = Dispatcher([[] for _ in range(n)], list(range(n)), [0] * n, [], self.entries[:n])
        start = clock()
        self.run(idle, count=n)
        return (clock() - start) / n

    def run(self, handle: Callable[[int, bytes], None], timeout: float = 600.0,
            count: int | None = None) -> None:
        """Run the guest to its end (or its first `count` requests); handle(i, mailbox)
        for every doorbell."""
        self.vcpu.set_regs(self.regs if count is None else replace(self.regs, rcx=count))
        doorbell, done, vcpu, mailbox = self.doorbell, self.done, self.vcpu, self.mailbox
        with vcpu.deadline(timeout):
            while True:
                exit = vcpu.run()
                if isinstance(exit, IoExit) and exit.port == doorbell:
                    handle(int.from_bytes(exit.data, "little"), mailbox.raw)
                    continue
                if isinstance(exit, IoExit) and exit.port == done:
                    return
                raise VmmError(f"doorbell guest: unexpected exit {exit!r}")

    def close(self) -> None:
        self.vcpu.close()
        with contextlib.suppress(OSError):
            self.host.set_slot(RUNNER_SLOT, self.gpa, 0, self.mem)
        with contextlib.suppress(OSError):
            libc.munmap(self.mem, self.size)


Action = tuple[Callable[..., Any], tuple[Any, ...]]


class Dispatcher:
    """The VMM's answer to each doorbell: check the mailbox, run the host-only requests
    due before it, carry out the request's actions, and charge the time to its step.

    Calibration's exit round trip goes through this same code with no actions, so
    the dispatch itself is part of the exit's cost and of nothing else.
    """

    def __init__(self, actions: list[list[Action]], guest_reqs: list[int], step_of: list[int],
                 host_only: list[int], entries: Sequence[tuple[int, int, int]]) -> None:
        self.actions = actions
        self.guest_reqs = guest_reqs
        self.step_of = step_of
        self.host_only = host_only
        self.entries = entries
        self.next_host_only = 0
        self.per_step = [0.0] * (max(step_of, default=0) + 1)
        self.step = step_of[0] if step_of else 0
        self.since = 0.0

    def start(self) -> None:
        self.since = clock()

    def enter(self, step: int) -> None:
        # Clocks are read only where the step changes: a read per request would cost as
        # much as a system call.
        if step != self.step:
            now = clock()
            self.per_step[self.step] += now - self.since
            self.step, self.since = step, now

    def run_host_only(self, upto: int) -> None:
        host_only, actions = self.host_only, self.actions
        while self.next_host_only < len(host_only) and host_only[self.next_host_only] < upto:
            i = host_only[self.next_host_only]
            self.enter(self.step_of[i])
            for fn, args in actions[i]:
                fn(*args)
            self.next_host_only += 1

    def finish(self) -> None:
        self.run_host_only(len(self.step_of))
        now = clock()
        self.per_step[self.step] += now - self.since
        self.since = now

    def __call__(self, n: int, mailbox: bytes) -> None:
        i = self.guest_reqs[n]
        if ENTRY.unpack(mailbox)[0] != self.entries[n][0]:
            raise VmmError(f"doorbell guest: asked for {mailbox.hex()}, not request {i}")
        self.run_host_only(i)
        self.enter(self.step_of[i])
        for fn, args in self.actions[i]:
            fn(*args)
