"""A pKVM guest shares its restricted DMA pool page by page, under any design.

The situation of Fuad Tabba's 2022 objection (docs/DESIGNS.md, page-mmap): at
boot a protected guest's memory is private, owned by the guest at EL2.  Its
swiotlb restricted DMA pool is then shared with the host one granule at a
time (set_memory_decrypted issues one MEM_SHARE per page), and later some
pages are taken back (MEM_UNSHARE).  For each page the VMM does what the
design offers:

========================  ==========================================================
design                    the VMM's answer to a MEM_SHARE / MEM_UNSHARE of one page
========================  ==========================================================
seed, seed-as-written     convert the gfn; try to map the whole file (refused until
                          every gfn of the memslot is shared)
page-mmap                 convert, then mmap the page at its canonical address /
                          munmap the page, then convert
kvm-map                   convert, then kvm_map_shared the page / convert (KVM zaps)
gmem-6.8                  convert (destructive; guest_memfd has no mmap at all)
gmem-6.18                 convert; the file is mapped once, but a VM with private
                          memory cannot have an INIT_SHARED file, so faults SIGBUS
inplace                   set_memory_attributes2 on the mapped file
pkvm-inplace              the same; a page the host still maps waits (none_shared)
                          until the VMM drops it with MADV_DONTNEED
========================  ==========================================================

After each share the guest writes a marker through its shared view and the
host reads it back through its mapping (and answers with its own), which
shows whether the page is really shared in place; after each unshare the
host must no longer reach the page.  The VMM's cost comes from the model's
one cost API (ModelKernel.costs()), measured around each phase.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import uapi
from ..errors import MemorySignal, UsageError
from ..interface import Costs
from ..model import ModelKernel
from ..model.policies import MapScope, PrivateFile

P = uapi.PAGE_SIZE
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
RW = uapi.PROT_READ | uapi.PROT_WRITE
GUEST_BASE_GFN = 0x80000  # guest RAM at 2 GiB, as on arm64 virt machines


@dataclass
class PoolResult:
    """What sharing the pool cost and achieved under one design."""

    design: str
    pool_pages: int
    given_back: int  # pages the guest unshared afterwards
    host_reached: int = 0  # shared pages the host could read and write through a mapping
    in_place: int = 0  # of those, pages where host and guest saw each other's bytes
    withdrawn: int = 0  # unshared pages the host could no longer touch
    contents_kept: int = 0  # unshared pages whose bytes the guest still had, privately
    share_cost: Costs = field(default_factory=Costs)
    unshare_cost: Costs = field(default_factory=Costs)
    vmas_shared: int = 0  # VMAs once the whole pool was shared
    vmas_after: int = 0  # VMAs once the pages were given back
    failures: Counter[str] = field(default_factory=Counter)  # refusals the VMM met

    @property
    def works(self) -> bool:
        return (self.host_reached == self.in_place == self.pool_pages
                and self.withdrawn == self.contents_kept == self.given_back)

    @property
    def verdict(self) -> str:
        if self.works:
            return "works"
        if not self.host_reached:
            top = ", ".join(f"{k} x{n}" for k, n in self.failures.most_common(2))
            return f"the host reaches no pool page ({top})"
        if self.in_place < self.host_reached:
            return "the host's pages are not the guest's (not in place)"
        return (f"{self.host_reached}/{self.pool_pages} reached, "
                f"{self.withdrawn}/{self.given_back} withdrawn")


class _Vmm:
    """The VMM of one design, speaking to the model through the interface."""

    def __init__(self, design: str, slot_pages: int, pool_first: int) -> None:
        self.k = ModelKernel(design)
        k, d = self.k, self.k.design
        self.vm = k.create_vm(uapi.MODEL_PKVM_VM)
        self.cpu = k.create_vcpu(self.vm, 0)
        self.pool_first = pool_first
        self.addr: dict[int, int] = {}  # page index -> host address of its mapping
        self.whole: int | None = None  # a mapping of the whole file
        self.failures: Counter[str] = Counter()
        size = slot_pages * P
        if d.kvm.private_file is PrivateFile.RESTRICTED:
            self.f = k.memfd_restricted(0)
            k.ftruncate(self.f, size)
        else:
            flags = d.gmem_flags(uapi.MODEL_PKVM_VM) & uapi.GUEST_MEMFD_FLAG_MMAP
            self.f = k.create_guest_memfd(self.vm, size, flags)
        k.set_user_memory_region2(self.vm, 0, uapi.KVM_MEM_GUEST_MEMFD, GUEST_BASE_GFN * P, size,
                                  0, self.f, 0)
        if d.vm_attributes(uapi.MODEL_PKVM_VM):
            k.set_memory_attributes(self.vm, GUEST_BASE_GFN * P, size, PRIVATE)  # private from boot
        if d.kvm.private_file is PrivateFile.GUEST_MEMFD and \
                self._try(k.mmap, self.f, size, RW, uapi.MAP_SHARED):
            self.whole = self._last

    _last: Any = None  # what the last successful _try returned

    def _try(self, fn: object, *args: object) -> bool:
        """Call fn; count a refusal by its errno or signal name."""
        try:
            self._last = fn(*args)  # type: ignore[operator]
        except OSError as exc:
            self.failures[f"{getattr(fn, '__name__', fn)}: {uapi.errno_name(exc.errno or 0)}"] += 1
            return False
        except MemorySignal as sig:
            self.failures[f"{getattr(fn, '__name__', fn)}: {sig.signal_name}"] += 1
            return False
        return True

    def gfn(self, i: int) -> int:
        return GUEST_BASE_GFN + self.pool_first + i

    def boot(self, pool_pages: int) -> None:
        """KVM faults the pool's pages in for the guest: each donated at EL2."""
        for i in range(pool_pages):
            index = self.pool_first + i
            pfn = self.k.get_pfn(self.f, index)
            self.k.pkvm_host_donate_guest(pfn, self.gfn(i), self.vm)
            self.k.put_pfn(self.f, index)

    def convert(self, i: int, attributes: int) -> bool:
        k, index = self.k, self.pool_first + i
        if k.design.conversion.in_place:
            return self._try(k.set_memory_attributes2, self.f, index * P, P, attributes)
        return self._try(k.set_memory_attributes, self.vm, self.gfn(i) * P, P, attributes)

    def host_address(self, i: int) -> int | None:
        index = self.pool_first + i
        if index in self.addr:
            return self.addr[index]
        return self.whole + index * P if self.whole is not None else None

    def on_share(self, i: int) -> None:
        k, index, mode = self.k, self.pool_first + i, self.k.design.mapping.scope
        self._try(k.pkvm_guest_share_host, self.vm, self.gfn(i))
        if not self.convert(i, 0):
            return
        if k.design.kvm.private_file is not PrivateFile.RESTRICTED:
            return
        if mode is not MapScope.WHOLE_FILE:
            mapped = (self._try(k.mmap, self.f, P, RW, uapi.MAP_SHARED, index * P)
                      if mode is MapScope.PAGES
                      else self._try(k.kvm_map_shared, self.vm, self.gfn(i) * P, P))
            if mapped:
                self.addr[index] = self._last
        elif self.whole is None:
            size = k.file_state(self.f).size
            if self._try(k.mmap, self.f, size, RW, uapi.MAP_SHARED):
                self.whole = self._last

    def on_unshare(self, i: int) -> None:
        """The host gives the page up; only then does the hypervisor carry out
        the guest's MEM_UNSHARE (otherwise the guest hears that it failed)."""
        k, index = self.k, self.pool_first + i
        if k.design.mapping.scope is MapScope.PAGES and index in self.addr:
            # page-mmap: no VMA may cover a private page.
            if not self._try(k.munmap, self.addr[index], P):
                return
            del self.addr[index]
        if not self.convert(i, PRIVATE):
            return
        if k.design.conversion.defers and k.page_attr(self.f, index) == "none_shared":
            # pkvm-inplace: the host lets go; the last reference completes the unshare.
            host = self.host_address(i)
            if host is None or not self._try(k.madvise, host, P, uapi.MADV_DONTNEED) \
                    or k.page_attr(self.f, index) != "private":
                return
        self._try(k.pkvm_guest_unshare_host, self.vm, self.gfn(i))

    def exchange(self, i: int) -> tuple[bool, bool]:
        """The guest writes a marker through its shared view, the host reads
        it and answers; (host reached the page, both saw each other)."""
        k, host = self.k, self.host_address(i)
        mark = bytes([0xA0 | i & 0xF, i >> 4 & 0xFF, 0x5A])
        guest = k.guest_access(self.cpu, self.gfn(i) * P, 3, write=True, data=mark)
        if host is None or not self._try(k.read_mem, host, 3):
            return False, False
        seen = self._last
        if not self._try(k.write_mem, host + 3, b"ok"):
            return False, False
        back = k.guest_access(self.cpu, self.gfn(i) * P + 3, 2)
        return True, guest.exit == "none" and seen == mark and bytes.fromhex(back.data_hex) == b"ok"

    def withdrawn(self, i: int) -> bool:
        host = self.host_address(i)
        if host is None:
            return True
        try:
            self.k.read_mem(host, 1)
        except MemorySignal:
            return True
        return False

    def kept(self, i: int) -> bool:
        """The guest still reads its own marker, now privately."""
        try:
            got = self.k.guest_access(self.cpu, self.gfn(i) * P, 5, private=True)
        except UsageError:  # the page stayed shared: no private access to make
            return False
        return got.exit == "none" and bytes.fromhex(got.data_hex)[3:] == b"ok"


