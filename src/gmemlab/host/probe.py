"""What the running kernel offers: probed once per process, asked by everything host-side.

Kernels differ in exactly the ways gmemlab cares about: no /dev/kvm at all;
KVM without guest_memfd (before Linux 6.8, or built without it); guest_memfd
that cannot be mapped (6.8 to 6.17); guest_memfd with MMAP and INIT_SHARED
(6.18); private VM types and per-VM memory attributes (x86 with
CONFIG_KVM_SW_PROTECTED_VM, SEV-SNP, TDX).  `profile()` asks the kernel once
and keeps the answer; the host kernel, the case runner, the fuzzer and the
commands read it instead of probing on their own.

A *mask* hides what the kernel has, so that every degraded path can be run on
a kernel that has more: `kvm` hides /dev/kvm, `guest_memfd` makes KVM behave
as one built without guest_memfd, `mmap` as guest_memfd did from 6.8 to 6.17
(no creation flags, so no mmap; guest_memfd memslots only on VMs with private
memory).  The mask comes from `set_mask()` (the commands' `--mask`) or the
environment variable GMEMLAB_HOST_MASK (a comma-separated list).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .. import libc, uapi
from ..errors import UsageError

KVM_DEV = "/dev/kvm"
MASK_ENV = "GMEMLAB_HOST_MASK"

# What each mask hides, in the words a user reads in the profile.
MASKS: dict[str, str] = {
    "kvm": "no /dev/kvm at all (a machine without KVM)",
    "guest_memfd": "KVM without guest_memfd (before Linux 6.8, or built without it)",
    "mmap": "guest_memfd without creation flags, so without mmap (Linux 6.8 to 6.17)",
}

# The capabilities the profile reads on /dev/kvm, in the order it shows them.
PROFILE_CAPS = ("VM_TYPES", "GUEST_MEMFD", "GUEST_MEMFD_FLAGS", "MEMORY_ATTRIBUTES",
                "GUEST_MEMFD_MEMORY_ATTRIBUTES", "USER_MEMORY2", "MEMORY_FAULT_INFO",
                "NR_MEMSLOTS", "EXIT_HYPERCALL")

# Capabilities a mask forces to zero on /dev/kvm.
_HIDDEN_CAPS = {
    "guest_memfd": frozenset({"GUEST_MEMFD", "GUEST_MEMFD_FLAGS", "GUEST_MEMFD_MEMORY_ATTRIBUTES"}),
    "mmap": frozenset({"GUEST_MEMFD_FLAGS", "GUEST_MEMFD_MEMORY_ATTRIBUTES"}),
}

_MASK: list[frozenset[str]] = []  # set_mask()'s choice; empty: the environment decides


def parse_mask(text: str | Iterable[str]) -> frozenset[str]:
    """A mask from its names ("guest_memfd,mmap", or a list); UsageError for an unknown one."""
    names = text.split(",") if isinstance(text, str) else list(text)
    out = frozenset(n.strip() for n in names if n.strip() and n.strip() != "none")
    unknown = sorted(out - set(MASKS))
    if unknown:
        raise UsageError(f"unknown mask {', '.join(unknown)} (known: none, {', '.join(MASKS)})")
    return out


def set_mask(mask: str | Iterable[str] | None) -> None:
    """Hide these capabilities from every host-side user in this process (None: the environment's)."""
    _MASK.clear()
    if mask is not None:
        _MASK.append(parse_mask(mask))


def active_mask() -> frozenset[str]:
    if _MASK:
        return _MASK[0]
    return parse_mask(os.environ.get(MASK_ENV, ""))


@dataclass(frozen=True)
class KernelProfile:
    """The running kernel as gmemlab sees it (after the mask)."""

    release: str
    mask: frozenset[str]
    kvm_missing: str | None  # why /dev/kvm cannot be used, or None
    api_version: int | None = None
    caps: dict[str, int] = field(default_factory=dict)  # KVM_CHECK_EXTENSION on /dev/kvm
    access_path: str | None = None  # "mmu" or "emulator"
    access_missing: str | None = None  # why guest accesses cannot run here
    max_map_count: int | None = None
    gmem_fs_magic: int | None = None  # statfs f_type of a guest_memfd, when one could be made
    numa_missing: str | None = None  # why mbind and get/set_mempolicy cannot run here
    numa_nodes: int | None = None  # online NUMA nodes

    @property
    def usable(self) -> bool:
        return self.kvm_missing is None

    def cap(self, name: str) -> int:
        return self.caps.get(name, 0)

    @property
    def vm_types(self) -> int:
        """Bit n set when VM type n can be created (only the default VM before KVM_CAP_VM_TYPES)."""
        if not self.usable:
            return 0
        return self.cap("VM_TYPES") or 1 << uapi.KVM_X86_DEFAULT_VM

    @property
    def has_guest_memfd(self) -> bool:
        return self.cap("GUEST_MEMFD") != 0

    @property
    def gmem_flags(self) -> int:
        return self.cap("GUEST_MEMFD_FLAGS")

    @property
    def design(self) -> str:
        """The model design whose guest_memfd behaves as this kernel's does.

        A guest_memfd that cannot be mapped is 6.8's (to 6.17); one that
        keeps memory attributes itself is the in-place series'; one that
        lives on the guest_memfd pseudo-filesystem (statfs magic "GMEM") came
        with 6.19's NUMA policy in one series, so it is 6.19's; else 6.18's.
        """
        if self.has_guest_memfd and not self.gmem_flags & uapi.GUEST_MEMFD_FLAG_MMAP:
            return "gmem-6.8"
        if self.cap("GUEST_MEMFD_MEMORY_ATTRIBUTES") & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE:
            return "inplace"
        if self.gmem_fs_magic == uapi.GUEST_MEMFD_MAGIC:
            return "gmem-6.19"
        return "gmem-6.18"

    @property
    def kind(self) -> str:
        """One phrase for the kernel's guest_memfd generation."""
        if not self.usable:
            return "no KVM"
        if not self.has_guest_memfd:
            return "KVM without guest_memfd"
        if not self.gmem_flags & uapi.GUEST_MEMFD_FLAG_MMAP:
            return "guest_memfd without mmap (as 6.8 to 6.17)"
        if self.design == "inplace":
            return "guest_memfd with in-place conversion"
        if self.design == "gmem-6.19":
            return "guest_memfd with mmap and NUMA policy (as 6.19)"
        return "guest_memfd with mmap (as 6.18)"

    def line(self) -> str:
        """The profile in one line, as `gmemlab run` prints it first."""
        head = f"kernel {self.release}"
        masked = f" [masked: {', '.join(sorted(self.mask))}]" if self.mask else ""
        if not self.usable:
            return f"{head}: no usable /dev/kvm ({self.kvm_missing}){masked}"
        flags = "|".join(n for n, bit in uapi.GUEST_MEMFD_FLAG_NAMES.items() if self.gmem_flags & bit) \
            or "none"
        types = ",".join(str(t) for t in range(32) if self.vm_types >> t & 1)
        guest = self.access_path or "none"
        return (f"{head}: {self.kind}; VM types {types}; guest_memfd flags {flags}; "
                f"memory attributes {self.cap('MEMORY_ATTRIBUTES'):#x}; guest accesses via "
                f"{guest}{masked}")

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, value, what it means for gmemlab) for every probed fact."""
        rows = [("kernel", self.release, ""),
                ("mask", ", ".join(sorted(self.mask)) or "none",
                 "; ".join(MASKS[m] for m in sorted(self.mask)) or "the kernel as it is")]
        if not self.usable:
            rows.append(("/dev/kvm", "unusable", f"{self.kvm_missing}: every case runs on the model "
                                                 "only; host tests and host fuzzing are skipped"))
            return rows
        rows.append(("/dev/kvm", f"API version {self.api_version}", "usable"))
        for name in PROFILE_CAPS:
            rows.append((f"KVM_CAP_{name}", _show(name, self.cap(name)), self._meaning(name)))
        rows.append(("guest access path", self.access_path or "none",
                     self.access_missing or _PATH_MEANING.get(self.access_path or "", "")))
        rows.append(("vm.max_map_count", str(self.max_map_count) if self.max_map_count else "unknown",
                     "VMAs one process may have: page-granular sharing stops there"))
        rows.append(("NUMA", "unavailable" if self.numa_missing else
                     f"{self.numa_nodes or '?'} node(s) online",
                     self.numa_missing or "mbind, get_mempolicy and set_mempolicy run here (the "
                     "model has one node: cases name node 0, or nodes no machine has)"))
        if self.has_guest_memfd:
            fs = {uapi.GUEST_MEMFD_MAGIC: "guest_memfd pseudo-filesystem (6.19 and later)",
                  uapi.ANON_INODE_FS_MAGIC: "anon-inode filesystem (before 6.19)"}
            rows.append(("guest_memfd filesystem",
                         f"{self.gmem_fs_magic:#x}" if self.gmem_fs_magic is not None else "unknown",
                         fs.get(self.gmem_fs_magic or 0, "not probed")))
        rows.append(("model design compared", self.design,
                     "the host's results are compared with the model under this design"))
        return rows

    def _meaning(self, name: str) -> str:
        value = self.cap(name)
        if name == "VM_TYPES":
            if self.vm_types & ~1:
                return "VM types with private memory exist: their cases run here"
            return ("only the default VM: cases that create a VM with private memory "
                    "(SW_PROTECTED, SNP, TDX) are not applicable here")
        if name == "GUEST_MEMFD":
            return "guest_memfd exists" if value else \
                "no guest_memfd: cases that create one are not applicable here"
        if name == "GUEST_MEMFD_FLAGS":
            if not self.has_guest_memfd:
                return "no guest_memfd"
            missing = [n for n, bit in (("MMAP", uapi.GUEST_MEMFD_FLAG_MMAP),
                                        ("INIT_SHARED", uapi.GUEST_MEMFD_FLAG_INIT_SHARED))
                       if not value & bit]
            if not missing:
                return "guest_memfd can be mapped and start shared"
            return (f"no {' or '.join(missing)}: cases that create a guest_memfd with "
                    f"{'/'.join(missing)} are not applicable; the host is compared with "
                    f"design {self.design}")
        if name == "MEMORY_ATTRIBUTES":
            return "KVM_SET_MEMORY_ATTRIBUTES exists" if value else \
                ("no KVM_SET_MEMORY_ATTRIBUTES: cases that set attributes are not applicable "
                 "(those that expect its ENOTTY still run)")
        if name == "GUEST_MEMFD_MEMORY_ATTRIBUTES":
            return ("guest_memfd keeps its own attributes (in-place conversion): compared with "
                    "design inplace") if value else \
                ("no in-place conversion: cases that convert a guest_memfd "
                 "(KVM_SET_MEMORY_ATTRIBUTES2) are not applicable")
        if name == "USER_MEMORY2":
            return "KVM_SET_USER_MEMORY_REGION2 exists" if value else \
                "no KVM_SET_USER_MEMORY_REGION2: cases that use it are not applicable"
        if name == "MEMORY_FAULT_INFO":
            return "memory-fault exits report gpa, size and flags" if value else \
                "no memory-fault exits: cases that expect one are not applicable"
        if name == "NR_MEMSLOTS":
            return "memslots per address space"
        if name == "EXIT_HYPERCALL":
            return "hypercalls userspace can ask to see" if value else \
                "no hypercall exits to userspace"
        return ""


_PATH_MEANING = {
    "mmu": "guest accesses go through KVM's MMU: cases that require guest:emulator are "
           "not applicable here",
    "emulator": "guest accesses run in KVM's instruction emulator: cases that require "
                "guest:mmu are not applicable here",
}


def _show(name: str, value: int) -> str:
    if name in ("VM_TYPES", "GUEST_MEMFD_FLAGS", "MEMORY_ATTRIBUTES", "GUEST_MEMFD_MEMORY_ATTRIBUTES",
                "EXIT_HYPERCALL"):
        return f"{value:#x}"
    return str(value)


def kvm_missing(mask: frozenset[str] | None = None) -> str | None:
    """Why /dev/kvm cannot be used here, or None (cheap: no guest is run)."""
    mask = active_mask() if mask is None else mask
    if "kvm" in mask:
        return "hidden by the mask 'kvm'"
    try:
        fd = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {KVM_DEV}: {exc.strerror}"
    try:
        version = libc.ioctl_int(fd, uapi.KVM_GET_API_VERSION, 0)
    except OSError as exc:
        return f"KVM_GET_API_VERSION failed: {exc.strerror}"
    finally:
        os.close(fd)
    if version != uapi.KVM_API_VERSION:
        return f"KVM API version {version}, expected {uapi.KVM_API_VERSION}"
    return None


def masked_cap(mask: frozenset[str], name: str, value: int) -> int:
    """What KVM_CHECK_EXTENSION(name) on /dev/kvm answers under the mask."""
    if any(name in _HIDDEN_CAPS.get(m, ()) for m in mask):
        return 0
    return value


def profile() -> KernelProfile:
    """The running kernel's profile under the active mask (probed once per mask)."""
    return _probe(active_mask())


