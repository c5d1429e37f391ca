"""HostKernel: the interface on the running kernel, standard library only.

Every operation is the real system call or ioctl.  Two things are added so
that a case can never harm the interpreter that runs it:

* The case sees only its own resources.  An fd this HostKernel did not
  create is treated as not open (EBADF, or -1 inside an ioctl struct), and an
  address-space operation that would touch memory it did not map (the
  interpreter's heap, libraries, stacks) is refused with UsageError instead
  of being executed.
* Loads and stores never fault in the interpreter.  The fast path copies
  with memmove, but only over pages that MADV_POPULATE_READ/WRITE has
  faulted in (which reports a fault as an error instead of a signal) since
  the last operation that could unmap, reprotect or zap them.  Anything else
  goes through process_vm_readv/writev on our own pid, which copy until the
  first page that cannot be served and return EFAULT there; the faulting
  address is then classified the way the kernel would signal it: no VMA or a
  protection violation is SIGSEGV, a VMA whose fault handler refused is
  SIGBUS.

A HostKernel is not thread-safe: one thread at a time uses it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import libc, uapi
from ..errors import ConversionError, MemorySignal, UsageError, kernel_error
from ..guestaccess import check_call, check_private, guest_chooses_private
from ..interface import GuestAccess, Mempolicy, Stat, checked
from ..rangemap import RangeMap
from . import probe

if TYPE_CHECKING:
    from ..vmm.vcpu import Vcpu
    from .guest import GuestRunner, VcpuState

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
KVM_DEV = probe.KVM_DEV
CAP_NAMES = {number: name for name, number in uapi.CAPS.items()}
VPAGES = 1 << (64 - SHIFT)
LOADABLE, STORABLE = 1, 2  # what the fast path knows a populated page allows


# A node mask the kernel reads or writes is at most a page of bits (get_nodes,
# copy_nodes_to_user); the thread's own policy is saved with 1024 nodes.
MASK_WORDS_MAX = P // 8 + 1
SAVED_WORDS = 16


def _mask_words(maxnode: int) -> int:
    """The unsigned longs of a mask of maxnode - 1 bits (the kernel drops one)."""
    return (((maxnode - 1) & ((1 << 64) - 1)) + 63) // 64


def _user_nodemask(nodemask: Sequence[int], maxnode: int) -> list[int]:
    """The words to pass for a case's mask: as many as the kernel may read, zero-padded."""
    if not nodemask:
        return []
    words = max(1, min(_mask_words(maxnode), MASK_WORDS_MAX))
    return (list(nodemask) + [0] * words)[:words]


def host_unavailable() -> str | None:
    """Why /dev/kvm cannot be used here (under the active mask), or None."""
    return probe.kvm_missing()


def read_maps() -> list[tuple[int, int, str]]:
    """(start, end, perms) of every VMA of this process."""
    out = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            span, perms = line.split(None, 2)[:2]
            lo, _, hi = span.partition("-")
            out.append((int(lo, 16), int(hi, 16), perms))
    return out


PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
GFNS = 1 << (64 - SHIFT)


@dataclass
class _GmemInfo:
    """A guest_memfd the case created: its own attributes on a kernel with
    in-place conversion (gfn -> attribute bits by file page), else None."""

    attributes: RangeMap[int] | None


@dataclass
class _Slot:
    gpa: int
    size: int
    uaddr: int
    gmem: _GmemInfo | None = None  # a KVM_MEM_GUEST_MEMFD slot's file
    offset: int = 0


@dataclass
class _VmInfo:
    """A VM the case created, whichever of its fds (dups) the case uses."""

    type: int
    # Memslots the case has, by slot (as_id << 16 | id).
    slots: dict[int, _Slot] = field(default_factory=dict)
    # KVM_SET_MEMORY_ATTRIBUTES that succeeded, per gfn: which gfns KVM
    # holds private (guest accesses, the access program's placement).
    attributes: RangeMap[int] = field(default_factory=lambda: RangeMap(0, GFNS))
    # gmemlab's own dup of the VM fd, held while the VM has vCPU fds, so that
    # guest_access can add its runner's memslot after the case closed its VM
    # fds (a vCPU keeps the VM alive anyway, so the dup changes no lifetime).
    hidden_fd: int | None = None
    vcpus: int = 0


