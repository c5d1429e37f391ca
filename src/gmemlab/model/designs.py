"""Designs: policies over the one model core.

A design answers the questions on which the kernels and proposals differ
(which guest_memfd flags exist, whether the file can be mapped, which VM
types have private memory, ...).  The model core asks; it never branches on a
design's name.  Later designs (the 2022 restricted memfd, page-granular
mapping, in-place conversion) add their own answers and operations here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from .. import uapi
from ..errors import UsageError


class Design:
    """The Linux 6.18 guest_memfd: this machine's kernel."""

    name: ClassVar[str] = "gmem-6.18"
    summary: ClassVar[str] = "guest_memfd with MMAP and INIT_SHARED (Linux 6.18; this machine's kernel)"
    # VM types the model can create; the default VM plus the software-protected
    # VM that this machine's kernel lacks but the model implements.
    vm_types: ClassVar[frozenset[int]] = frozenset({uapi.KVM_X86_DEFAULT_VM,
                                                    uapi.KVM_X86_SW_PROTECTED_VM})

    def has_private_mem(self, vm_type: int) -> bool:
        """kvm_arch_has_private_mem: every VM type but the default one."""
        return vm_type != uapi.KVM_X86_DEFAULT_VM

    def supports_attributes(self, vm_type: int) -> bool:
        """Whether KVM_SET_MEMORY_ATTRIBUTES exists for the VM (ENOTTY if not).

        The default VM answers ENOTTY, as this machine's kernel (built without
        CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES) does.
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


DESIGNS: dict[str, Callable[[], Design]] = {}


def register(cls: type[Design]) -> type[Design]:
    DESIGNS[cls.name] = cls
    return cls


register(Design)
register(Gmem68)
register(Seed)
register(SeedAsWritten)

DEFAULT_DESIGN = Design.name


def make_design(name: str) -> Design:
    try:
        return DESIGNS[name]()
    except KeyError:
        known = ", ".join(sorted(DESIGNS))
        raise UsageError(f"unknown design {name!r} (known: {known})") from None