def share_pool(design: str, pool_pages: int = 64, slot_pages: int = 256, pool_first: int = 64,
               give_back_every: int = 2, max_map_count: int | None = None) -> PoolResult:
    """Share a pool_pages pool page by page, then take back every
    give_back_every-th page; what worked and what it cost.  max_map_count
    lowers vm.max_map_count (65530) to show its effect on a small pool."""
    if pool_first + pool_pages > slot_pages:
        raise ValueError("the pool must lie inside guest memory")
    vmm = _Vmm(design, slot_pages, pool_first)
    k = vmm.k
    if max_map_count is not None:
        k.set_max_map_count(max_map_count)
    vmm.boot(pool_pages)
    back = list(range(0, pool_pages, give_back_every))
    result = PoolResult(design=design, pool_pages=pool_pages, given_back=len(back))
    before = k.costs()
    for i in range(pool_pages):
        vmm.on_share(i)
        reached, in_place = vmm.exchange(i)
        result.host_reached += reached
        result.in_place += in_place
    shared = k.costs()
    result.share_cost, result.vmas_shared = shared - before, k.vma_count()
    for i in back:
        vmm.on_unshare(i)
    result.unshare_cost = k.costs() - shared
    result.vmas_after = k.vma_count()
    for i in back:
        result.withdrawn += vmm.withdrawn(i)
        result.contents_kept += vmm.kept(i)
    result.failures = vmm.failures
    k.shutdown()
    return result
