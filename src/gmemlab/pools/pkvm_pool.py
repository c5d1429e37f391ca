"""pKVM's objection to the 2022 proposal, run on the model.

Fuad Tabba (2022-09-23): a pKVM guest shares its restricted DMA pool with the
host page by page (swiotlb's set_memory_decrypted issues one MEM_SHARE per
granule), while the proposal lets the host map a restricted memfd only whole
and only when every gfn of every memslot bound to it is shared.  Sean's
workaround: share at a coarser unit and give each unit its own memslot (2 GiB
at 2 MiB = 1024 memslots).

`share_pool_in_one_slot` plays the first situation step by step;
`share_pool_per_unit` plays the workaround until it succeeds or a kernel limit
(KVM_USER_MEM_SLOTS = 32764 memslots, vm.max_map_count = 65530 mappings)
refuses it, and counts what it cost.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import uapi
from ..model import ModelKernel

P = uapi.PAGE_SIZE
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
GUEST_BASE = 0x80000000  # guest RAM starts at 2 GiB, as on arm64 virt machines


@dataclass
class OneSlotResult:
    design: str
    slot_pages: int
    pool_pages: int
    mmap_errnos: list[str] = field(default_factory=list)  # after each pool page is shared
    first_mappable_after: int | None = None  # pages shared when mmap first succeeded

    @property
    def host_mapped_anything(self) -> bool:
        return self.first_mappable_after is not None


@dataclass
class PerUnitResult:
    design: str
    pool_pages: int
    unit_pages: int
    units_needed: int
    memslots: int = 0
    files: int = 0
    mappings: int = 0
    syscalls: int = 0
    vma_count: int = 0
    stopped_by: str | None = None  # the refusal that ended the workaround, if any

    @property
    def completed(self) -> bool:
        return self.stopped_by is None


def share_pool_in_one_slot(design: str = "seed", slot_pages: int = 1024, pool_first: int = 256,
                           pool_pages: int = 64) -> OneSlotResult:
    """Guest memory is one memslot; the guest shares its pool page by page and
    after each share the VMM tries to map the file to reach the shared page."""
    if not pool_first >= 0 and pool_first + pool_pages <= slot_pages:
        raise ValueError("the pool must lie inside the memslot")
    with ModelKernel(design) as k:
        vm = k.create_vm(uapi.MODEL_PKVM_VM)
        f = k.memfd_restricted(0)
        k.ftruncate(f, slot_pages * P)
        k.set_user_memory_region2(vm, 0, uapi.KVM_MEM_GUEST_MEMFD, GUEST_BASE, slot_pages * P,
                                  0, f, 0)
        # A protected guest's memory is private from boot.
        k.set_memory_attributes(vm, GUEST_BASE, slot_pages * P, PRIVATE)
        result = OneSlotResult(design=design, slot_pages=slot_pages, pool_pages=pool_pages)
        for i in range(pool_pages):
            k.set_memory_attributes(vm, GUEST_BASE + (pool_first + i) * P, P, 0)
            try:
                addr = k.mmap(f, slot_pages * P, uapi.PROT_READ | uapi.PROT_WRITE, uapi.MAP_SHARED)
            except OSError as exc:
                result.mmap_errnos.append(uapi.errno_name(exc.errno or 0))
                continue
            result.mmap_errnos.append("ok")
            result.first_mappable_after = i + 1
            k.munmap(addr, slot_pages * P)
            break
        return result


def share_pool_per_unit(design: str = "seed", pool_pages: int = 1024, unit_pages: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> PerUnitResult:
    """The workaround: one restricted memfd and one memslot per shared unit.
    As each unit is shared, the VMM maps that unit's file."""
    units = -(-pool_pages // unit_pages)
    result = PerUnitResult(design=design, pool_pages=pool_pages, unit_pages=unit_pages,
                           units_needed=units)
    with ModelKernel(design) as k:
        vm = k.create_vm(uapi.MODEL_PKVM_VM)
        for u in range(units):
            if progress is not None and u % 1024 == 0:
                progress(u, units)
            gpa = GUEST_BASE + u * unit_pages * P
            size = unit_pages * P
            try:
                f = k.memfd_restricted(0)
                result.files += 1
                k.ftruncate(f, size)
                k.set_user_memory_region2(vm, u, uapi.KVM_MEM_GUEST_MEMFD, gpa, size, 0, f, 0)
                result.memslots += 1
                k.set_memory_attributes(vm, gpa, size, PRIVATE)  # private from boot
                k.set_memory_attributes(vm, gpa, size, 0)  # the guest shares the unit
                k.mmap(f, size, uapi.PROT_READ | uapi.PROT_WRITE, uapi.MAP_SHARED)
                result.mappings += 1
                k.close(f)  # the memslot binding and the mapping keep the file
            except OSError as exc:
                where = {errno.EINVAL: f"memslot {u}", errno.ENOMEM: f"mapping {u}"}
                result.stopped_by = (f"{uapi.errno_name(exc.errno or 0)} at "
                                     f"{where.get(exc.errno or 0, f'unit {u}')}")
                break
        result.syscalls = k.state.counters["syscalls"]
        result.vma_count = k.vma_count()
    return result