def reset() -> None:
    """Forget every probed profile (tests that change what the kernel shows)."""
    _probe.cache_clear()


@functools.cache
def _probe(mask: frozenset[str]) -> KernelProfile:
    release = os.uname().release
    missing = kvm_missing(mask)
    numa_missing, numa_nodes = _numa()
    if missing is not None:
        return KernelProfile(release=release, mask=mask, kvm_missing=missing,
                             access_missing="no usable /dev/kvm", max_map_count=_max_map_count(),
                             numa_missing=numa_missing, numa_nodes=numa_nodes)
    fd = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
    try:
        version = libc.ioctl_int(fd, uapi.KVM_GET_API_VERSION, 0)
        caps = {name: masked_cap(mask, name, _check(fd, uapi.CAPS[name])) for name in PROFILE_CAPS}
        magic = _gmem_fs_magic(fd) if caps["GUEST_MEMFD"] else None
    finally:
        os.close(fd)
    partial = KernelProfile(release=release, mask=mask, kvm_missing=None, api_version=version,
                            caps=caps, max_map_count=_max_map_count(), gmem_fs_magic=magic)
    path, why = _access_path(partial)
    return replace(partial, access_path=path, access_missing=why, numa_missing=numa_missing,
                   numa_nodes=numa_nodes)