@dataclass
class _VcpuInfo:
    vm: _VmInfo
    fds: set[int] = field(default_factory=set)
    runner: Vcpu | None = None  # kvm_run mapped on one of fds
    state: VcpuState | None = None


@dataclass
class _Held:
    """Everything a HostKernel must release; the finalizer holds this, not the kernel."""

    kvm: int
    fds: set[int] = field(default_factory=set)  # the case's fds
    hidden: set[int] = field(default_factory=set)  # gmemlab's own dups of VM fds
    # Virtual pages this kernel object mapped and has not unmapped.
    own: RangeMap[bool] = field(default_factory=lambda: RangeMap(False, 1 << (64 - SHIFT)))
    vcpus: list[Vcpu] = field(default_factory=list)
    runner: list[GuestRunner] = field(default_factory=list)
    # The thread's memory policy before the case's first set_mempolicy, and the thread.
    task_policy: tuple[int, list[int], int] | None = None

    def release(self) -> None:
        """Unmap what we mapped and close what we opened (also run by the finalizer)."""
        if self.task_policy is not None and self.task_policy[2] == threading.get_ident():
            mode, words, _ = self.task_policy
            with contextlib.suppress(OSError):
                libc.set_mempolicy(mode, words, 64 * len(words) + 1)
            self.task_policy = None
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        for runner in self.runner:
            runner.close()
        self.runner.clear()
        for s, e, mine in list(self.own.runs()):
            if mine:
                with contextlib.suppress(OSError):
                    libc.munmap(s << SHIFT, (e - s) << SHIFT)
        self.own.set(0, self.own.limit, False)
        for fd in sorted(self.fds | self.hidden):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.hidden.clear()
        if self.kvm >= 0:
            with contextlib.suppress(OSError):
                os.close(self.kvm)
            self.kvm = -1


