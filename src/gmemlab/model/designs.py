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


DESIGNS: dict[str, Callable[[], Design]] = {}


def register(cls: type[Design]) -> type[Design]:
    DESIGNS[cls.name] = cls
    return cls


register(Design)
register(Gmem68)

DEFAULT_DESIGN = Design.name


def make_design(name: str) -> Design:
    try:
        return DESIGNS[name]()
    except KeyError:
        known = ", ".join(sorted(DESIGNS))
        raise UsageError(f"unknown design {name!r} (known: {known})") from None