def _check(fd: int, cap: int) -> int:
    try:
        return libc.ioctl_int(fd, uapi.KVM_CHECK_EXTENSION, cap)
    except OSError:
        return 0


def _gmem_fs_magic(kvm_fd: int) -> int | None:
    """The statfs magic of the filesystem a guest_memfd lives on (None if none can be made)."""
    try:
        vm = libc.ioctl_int(kvm_fd, uapi.KVM_CREATE_VM, uapi.KVM_X86_DEFAULT_VM)
    except OSError:
        return None
    try:
        buf = bytearray(uapi.KVM_CREATE_GUEST_MEMFD_STRUCT.pack(uapi.PAGE_SIZE, 0, *[0] * 6))
        gmem = libc.ioctl_buf(vm, uapi.KVM_CREATE_GUEST_MEMFD, buf)
        try:
            return libc.fstatfs_type(gmem)
        finally:
            os.close(gmem)
    except OSError:
        return None
    finally:
        os.close(vm)


def _numa() -> tuple[str | None, int | None]:
    """Why the NUMA policy calls cannot run here (None if they can), and the online nodes."""
    try:
        libc.get_mempolicy(None, 0, 0, 0)
    except OSError as exc:
        why = {errno.ENOSYS: "the kernel is built without NUMA (CONFIG_NUMA): mbind, "
                             "get_mempolicy and set_mempolicy are ENOSYS",
               errno.EPERM: "the NUMA policy calls are forbidden here (EPERM, a seccomp "
                            "filter?)"}
        return why.get(exc.errno or 0, f"get_mempolicy fails: {exc.strerror}"), None
    try:
        with open("/sys/devices/system/node/online") as fh:
            text = fh.read().strip()
    except OSError:
        return None, None
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1 if lo.strip().isdigit() else 0
    return None, count or None


