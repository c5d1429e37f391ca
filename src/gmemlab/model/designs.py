"""Designs: policies over the one model core.

A design answers the questions on which the kernels and proposals differ
(which guest_memfd flags exist, whether the file can be mapped, which VM
types have private memory, ...).  The model core asks; it never branches on a
design's name.  Later designs (the 2022 restricted memfd, page-granular
mapping, in-place conversion) add their own answers here; the operations
that only some designs have live in their own modules (restricted.py,
pagemap.py, inplace.py) and ask the design whether they apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from .. import uapi
from ..errors import UsageError
from ..guestaccess import guest_chooses_private


class Design:
    """The Linux 6.18 guest_memfd, on x86-64 as KVM on PVM builds it."""

    name: ClassVar[str] = "gmem-6.18"
    summary: ClassVar[str] = "guest_memfd with MMAP and INIT_SHARED (Linux 6.18)"
    # VM types the model can create; the default VM plus the software-protected
    # VM that kernels built without CONFIG_KVM_SW_PROTECTED_VM lack but the
    # model implements, and an
    # arm64 protected VM under pKVM (guest_memfd's host mmap was written for it).
    vm_types: ClassVar[frozenset[int]] = frozenset({uapi.KVM_X86_DEFAULT_VM,
                                                    uapi.KVM_X86_SW_PROTECTED_VM,
                                                    uapi.MODEL_PKVM_VM})

    def has_private_mem(self, vm_type: int) -> bool:
        """kvm_arch_has_private_mem: every VM type but the default one."""
        return vm_type != uapi.KVM_X86_DEFAULT_VM

    def supports_attributes(self, vm_type: int) -> bool:
        """Whether KVM_SET_MEMORY_ATTRIBUTES exists for the VM (ENOTTY if not).

        The default VM answers ENOTTY, as a kernel built without
        CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES does.
        """
        return self.has_private_mem(vm_type)

    def gmem_supported_flags(self, vm_type: int | None) -> int:
        """kvm_gmem_get_supported_flags: MMAP always, INIT_SHARED only where
        there is no private memory (a NULL kvm counts as INIT_SHARED-capable)."""
        flags = uapi.GUEST_MEMFD_FLAG_MMAP
        if vm_type is None or not self.has_private_mem(vm_type):
            flags |= uapi.GUEST_MEMFD_FLAG_INIT_SHARED
        return flags

    def cap_guest_memfd(self, vm_type: int | None) -> int:
        return 1

    def cap_guest_memfd_flags(self, vm_type: int | None) -> int:
        return self.gmem_supported_flags(vm_type)

    def gmem_memslot_allowed(self, vm_type: int) -> bool:
        """Whether KVM_MEM_GUEST_MEMFD is a valid memslot flag on this VM."""
        return True

    def gmem_mmap_supported(self) -> bool:
        """Whether guest_memfd has an mmap file operation at all."""
        return True

    def gmem_only_slots(self) -> bool:
        """Whether binding an MMAP file makes the slot KVM_MEMSLOT_GMEM_ONLY."""
        return True

    def cap_gmem_memory_attributes(self, vm_type: int | None) -> int:
        """KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES: the attributes a guest_memfd
        keeps itself (in-place conversion); 0 where the capability does not exist."""
        return 0

    def guest_chooses_private(self, vm_type: int) -> bool:
        """Whether the guest's own page tables say which accesses are private
        (SNP's C-bit, TDX's shared bit), rather than KVM's memory attributes
        (kvm_mem_is_private), which decide for every other VM type."""
        return guest_chooses_private(vm_type)

    # --- NUMA memory policy and the file's filesystem (Linux 6.19) ----------------

    def gmem_shared_policy(self) -> bool:
        """Whether mbind on a guest_memfd mapping sets a policy on the file's
        page range (kvm_gmem_set_policy, shared by every mapping and honoured
        by every allocation) instead of on the VMA alone."""
        return False

    def gmem_own_filesystem(self) -> bool:
        """Whether guest_memfd inodes live on their own pseudo-filesystem
        ("guest_memfd", its own st_dev) rather than on the anon-inode one that
        VM and vCPU files share."""
        return False

    def mpol_max(self) -> int:
        """MPOL_MAX: the memory-policy modes below it exist (MPOL_WEIGHTED_INTERLEAVE
        from Linux 6.9)."""
        return uapi.MPOL_WEIGHTED_INTERLEAVE + 1

    # --- the file that backs private memory ------------------------------------

    def private_file_kind(self) -> str:
        """Which kind of file a KVM_MEM_GUEST_MEMFD (2022: KVM_MEM_PRIVATE)
        memslot binds: "gmem" (KVM_CREATE_GUEST_MEMFD) or "restricted"
        (memfd_restricted)."""
        return "gmem"

    # --- the restricted memfd's mapping rules (designs seed, seed-as-written) -----

    def restricted_sets_has_mapping(self) -> bool:
        """Whether a successful mmap sets has_mapping (the proposal's intent)."""
        return True

    def restricted_mmap_end_to_all(self) -> bool:
        """Whether mmap_end goes to every notifier (intent) or only to the one
        the mmap_start loop ended on (the sketch as written)."""
        return True

    # --- page-granular sharing (page-mmap, kvm-map, inplace, pkvm-inplace) ------

    def restricted_mmap(self) -> str:
        """How host userspace maps a restricted memfd: "whole-file" (seed: one
        mapping of all of it), "pages" (page-mmap: any page range, at the
        file's canonical address) or "kvm" (kvm-map: only KVM maps it)."""
        return "whole-file"

    def restricted_destroys_at_unmap(self) -> bool:
        """Whether unmapping with get_pfn references out destroys the file (seed)."""
        return True

    def shared_access_in_place(self) -> bool:
        """Whether a guest's shared access to a gfn bound to a restricted memfd
        reaches the file's own page (pKVM shares in place) rather than the
        memory at the memslot's userspace_addr."""
        return False

    def host_faults_check_private(self) -> bool:
        """Whether a host fault on a restricted memfd asks KVM whether the page
        is shared (kvm-map: KVM owns the mapping and SIGBUSes private pages)."""
        return False

    def inplace_attributes(self) -> bool:
        """Whether a guest_memfd keeps shared/private per page itself
        (KVM_SET_MEMORY_ATTRIBUTES2 on the file) instead of per VM."""
        return False

    def defers_unshare(self) -> bool:
        """In-place designs: whether a conversion to private of a page the
        host still references waits for the last reference (pkvm-inplace)
        instead of failing with EAGAIN (inplace)."""
        return False

    def host_mapping_promise(self) -> str | None:
        """What the design promises about host mappings of private pages:
        "vma" (no VMA covers one), "pte" (no host page-table entry maps one),
        or None (no promise: seed-as-written breaks it)."""
        return "pte"

    # --- what the checker holds the design to ------------------------------------

    def promises(self) -> frozenset[str]:
        """The checker's promises (docs/CHECKER.md) this design makes.

        Every design promises P1 (host userspace never touches private bytes),
        P4, P5, P6, P7 and P8; P2 and P3 are the whole-file, single-mapping
        rules of the 2022 restricted memfd.
        """
        return frozenset({"P1", "P4", "P5", "P6", "P7", "P8"})


class Gmem68(Design):
    """guest_memfd as merged in Linux 6.8: no mmap, private memory only."""

    name = "gmem-6.8"
    summary = "guest_memfd as merged in Linux 6.8: no mmap, attributes per VM"

    def gmem_supported_flags(self, vm_type: int | None) -> int:
        return 0

    def cap_guest_memfd(self, vm_type: int | None) -> int:
        return 1 if vm_type is None or self.has_private_mem(vm_type) else 0

    def cap_guest_memfd_flags(self, vm_type: int | None) -> int:
        return 0  # the capability does not exist before 6.18

    def gmem_memslot_allowed(self, vm_type: int) -> bool:
        return self.has_private_mem(vm_type)

    def gmem_mmap_supported(self) -> bool:
        return False

    def gmem_only_slots(self) -> bool:
        return False

    def mpol_max(self) -> int:
        return uapi.MPOL_PREFERRED_MANY + 1  # no MPOL_WEIGHTED_INTERLEAVE before 6.9


class Gmem619(Design):
    """guest_memfd from Linux 6.19: NUMA policy on the file, its own pseudo-filesystem."""

    name = "gmem-6.19"
    summary = ("guest_memfd as from Linux 6.19: mbind sets a NUMA policy on the file's page "
               "range, shared by every mapping; inodes on their own pseudo-filesystem")

    def gmem_shared_policy(self) -> bool:
        return True

    def gmem_own_filesystem(self) -> bool:
        return True


class Seed(Design):
    """The restricted memfd of the 2022 proposal, as its text intends."""

    name = "seed"
    summary = ("the 2022 restricted memfd: whole-file single mmap, notifier hooks, get_pfn "
               "refused while mapped, no split or mremap, destroyed at unmap with references out")
    vm_types = frozenset({uapi.KVM_X86_DEFAULT_VM, uapi.KVM_X86_SW_PROTECTED_VM,
                          uapi.KVM_X86_SNP_VM, uapi.KVM_X86_TDX_VM, uapi.MODEL_PKVM_VM})

    def private_file_kind(self) -> str:
        return "restricted"

    def cap_guest_memfd(self, vm_type: int | None) -> int:
        return 0  # no guest_memfd in 2022

    def gmem_supported_flags(self, vm_type: int | None) -> int:
        return 0

    def gmem_memslot_allowed(self, vm_type: int) -> bool:
        # KVM_MEM_PRIVATE (the same bit) exists only for VMs with private memory.
        return self.has_private_mem(vm_type)

    def gmem_only_slots(self) -> bool:
        return False

    def host_mapping_promise(self) -> str | None:
        return "vma"

    def promises(self) -> frozenset[str]:
        # seed-as-written is held to the same text: its defects break these.
        return super().promises() | {"P2", "P3"}


class SeedAsWritten(Seed):
    """The proposal's code sketch taken literally, with its two defects."""

    name = "seed-as-written"
    summary = ("the 2022 sketch literally: has_mapping is never set, mmap_end reaches only "
               "the last notifier")

    def restricted_sets_has_mapping(self) -> bool:
        return False

    def restricted_mmap_end_to_all(self) -> bool:
        return False

    def host_mapping_promise(self) -> str | None:
        return None  # defect 1 lets a page turn private under the host's mapping


class PageMmap(Seed):
    """Page-granular mmap/munmap of the restricted memfd (docs/DESIGNS.md, page-mmap)."""

    name = "page-mmap"
    summary = ("the restricted memfd mapped page by page at its canonical address; a page "
               "turns private only when no VMA covers it and nothing references it")

    def restricted_mmap(self) -> str:
        return "pages"

    def restricted_sets_has_mapping(self) -> bool:
        return False  # any number of mappings; nothing is "the" mapping

    def restricted_destroys_at_unmap(self) -> bool:
        return False

    def shared_access_in_place(self) -> bool:
        return True

    def promises(self) -> frozenset[str]:
        # Page-granular sharing gives up the whole-file rules (P2, P3) on purpose.
        return Design.promises(self)


class KvmMap(PageMmap):
    """KVM maps shared pages for the host (docs/DESIGNS.md, kvm-map)."""

    name = "kvm-map"
    summary = ("only KVM maps the restricted memfd (kvm_map_shared), refusing private pages; "
               "a conversion to private zaps the host's page tables and keeps the VMA")

    def restricted_mmap(self) -> str:
        return "kvm"

    def host_faults_check_private(self) -> bool:
        return True

    def host_mapping_promise(self) -> str | None:
        return "pte"


class Inplace(Gmem619):
    """In-place conversion under review upstream (docs/DESIGNS.md, inplace), on a tree
    that has 6.19's guest_memfd."""

    name = "inplace"
    summary = ("guest_memfd with per-page shared/private state on the file; conversion to "
               "private zaps host page tables and fails with EAGAIN while pages are referenced")
    vm_types = frozenset({uapi.KVM_X86_DEFAULT_VM, uapi.KVM_X86_SW_PROTECTED_VM,
                          uapi.KVM_X86_SNP_VM, uapi.KVM_X86_TDX_VM, uapi.MODEL_PKVM_VM})

    def gmem_supported_flags(self, vm_type: int | None) -> int:
        # Conversion exists, so a file may start shared whatever the VM.
        return uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED

    def supports_attributes(self, vm_type: int) -> bool:
        # vm_memory_attributes=false: PRIVATE lives in the file, not the VM.
        return False

    def inplace_attributes(self) -> bool:
        return True

    def cap_gmem_memory_attributes(self, vm_type: int | None) -> int:
        # PRIVATE when the VM has private memory (on /dev/kvm: when any VM can).
        if vm_type is None or self.has_private_mem(vm_type):
            return uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
        return 0


class PkvmInplace(Inplace):
    """pKVM's in-place sharing (docs/DESIGNS.md, pkvm-inplace)."""

    name = "pkvm-inplace"
    summary = ("the pKVM variant of in-place sharing: all-shared / guest-shared / none-shared "
               "per page, an unshare completing when the host's last reference drops")

    def defers_unshare(self) -> bool:
        return True


DESIGNS: dict[str, Callable[[], Design]] = {}


def register(cls: type[Design]) -> type[Design]:
    DESIGNS[cls.name] = cls
    return cls


register(Design)
register(Gmem68)
register(Gmem619)
register(Seed)
register(SeedAsWritten)
register(PageMmap)
register(KvmMap)
register(Inplace)
register(PkvmInplace)

DEFAULT_DESIGN = Design.name


def make_design(name: str) -> Design:
    try:
        return DESIGNS[name]()
    except KeyError:
        known = ", ".join(sorted(DESIGNS))
        raise UsageError(f"unknown design {name!r} (known: {known})") from None