@checked
class HostKernel:
    """The running kernel through /dev/kvm, guest_memfd and mmap."""

    name = "host"
    EXTRA_OPS: tuple[str, ...] = ()

    def __init__(self) -> None:
        # The capabilities hidden from this kernel object (probe.py); fixed for its life.
        self._mask = probe.active_mask()
        if "kvm" in self._mask:
            raise kernel_error(errno.ENOENT, f"{KVM_DEV} is hidden by the mask 'kvm'")
        self._kvm = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
        self._held = _Held(self._kvm)
        self._fds = self._held.fds
        self._own = self._held.own
        self._vms: dict[int, _VmInfo] = {}
        self._vcpus: dict[int, _VcpuInfo] = {}
        self._gmems: dict[int, _GmemInfo] = {}
        # Pages populated for loads or stores since the last operation that
        # could unmap, reprotect or zap them (_changed() forgets them all).
        self._populated: RangeMap[int] = RangeMap(0, VPAGES)
        # The populated run the last fast copy used: (first, last, level).
        self._hot = (0, 0, 0)
        self._finalizer = weakref.finalize(self, _Held.release, self._held)

    def __enter__(self) -> HostKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        self._finalizer()

    def unsupported(self, op: str) -> str | None:
        if op == "guest_access":
            return probe.profile().access_missing
        if op in ("mbind", "get_mempolicy", "set_mempolicy"):
            return probe.profile().numa_missing
        return None

    def behaves_as(self) -> str:
        return probe.profile().design

    def access_path(self) -> str:
        """Probed once per process (probe.profile)."""
        prof = probe.profile()
        if prof.access_path is None:
            raise UsageError(f"guest accesses cannot run here: {prof.access_missing}")
        return prof.access_path

    # --- resources seen by the case ------------------------------------------------

    def _fd(self, fd: int) -> int:
        if fd not in self._fds:
            raise kernel_error(errno.EBADF, f"fd {fd} is not open (for this kernel)")
        return fd

    def _adopt(self, fd: int) -> int:
        self._fds.add(fd)
        return fd

    def _struct_fd(self, fd: int) -> int:
        """An fd inside an ioctl struct: foreign numbers become -1."""
        signed = fd - (1 << 32) if fd >= 1 << 31 else fd
        return signed & 0xFFFFFFFF if signed in self._fds else 0xFFFFFFFF

    def _check_range(self, addr: int, length: int, what: str) -> None:
        """Refuse to touch memory this kernel object did not map."""
        if length <= 0:
            return
        end = min(addr + length, 1 << 64)
        first, last = addr >> SHIFT, (end + P - 1) >> SHIFT
        if self._own.all_equal(first, min(last, VPAGES), True):
            return  # ours, page by page: no other mapping can be there
        for lo, hi, _ in read_maps():
            if hi <= addr or lo >= end:
                continue
            a, b = max(lo, addr) >> SHIFT, (min(hi, end) + P - 1) >> SHIFT
            if not self._own.all_equal(max(a, first), min(b, last), True):
                raise UsageError(f"{what}: [{addr:#x}, {end:#x}) touches memory this kernel "
                                 "did not map (the interpreter's own)")

    def _changed(self) -> None:
        """Mappings, protections or file pages may have changed: nothing is
        known to be populated any more."""
        self._populated = RangeMap(0, VPAGES)
        self._hot = (0, 0, 0)

    def _forget_holes(self, addr: int, length: int) -> None:
        """After a failed MAP_FIXED (or MREMAP_FIXED), what it was to replace may
        have become a gap (mm/vma.c): pages without a mapping are not ours."""
        if length <= 0:
            return
        first, last = addr >> SHIFT, min((addr + length + P - 1) >> SHIFT, VPAGES)
        mapped: RangeMap[bool] = RangeMap(False, VPAGES)
        for lo, hi, _ in read_maps():
            if hi > first << SHIFT and lo < last << SHIFT:
                mapped.set(max(lo >> SHIFT, first), min(hi >> SHIFT, last), True)
        for s, e, is_mapped in list(mapped.runs(first, last)):
            if not is_mapped:
                self._own.set(s, e, False)

    def _mark(self, addr: int, length: int, mine: bool) -> None:
        if length > 0:
            first = addr >> SHIFT
            self._own.set(first, min(first + ((length + P - 1) >> SHIFT), self._own.limit), mine)

    # --- file and memory ------------------------------------------------------------------

    def open_kvm(self) -> int:
        return self._adopt(os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC))

    def create_vm(self, type: int = 0) -> int:
        fd = self._adopt(libc.ioctl_int(self._kvm, uapi.KVM_CREATE_VM, type))
        self._vms[fd] = _VmInfo(type)
        return fd

    def check_extension(self, cap: int, vm: int | None = None) -> int:
        fd = self._kvm if vm is None else self._fd(vm)
        value = libc.ioctl_int(fd, uapi.KVM_CHECK_EXTENSION, cap)
        name = CAP_NAMES.get(cap)
        if not self._mask or name is None:
            return value
        info = None if vm is None else self._vms.get(vm)
        if info is not None and "mmap" in self._mask and name == "GUEST_MEMFD" \
                and "guest_memfd" not in self._mask:
            # 6.8 to 6.17: `!kvm || kvm_arch_has_private_mem(kvm)`.
            return value if info.type != uapi.KVM_X86_DEFAULT_VM else 0
        return probe.masked_cap(self._mask, name, value)

    def _masked_create(self, vm: int, flags: int) -> None:
        """What a kernel the mask stands for answers KVM_CREATE_GUEST_MEMFD on a VM fd."""
        if vm not in self._vms:
            return  # other fds answer as they do on every kernel
        if "guest_memfd" in self._mask:
            raise kernel_error(errno.ENOTTY, "no guest_memfd (masked): the VM ioctl is unknown")
        if "mmap" in self._mask and flags:
            raise kernel_error(errno.EINVAL, "no guest_memfd flags before 6.18 (masked)")

    def _masked_memslot(self, vm: int, flags: int) -> None:
        """check_memory_region_flags() of a kernel the mask stands for."""
        info = self._vms.get(vm)
        if info is None or not flags & uapi.KVM_MEM_GUEST_MEMFD:
            return
        if "guest_memfd" in self._mask:
            raise kernel_error(errno.EINVAL, "KVM_MEM_GUEST_MEMFD is not a valid flag (masked)")
        if "mmap" in self._mask and info.type == uapi.KVM_X86_DEFAULT_VM:
            raise kernel_error(errno.EINVAL, "before 6.18 only VMs with private memory bind a "
                                             "guest_memfd (masked)")

    def create_guest_memfd(self, vm: int, size: int, flags: int = 0,
                           reserved: Sequence[int] = ()) -> int:
        if len(reserved) > 6:
            raise UsageError("create_guest_memfd: reserved has 6 entries")
        res = list(reserved) + [0] * (6 - len(reserved))
        if self._mask:
            self._masked_create(self._fd(vm), flags)
        buf = bytearray(uapi.KVM_CREATE_GUEST_MEMFD_STRUCT.pack(size, flags, *res))
        fd = self._adopt(libc.ioctl_buf(self._fd(vm), uapi.KVM_CREATE_GUEST_MEMFD, buf))
        attributes = None
        if self._inplace():
            start = 0 if flags & uapi.GUEST_MEMFD_FLAG_INIT_SHARED else PRIVATE
            attributes = RangeMap(start, GFNS)
        self._gmems[fd] = _GmemInfo(attributes)
        return fd

    @staticmethod
    def _inplace() -> bool:
        """Whether guest_memfds keep the PRIVATE attribute themselves (in-place conversion)."""
        return bool(probe.profile().cap("GUEST_MEMFD_MEMORY_ATTRIBUTES") & PRIVATE)

    def memfd_create(self, name: str = "gmemlab", flags: int = 0) -> int:
        if "\0" in name:
            raise UsageError("memfd_create: name must not contain NUL")
        return self._adopt(os.memfd_create(name, flags))

    def memfd_restricted(self, flags: int = 0) -> int:
        # The 2022 proposal's syscall was never merged: no kernel has a number for it.
        raise kernel_error(errno.ENOSYS, "memfd_restricted was never merged into Linux")

    def close(self, fd: int) -> int:
        self._fd(fd)
        vcpu = self._vcpus.pop(fd, None)
        if vcpu is not None:
            self._forget_vcpu_fd(vcpu, fd)
        self._vms.pop(fd, None)
        self._gmems.pop(fd, None)
        os.close(fd)
        self._fds.discard(fd)
        return 0

    def _forget_vcpu_fd(self, info: _VcpuInfo, fd: int) -> None:
        """The case closes a vCPU fd: drop our kvm_run mapping on it, and our VM dup
        once the VM has no vCPU fd left (then the mapping no longer pins the vCPU)."""
        info.fds.discard(fd)
        if info.runner is not None and info.runner.fd == fd:
            info.runner.close()
            self._held.vcpus.remove(info.runner)
            info.runner = None
        if not info.fds:
            info.vm.vcpus -= 1
            if info.vm.vcpus == 0 and info.vm.hidden_fd is not None:
                self._held.hidden.discard(info.vm.hidden_fd)
                os.close(info.vm.hidden_fd)
                info.vm.hidden_fd = None

    def dup(self, fd: int) -> int:
        new = self._adopt(os.dup(self._fd(fd)))
        if fd in self._vms:
            self._vms[new] = self._vms[fd]
        if fd in self._vcpus:
            self._vcpus[new] = self._vcpus[fd]
            self._vcpus[new].fds.add(new)
        if fd in self._gmems:
            self._gmems[new] = self._gmems[fd]
        return new

    def fstat(self, fd: int) -> Stat:
        st = os.fstat(self._fd(fd))
        return Stat(size=st.st_size, mode=st.st_mode, blksize=st.st_blksize, blocks=st.st_blocks,
                    nlink=st.st_nlink, ino=st.st_ino, dev=st.st_dev)

    def fchmod(self, fd: int, mode: int) -> int:
        target = self._fd(fd)
        link = os.readlink(f"/proc/self/fd/{target}")
        if not (link.startswith("/memfd:") or link == "anon_inode:[kvm-gmem]"):
            raise UsageError("fchmod: only guest_memfd and memfd files may be changed "
                             "(the others share a system-wide inode)")
        os.fchmod(target, mode)
        return 0

    def fsync(self, fd: int) -> int:
        os.fsync(self._fd(fd))
        return 0

    def read(self, fd: int, length: int) -> bytes:
        return os.read(self._fd(fd), length)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(self._fd(fd), data)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        if offset < 0:
            raise kernel_error(errno.EINVAL, "negative offset")
        return os.pread(self._fd(fd), length, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if offset < 0:
            raise kernel_error(errno.EINVAL, "negative offset")
        return os.pwrite(self._fd(fd), data, offset)

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        return os.lseek(self._fd(fd), offset, whence)

    def ftruncate(self, fd: int, length: int) -> int:
        if length < 0:
            raise kernel_error(errno.EINVAL, "negative length")
        self._changed()
        os.ftruncate(self._fd(fd), length)
        return 0

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> int:
        self._changed()
        return libc.fallocate(self._fd(fd), mode, offset, length)

    # --- the address space -----------------------------------------------------------------

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int = 0,
             addr: int = 0) -> int:
        anonymous = bool(flags & uapi.MAP_ANONYMOUS)
        if flags & (uapi.MAP_FIXED | uapi.MAP_FIXED_NOREPLACE):
            self._check_range(addr, length, "mmap")
        elif addr:
            addr = 0  # a hint could place the mapping among the interpreter's; drop it
        raw_fd = -1 if anonymous else self._fd(fd)
        self._changed()
        try:
            result = libc.mmap(addr, length, prot, flags, raw_fd, offset)
        except OSError:
            if flags & uapi.MAP_FIXED and not flags & uapi.MAP_FIXED_NOREPLACE:
                self._forget_holes(addr, length)
            raise
        self._mark(result, length, True)
        return result

    def munmap(self, addr: int, length: int) -> int:
        self._check_range(addr, length, "munmap")
        self._changed()
        libc.munmap(addr, length)
        if not addr & (P - 1):
            self._mark(addr, length, False)
        return 0

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        self._check_range(addr, length, "mprotect")
        self._changed()
        return libc.mprotect(addr, length, prot)

    def madvise(self, addr: int, length: int, advice: int) -> int:
        self._check_range(addr, length, "madvise")
        self._changed()
        return libc.madvise(addr, length, advice)

    def mremap(self, addr: int, old_length: int, new_length: int, flags: int = 0,
               new_address: int = 0) -> int:
        # Growing never touches other mappings (it moves or fails instead),
        # so only the old range and a MREMAP_FIXED target need to be ours.
        self._check_range(addr, old_length, "mremap")
        if flags & uapi.MREMAP_FIXED:
            self._check_range(new_address, new_length, "mremap")
        self._changed()
        try:
            result = libc.mremap(addr, old_length, new_length, flags, new_address)
        except OSError:
            if flags & uapi.MREMAP_FIXED:
                self._forget_holes(new_address, new_length)
            raise
        if result != addr:
            self._mark(addr, old_length, False)
        elif new_length < old_length:
            self._mark(addr + new_length, old_length - new_length, False)
        self._mark(result, new_length, True)
        return result

    def _signal_at(self, addr: int, write: bool) -> MemorySignal:
        """The signal a plain access at addr would have raised."""
        for lo, hi, perms in read_maps():
            if lo <= addr < hi:
                if (write and perms[1] != "w") or perms[:3] == "---":
                    return MemorySignal(uapi.SIGSEGV, addr, "the mapping's protection forbids it")
                if not write and perms[0] != "r":
                    # x86 would load through PROT_WRITE or PROT_EXEC alone, but
                    # process_vm_readv needs VM_READ: the answer is unknown.
                    raise UsageError(f"read_mem: {addr:#x} is mapped without PROT_READ; the "
                                     "host cannot check such a load without risking a crash")
                return MemorySignal(uapi.SIGBUS, addr, "the file refused the page fault")
        return MemorySignal(uapi.SIGSEGV, addr, "no mapping")

    def _fast(self, addr: int, n: int, level: int, what: str) -> bool:
        """Whether [addr, addr+n) can be copied with memmove: every page ours
        and faulted in for loads (level LOADABLE) or stores (STORABLE) since
        the last _changed().  Populated pages are ours: every operation that
        gives pages up calls _changed() first."""
        first, last = addr >> SHIFT, (addr + n + P - 1) >> SHIFT
        start, end, have = self._hot
        if start <= first and last <= end and have >= level:
            return True
        if last > VPAGES:
            return False
        populated = self._populated
        start, end, have = populated.run_at(first)
        if end >= last and have >= level:
            self._hot = (start, end, have)
            return True
        self._check_range(addr, n, what)
        if not self._own.all_equal(first, last, True):
            return False
        advice = uapi.MADV_POPULATE_WRITE if level == STORABLE else uapi.MADV_POPULATE_READ
        try:
            # Faults in the pages exactly as the access would, but answers a
            # fault the kernel would signal with an error.
            libc.madvise(first << SHIFT, (last - first) << SHIFT, advice)
        except OSError:
            return False  # the slow path finds where and how it faults
        populated.set(first, last, level)
        self._hot = populated.run_at(first)
        return True

    def read_mem(self, addr: int, length: int) -> bytes:
        if length == 0:
            return b""
        if self._fast(addr, length, LOADABLE, "read_mem"):
            return libc.load(addr, length)
        self._check_range(addr, length, "read_mem")
        out = bytearray(length)
        done = libc.copy_from(addr, length, out)
        if done < length:
            raise self._signal_at(addr + done, write=False)
        return bytes(out)

    def write_mem(self, addr: int, data: bytes = b"", fill: int | None = None,
                  length: int | None = None) -> int:
        n = length if fill is not None and length is not None else len(data)
        if n == 0:
            return 0
        if self._fast(addr, n, STORABLE, "write_mem"):
            if fill is not None:
                ctypes.memset(addr, fill, n)
            else:
                ctypes.memmove(addr, data, n)
            return n
        self._check_range(addr, n, "write_mem")
        if fill is not None:
            done = self._fill(addr, n, fill)
        else:
            done = libc.copy_to(addr, data)
        if done < n:
            raise self._signal_at(addr + done, write=True)
        return n

    def _fill(self, addr: int, n: int, byte: int) -> int:
        chunk = min(n, 1 << 20)
        pattern = bytes([byte]) * chunk
        done = libc.copy_to(addr, pattern, n // chunk)
        if done == (n // chunk) * chunk and n % chunk:
            done += libc.copy_to(addr + done, pattern[:n % chunk])
        return done

    # --- NUMA memory policy ------------------------------------------------------------------

    def mbind(self, addr: int, len: int, mode: int, nodemask: Sequence[int] = (),
              maxnode: int = 0, flags: int = 0) -> int:
        size = (len + P - 1) & ~(P - 1) & ((1 << 64) - 1)
        if not addr & (P - 1) and size and addr + size <= 1 << 64:
            # Only a call the kernel could carry out needs the range to be ours.
            self._check_range(addr, size, "mbind")
        return libc.mbind(addr, len, mode, _user_nodemask(nodemask, maxnode), maxnode, flags)

    def get_mempolicy(self, maxnode: int = 64, addr: int = 0, flags: int = 0) -> Mempolicy:
        if flags & uapi.MPOL_F_ADDR:
            self._check_range(addr, 1, "get_mempolicy")
        words = None if maxnode == 0 else min(_mask_words(maxnode), MASK_WORDS_MAX)
        mode, mask = libc.get_mempolicy(words, maxnode, addr, flags)
        return Mempolicy(mode, tuple(mask))

    def set_mempolicy(self, mode: int, nodemask: Sequence[int] = (), maxnode: int = 0) -> int:
        if self._held.task_policy is None:
            # The thread's own policy, to give back when the case ends.
            old_mode, old_mask = libc.get_mempolicy(SAVED_WORDS, 64 * SAVED_WORDS + 1, 0, 0)
            self._held.task_policy = (old_mode, old_mask, threading.get_ident())
        return libc.set_mempolicy(mode, _user_nodemask(nodemask, maxnode), maxnode)

    # --- KVM -------------------------------------------------------------------------------

    def set_user_memory_region(self, vm: int, slot: int, flags: int, guest_phys_addr: int,
                               memory_size: int, userspace_addr: int = 0) -> int:
        buf = bytearray(uapi.KVM_USERSPACE_MEMORY_REGION_STRUCT.pack(
            slot, flags, guest_phys_addr, memory_size, userspace_addr))
        result = libc.ioctl_buf(self._fd(vm), uapi.KVM_SET_USER_MEMORY_REGION, buf)
        self._record_memslot(vm, slot, _Slot(guest_phys_addr, memory_size, userspace_addr))
        return result

    def set_user_memory_region2(self, vm: int, slot: int, flags: int, guest_phys_addr: int,
                                memory_size: int, userspace_addr: int = 0,
                                guest_memfd: int = -1, guest_memfd_offset: int = 0) -> int:
        buf = bytearray(uapi.KVM_USERSPACE_MEMORY_REGION2_STRUCT.pack(
            slot, flags, guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset,
            self._struct_fd(guest_memfd), 0, *([0] * 14)))
        if self._mask:
            self._masked_memslot(self._fd(vm), flags)
        result = libc.ioctl_buf(self._fd(vm), uapi.KVM_SET_USER_MEMORY_REGION2, buf)
        gmem = self._gmems.get(guest_memfd) if flags & uapi.KVM_MEM_GUEST_MEMFD else None
        self._record_memslot(vm, slot, _Slot(guest_phys_addr, memory_size, userspace_addr, gmem,
                                             guest_memfd_offset))
        return result

    def _record_memslot(self, vm: int, slot: int, new: _Slot) -> None:
        """A memslot call succeeded: remember the VM's slots for guest_access."""
        info = self._vms.get(vm)
        if info is None:
            return
        if new.size == 0:
            info.slots.pop(slot, None)
        else:
            info.slots[slot] = new

    def set_memory_attributes(self, vm: int, address: int, size: int, attributes: int,
                              flags: int = 0) -> int:
        buf = bytearray(uapi.KVM_MEMORY_ATTRIBUTES_STRUCT.pack(address, size, attributes, flags))
        result = libc.ioctl_buf(self._fd(vm), uapi.KVM_SET_MEMORY_ATTRIBUTES, buf)
        info = self._vms.get(vm)
        if info is not None:
            info.attributes.set(address >> SHIFT, (address + size) >> SHIFT, attributes)
        return result

    def set_memory_attributes2(self, fd: int, offset: int, size: int, attributes: int,
                               flags: int = 0) -> int:
        buf = bytearray(uapi.KVM_MEMORY_ATTRIBUTES2_STRUCT.pack(offset, size, attributes, flags, 0,
                                                                *[0] * 11))
        self._changed()  # a conversion to private zaps host page tables
        try:
            result = libc.ioctl_buf(self._fd(fd), uapi.KVM_SET_MEMORY_ATTRIBUTES2, buf)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ENOMEM):
                # The kernel wrote error_offset back into the struct.
                error_offset = uapi.KVM_MEMORY_ATTRIBUTES2_STRUCT.unpack(bytes(buf))[4]
                raise ConversionError(exc.errno, exc.strerror or "", error_offset) from None
            raise
        info = self._gmems.get(fd)
        if info is not None and info.attributes is not None:
            info.attributes.set(offset >> SHIFT, (offset + size) >> SHIFT, attributes)
        return result

    def _kvm_private(self, vm: _VmInfo, gfn: int) -> bool:
        """kvm_mem_is_private as the case's own calls left it."""
        if vm.type == uapi.KVM_X86_DEFAULT_VM:
            return False
        if not self._inplace():
            return bool(vm.attributes[gfn] & PRIVATE)
        for slot in vm.slots.values():
            first = slot.gpa >> SHIFT
            if first <= gfn < first + (slot.size >> SHIFT):
                if slot.gmem is None or slot.gmem.attributes is None:
                    return False
                return bool(slot.gmem.attributes[(slot.offset >> SHIFT) + gfn - first] & PRIVATE)
        return False

    def _private_ranges(self, vm: _VmInfo) -> list[tuple[int, int]]:
        """(gpa, size) of every gfn range KVM holds private, by the VM's attributes."""
        return [(s << SHIFT, (e - s) << SHIFT) for s, e, a in vm.attributes.runs() if a & PRIVATE]

    def enable_cap(self, vm: int, cap: int, args: Sequence[int] = (), flags: int = 0) -> int:
        if len(args) > 4:
            raise UsageError("enable_cap: at most 4 args")
        padded = list(args) + [0] * (4 - len(args))
        buf = bytearray(uapi.KVM_ENABLE_CAP_STRUCT.pack(cap, flags, *padded))
        return libc.ioctl_buf(self._fd(vm), uapi.KVM_ENABLE_CAP, buf)

    def create_vcpu(self, vm: int, id: int = 0) -> int:
        fd = self._adopt(libc.ioctl_int(self._fd(vm), uapi.KVM_CREATE_VCPU, id))
        info = self._vms.get(vm)
        if info is None:  # KVM_CREATE_VCPU succeeds on VM fds only
            return fd
        self._vcpus[fd] = _VcpuInfo(info, {fd})
        info.vcpus += 1
        if info.hidden_fd is None:
            info.hidden_fd = os.dup(vm)
            self._held.hidden.add(info.hidden_fd)
        return fd

    def guest_access(self, vcpu: int, gpa: int, length: int, write: bool = False,
                     private: bool | None = None, data: bytes = b"") -> GuestAccess:
        info = self._vcpus.get(self._fd(vcpu))
        if info is None:
            # Not a vCPU: KVM_RUN gives that fd's answer (ENOTTY, or EINVAL on /dev/kvm).
            libc.ioctl_int(vcpu, uapi.KVM_RUN, 0)
            raise kernel_error(errno.ENOTTY, f"fd {vcpu} is not a vCPU")
        check_call(info.vm.type != uapi.KVM_X86_DEFAULT_VM, info.vm.type, gpa, length, write,
                   private, data)
        check_private(info.vm.type, private, gpa, length,
                      lambda gfn: self._kvm_private(info.vm, gfn))
        if private and guest_chooses_private(info.vm.type):
            raise UsageError("guest_access: a private access of an SNP or TDX guest (C-bit, "
                             "shared bit in its page tables) is not implemented on the host")
        from ..vmm.vcpu import Vcpu
        from .guest import GuestRunner, VcpuState

        if not self._held.runner:
            self._held.runner.append(GuestRunner(self._kvm))
        runner = self._held.runner[0]
        if info.runner is None:
            info.runner = Vcpu(min(info.fds), runner.mmap_size)
            self._held.vcpus.append(info.runner)
        if info.state is None:
            info.state = VcpuState()
        vm = info.vm
        assert vm.hidden_fd is not None
        # KVM may load or store at userspace_addr for this access (always on
        # the emulator path): it must not be the interpreter's memory.
        for slot in vm.slots.values():
            lo, hi = max(gpa, slot.gpa), min(gpa + length, slot.gpa + slot.size)
            if lo < hi:
                self._check_range(slot.uaddr + lo - slot.gpa, hi - lo, "guest_access")
        used = {key & 0xFFFF for key in vm.slots if key >> 16 == 0}
        slot_id = next(i for i in range(uapi.KVM_USER_MEM_SLOTS - 1, -2, -1) if i not in used)
        if slot_id < 0:
            raise UsageError("guest_access: every memslot id is taken; gmemlab needs one for "
                             "its access program")
        return runner.access(info.runner, info.state, vm.hidden_fd, slot_id,
                             [(slot.gpa, slot.size) for slot in vm.slots.values()]
                             + self._private_ranges(vm), gpa, length,
                             write, data)

    def __repr__(self) -> str:
        return f"HostKernel({len(self._fds)} fds)"