def _max_map_count() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _access_path(partial: KernelProfile) -> tuple[str | None, str | None]:
    """Who executes a guest access here, or why no guest can run."""
    from ..vmm import asm
    from ..vmm.errors import VmmError

    why = asm.missing_reason()
    if why is not None:
        return None, why
    try:
        return probe_access_path(partial.has_guest_memfd), None
    except (OSError, VmmError, UsageError) as exc:
        return None, f"the guest-path probe failed: {exc}"


def probe_access_path(has_guest_memfd: bool) -> str:
    """Who executes a guest access on this kernel: "mmu" or "emulator".

    With guest_memfd, a guest reads a guest_memfd-only memslot whose
    userspace_addr maps a memfd page of 0x5a: the MMU path is served by
    guest_memfd (zero), the emulator reads userspace_addr (guestaccess.py).
    Without it, the guest reads an ordinary memslot whose userspace_addr is
    mapped PROT_NONE: the emulator's copy from userspace fails and becomes an
    MMIO exit, the MMU's fault on that address fails KVM_RUN with EFAULT.
    The raw ioctls are made here (not through HostKernel, which asks the
    profile this fills in).
    """
    from ..vmm.errors import VmmError
    from ..vmm.vcpu import Vcpu
    from .guest import GuestRunner, VcpuState

    page, gpa = uapi.PAGE_SIZE, 1 << 20
    rw = uapi.PROT_READ | uapi.PROT_WRITE
    fds: list[int] = []
    addr = 0
    kvm = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
    fds.append(kvm)
    runner = GuestRunner(kvm)
    try:
        vm = libc.ioctl_int(kvm, uapi.KVM_CREATE_VM, 0)
        fds.append(vm)
        memfd = os.memfd_create("gmemlab-probe", os.MFD_CLOEXEC)
        fds.append(memfd)
        os.ftruncate(memfd, page)
        addr = libc.mmap(0, page, rw, uapi.MAP_SHARED, memfd, 0)
        ctypes.memset(addr, 0x5A, page)
        if has_guest_memfd:
            gmem = libc.ioctl_buf(vm, uapi.KVM_CREATE_GUEST_MEMFD, bytearray(
                uapi.KVM_CREATE_GUEST_MEMFD_STRUCT.pack(
                    page, uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED,
                    *[0] * 6)))
            fds.append(gmem)
            libc.ioctl_buf(vm, uapi.KVM_SET_USER_MEMORY_REGION2, bytearray(
                uapi.KVM_USERSPACE_MEMORY_REGION2_STRUCT.pack(
                    0, uapi.KVM_MEM_GUEST_MEMFD, gpa, page, addr, 0, gmem, 0, *([0] * 14))))
        else:
            libc.mprotect(addr, page, uapi.PROT_NONE)
            libc.ioctl_buf(vm, uapi.KVM_SET_USER_MEMORY_REGION, bytearray(
                uapi.KVM_USERSPACE_MEMORY_REGION_STRUCT.pack(0, 0, gpa, page, addr)))
        with Vcpu.create(vm, 0, kvm) as vcpu:
            try:
                result = runner.access(vcpu, VcpuState(), vm, uapi.KVM_USER_MEM_SLOTS - 1,
                                       [(gpa, page)], gpa, 1, False, b"")
            except OSError as exc:
                if exc.errno == errno.EFAULT and not has_guest_memfd:
                    return "mmu"
                raise
    finally:
        runner.close()
        if addr:
            libc.munmap(addr, page)
        for fd in reversed(fds):
            os.close(fd)
    if has_guest_memfd and result.exit == "none":
        paths = {"00": "mmu", "5a": "emulator"}
        if result.data_hex in paths:
            return paths[result.data_hex]
    if not has_guest_memfd and result.exit in ("mmio", "memory_fault"):
        return "emulator" if result.exit == "mmio" else "mmu"
    raise VmmError(f"cannot tell how this kernel runs guest accesses: the probe gave {result}")
