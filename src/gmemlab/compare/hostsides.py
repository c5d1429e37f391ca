"""Host sides: what a VMM does for a guest's share and unshare requests.

A host side is one way of serving a guest's conversions with the operations
a design offers, written against the public kernel interface only (the
operations of `interface.Kernel` and `interface.ModelOnly`), never against a
design's internals.  Which host side a design gets is found by trying them
(counting.py's trial): the first one whose semantics hold on a small guest
is the design's.  So a design added to the model later is compared without
a line here, as long as one of these ways works on it, and a design on which
none works is reported with each way's reason.

==================  ===================================================================
``in-place``        one guest_memfd (MMAP), mapped once; conversions on the file
                    (KVM_SET_MEMORY_ATTRIBUTES2); an unshare the kernel defers
                    (pkvm-inplace) is completed by dropping the host's PTEs
``kvm-map``         a restricted memfd; KVM maps each shared range for the host
                    (kvm_map_shared) and zaps it at conversion
``page-mmap``       a restricted memfd mmapped and munmapped range by range at its
                    canonical address
``whole-file``      a restricted memfd mapped whole, once every gfn is shared (the
                    2022 proposal)
``memslot-per-unit`` the proposal's workaround: one restricted memfd and memslot per
                    granule of guest memory, each mapped whole when shared
``separate``        shared memory is another file (a memfd at the memslot's
                    userspace_addr); a conversion discards the other side's copy
                    (guest_memfd as merged, and every CVM VMM today)
==================  ===================================================================
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from .. import uapi
from ..errors import MemorySignal

P = uapi.PAGE_SIZE
GPA_BASE = 0x80000000  # guest RAM at 2 GiB, as on arm64 virt machines
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
RW = uapi.PROT_READ | uapi.PROT_WRITE
PUNCH = uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE
KEEP = uapi.FALLOC_FL_KEEP_SIZE
MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23
# Refusals that are a kernel limit rather than a conversion refused.
MAP_LIMIT = "vm.max_map_count"
SLOT_LIMIT = "memslots"


class Unsupported(Exception):
    """The design cannot serve the workload this way (the message says why)."""


class Refused(Exception):
    """One request the host side could not carry out (an errno or a limit)."""

    def __init__(self, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit


# What an errno means for a host side, where the bare errno would not say.
HINTS = {
    ("mmap", errno.EPERM): "the file cannot be mapped while a gfn bound to it is private",
    ("mmap", errno.EINVAL): "the file can only be mapped whole (offset 0, its whole size)",
    ("mmap", errno.ENODEV): "the file has no mmap",
    ("kvm_map_shared", errno.ENOTTY): "KVM has no such mapping ioctl here",
    ("set_memory_attributes2", errno.ENOTTY): "no conversion on the file in this design",
    ("set_memory_attributes", errno.ENOTTY): "no per-VM memory attributes in this design",
    ("memfd_restricted", errno.ENOSYS): "no restricted memfd in this design",
    ("create_guest_memfd", errno.ENOTTY): "no guest_memfd in this design",
}


def describe(op: str, exc: BaseException) -> str:
    if isinstance(exc, MemorySignal):
        return f"{op}: {exc.signal_name}"
    if isinstance(exc, OSError):
        hint = HINTS.get((op, exc.errno or 0))
        return f"{op}: {uapi.errno_name(exc.errno or 0)}" + (f" ({hint})" if hint else "")
    return f"{op}: {exc}"


def refused(op: str, exc: OSError) -> Refused:
    limit = MAP_LIMIT if exc.errno == errno.ENOMEM and op in (
        "mmap", "munmap", "mprotect", "kvm_map_shared") else None
    return Refused(describe(op, exc), limit)


class HostSide(ABC):
    """One way of serving conversions; subclasses fill in the operations."""

    name: ClassVar[str] = ""
    about: ClassVar[str] = ""

    def __init__(self, k: Any, vm_type: int, memory: int, unit: int = P) -> None:
        self.k = k
        self.vm_type = vm_type
        self.memory = memory
        self.unit = unit
        self.vm = -1

    def setup(self) -> None:
        try:
            self.vm = self.k.create_vm(self.vm_type)
        except OSError as exc:
            raise Unsupported(f"create_vm({self.vm_type:#x}): {uapi.errno_name(exc.errno or 0)}: "
                              "the design has no such VM type") from None

    # --- what every host side answers ---------------------------------------------------

    @abstractmethod
    def share(self, first: int, npages: int) -> None:
        """The guest shares pages [first, first + npages) with the host."""

    @abstractmethod
    def unshare(self, first: int, npages: int) -> None:
        """The guest takes pages [first, first + npages) back."""

    @abstractmethod
    def discard(self, first: int, npages: int) -> None:
        """The guest gives pages [first, first + npages) back (balloon, discard)."""

    @abstractmethod
    def allocate(self, first: int, npages: int) -> None:
        """Pages [first, first + npages) are backed again."""

    @abstractmethod
    def host_address(self, page: int) -> int | None:
        """Where host userspace reaches guest page `page` now, if anywhere."""

    @abstractmethod
    def private_file(self, page: int) -> tuple[int, int]:
        """(fd, page index) of the file holding the guest's private page."""

    def gpa(self, page: int) -> int:
        return GPA_BASE + page * P

    # --- helpers ---------------------------------------------------------------------------

    def _setup_call(self, op: str, *args: Any) -> Any:
        try:
            return getattr(self.k, op)(*args)
        except (OSError, MemorySignal) as exc:
            raise Unsupported(describe(op, exc)) from None

    def _call(self, op: str, *args: Any) -> Any:
        try:
            return getattr(self.k, op)(*args)
        except OSError as exc:
            raise refused(op, exc) from None

    def _private_everywhere(self) -> None:
        """A protected guest's memory is private from boot."""
        self._setup_call("set_memory_attributes", self.vm, GPA_BASE, self.memory, PRIVATE)

    def _convert(self, first: int, npages: int, attributes: int) -> None:
        self._call("set_memory_attributes", self.vm, self.gpa(first), npages * P, attributes)


class RestrictedFile(HostSide):
    """Host sides over one restricted memfd bound to one memslot."""

    def setup(self) -> None:
        super().setup()
        self.f = self._setup_call("memfd_restricted", 0)
        self._setup_call("ftruncate", self.f, self.memory)
        self._setup_call("set_user_memory_region2", self.vm, 0, uapi.KVM_MEM_GUEST_MEMFD,
                         GPA_BASE, self.memory, 0, self.f, 0)
        self._private_everywhere()
        self.base: int | None = None  # host address of file offset 0, once known

    def host_address(self, page: int) -> int | None:
        return None if self.base is None else self.base + page * P

    def private_file(self, page: int) -> tuple[int, int]:
        return self.f, page

    def discard(self, first: int, npages: int) -> None:
        self._call("fallocate", self.f, PUNCH, first * P, npages * P)

    def allocate(self, first: int, npages: int) -> None:
        self._call("fallocate", self.f, KEEP, first * P, npages * P)


class PageMmap(RestrictedFile):
    name = "page-mmap"
    about = "mmap each shared range of the restricted memfd at its canonical address, munmap it first"

    def share(self, first: int, npages: int) -> None:
        self._convert(first, npages, 0)
        addr = self._call("mmap", self.f, npages * P, RW, uapi.MAP_SHARED, first * P)
        self.base = addr - first * P

    def unshare(self, first: int, npages: int) -> None:
        addr = self.host_address(first)
        if addr is not None:
            self._call("munmap", addr, npages * P)
        self._convert(first, npages, PRIVATE)


class KvmMap(RestrictedFile):
    name = "kvm-map"
    about = "KVM maps each shared range for the host (kvm_map_shared); a conversion zaps it"

    def share(self, first: int, npages: int) -> None:
        self._convert(first, npages, 0)
        addr = self._call("kvm_map_shared", self.vm, self.gpa(first), npages * P)
        self.base = addr - first * P

    def unshare(self, first: int, npages: int) -> None:
        self._convert(first, npages, PRIVATE)


class WholeFile(RestrictedFile):
    name = "whole-file"
    about = "map the restricted memfd whole, as soon as the kernel allows it (every gfn shared)"

    def share(self, first: int, npages: int) -> None:
        self._convert(first, npages, 0)
        if self.base is None:
            self.base = self._call("mmap", self.f, self.memory, RW, uapi.MAP_SHARED)

    def unshare(self, first: int, npages: int) -> None:
        if self.base is not None:
            self._call("munmap", self.base, self.memory)
            self.base = None
        self._convert(first, npages, PRIVATE)


class MemslotPerUnit(HostSide):
    name = "memslot-per-unit"
    about = ("one restricted memfd and memslot per granule of guest memory, each mapped whole "
             "once shared (the 2022 proposal's answer to page-granular sharing)")

    def setup(self) -> None:
        super().setup()
        units = self.memory // self.unit
        limit = self._setup_call("check_extension", uapi.KVM_CAP_NR_MEMSLOTS, self.vm)
        if units > limit:
            raise Unsupported(f"one memslot per {self.unit // 1024} KiB of "
                              f"{self.memory >> 20} MiB needs {units} memslots; KVM allows {limit}")
        self.upages = self.unit // P
        self.files: list[int] = []
        self.addrs: dict[int, int] = {}
        # Shared accesses go through userspace_addr, fixed at memslot creation: each
        # unit's mapping will be made exactly there (MAP_FIXED) once the unit is shared.
        for u in range(units):
            fd = self._setup_call("memfd_restricted", 0)
            self._setup_call("ftruncate", fd, self.unit)
            self._setup_call("set_user_memory_region2", self.vm, u, uapi.KVM_MEM_GUEST_MEMFD,
                             self.gpa(u * self.upages), self.unit, self._view(u), fd, 0)
            self.files.append(fd)
        self._private_everywhere()

    VIEW = 0x100000000000  # where the VMM maps the units, one after the other

    def _view(self, u: int) -> int:
        return self.VIEW + u * self.unit

    def _units(self, first: int, npages: int) -> range:
        if first % self.upages or npages % self.upages:
            raise Refused(f"a request of {npages} pages at page {first} is not a whole memslot "
                          f"unit of {self.upages} pages")
        return range(first // self.upages, (first + npages) // self.upages)

    def share(self, first: int, npages: int) -> None:
        for u in self._units(first, npages):
            self._convert(u * self.upages, self.upages, 0)
            self.addrs[u] = self._call("mmap", self.files[u], self.unit, RW,
                                       uapi.MAP_SHARED | uapi.MAP_FIXED, 0, self._view(u))

    def unshare(self, first: int, npages: int) -> None:
        for u in self._units(first, npages):
            if u in self.addrs:
                self._call("munmap", self.addrs.pop(u), self.unit)
            self._convert(u * self.upages, self.upages, PRIVATE)

    def discard(self, first: int, npages: int) -> None:
        for u in self._units(first, npages):
            self._call("fallocate", self.files[u], PUNCH, 0, self.unit)

    def allocate(self, first: int, npages: int) -> None:
        for u in self._units(first, npages):
            self._call("fallocate", self.files[u], KEEP, 0, self.unit)

    def host_address(self, page: int) -> int | None:
        addr = self.addrs.get(page // self.upages)
        return None if addr is None else addr + (page % self.upages) * P

    def private_file(self, page: int) -> tuple[int, int]:
        return self.files[page // self.upages], page % self.upages


class InPlace(HostSide):
    name = "in-place"
    about = "one guest_memfd mapped once; conversions on the file (KVM_SET_MEMORY_ATTRIBUTES2)"

    def setup(self) -> None:
        super().setup()
        flags = self._setup_call("check_extension", uapi.KVM_CAP_GUEST_MEMFD_FLAGS, self.vm)
        if not flags & uapi.GUEST_MEMFD_FLAG_MMAP:
            raise Unsupported("guest_memfd has no MMAP flag here: the host maps nothing")
        self.f = self._setup_call("create_guest_memfd", self.vm, self.memory,
                                  uapi.GUEST_MEMFD_FLAG_MMAP)
        self._setup_call("set_user_memory_region2", self.vm, 0, uapi.KVM_MEM_GUEST_MEMFD,
                         GPA_BASE, self.memory, 0, self.f, 0)
        self.base = self._setup_call("mmap", self.f, self.memory, RW, uapi.MAP_SHARED)

    def share(self, first: int, npages: int) -> None:
        self._call("set_memory_attributes2", self.f, first * P, npages * P, 0)

    def unshare(self, first: int, npages: int) -> None:
        self._call("set_memory_attributes2", self.f, first * P, npages * P, PRIVATE)
        if self.k.page_attr(self.f, first) != "private":
            # The kernel waits for the host's last reference (pkvm-inplace): drop it.
            self._call("madvise", self.base + first * P, npages * P, uapi.MADV_DONTNEED)

    def discard(self, first: int, npages: int) -> None:
        self._call("fallocate", self.f, PUNCH, first * P, npages * P)

    def allocate(self, first: int, npages: int) -> None:
        self._call("fallocate", self.f, KEEP, first * P, npages * P)

    def host_address(self, page: int) -> int | None:
        return int(self.base) + page * P

    def private_file(self, page: int) -> tuple[int, int]:
        return self.f, page


class Separate(HostSide):
    name = "separate"
    about = ("shared memory in a memfd at the memslot's userspace_addr, private in the design's "
             "private file; each conversion discards the other copy")

    def setup(self) -> None:
        super().setup()
        try:
            self.priv = self.k.create_guest_memfd(self.vm, self.memory, 0)
        except OSError:
            self.priv = self._setup_call("memfd_restricted", 0)
            self._setup_call("ftruncate", self.priv, self.memory)
        self.shared = self._setup_call("memfd_create", "shared", 0)
        self._setup_call("ftruncate", self.shared, self.memory)
        self.base = self._setup_call("mmap", self.shared, self.memory, RW, uapi.MAP_SHARED)
        self._setup_call("set_user_memory_region2", self.vm, 0, uapi.KVM_MEM_GUEST_MEMFD,
                         GPA_BASE, self.memory, self.base, self.priv, 0)
        self._private_everywhere()

    def share(self, first: int, npages: int) -> None:
        self._convert(first, npages, 0)
        self._call("fallocate", self.priv, PUNCH, first * P, npages * P)

    def unshare(self, first: int, npages: int) -> None:
        self._convert(first, npages, PRIVATE)
        self._call("fallocate", self.shared, PUNCH, first * P, npages * P)

    def discard(self, first: int, npages: int) -> None:
        self._call("fallocate", self.priv, PUNCH, first * P, npages * P)
        self._call("fallocate", self.shared, PUNCH, first * P, npages * P)

    def allocate(self, first: int, npages: int) -> None:
        self._call("fallocate", self.priv, KEEP, first * P, npages * P)

    def host_address(self, page: int) -> int | None:
        return int(self.base) + page * P

    def private_file(self, page: int) -> tuple[int, int]:
        return self.priv, page


# In the order they are tried: sharing in place first, a separate copy last.
HOST_SIDES: tuple[type[HostSide], ...] = (InPlace, KvmMap, PageMmap, WholeFile, MemslotPerUnit,
                                          Separate)
BY_NAME = {cls.name: cls for cls in HOST_SIDES}
