"""The questions on which kernels and proposals differ, one family per class.

A design (designs.py) is a frozen row of these policies.  Each policy holds
Enum-typed choices and answers one family of questions from them; the model
core asks the policy and never branches on a design's name:

* `KvmPolicy`: what KVM offers (VM types, capabilities, creating and binding
  the file that backs private memory), the `kvm_arch_*` hooks of a kernel;
* `MappingPolicy`: how host userspace may map that file, and what a host
  fault on it does;
* `ConversionPolicy`: where shared/private lives and what a conversion does
  to a page the host still references;
* `NotifyPolicy`: who is told of an mmap of the 2022 restricted memfd, and how
  a refusal unwinds;
* `ReferencePolicy`: what a reference pins, and what unmapping does to a file
  with references outstanding;
* `DirectMapPolicy`: whether guest_memfd pages can leave the kernel's direct map;
* `PromisePolicy`: what the checker holds the design to.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .. import uapi
from ..guestaccess import guest_chooses_private

# --- KVM ------------------------------------------------------------------------------------


class PrivateFile(Enum):
    """The kind of file a KVM_MEM_GUEST_MEMFD memslot binds (2022: KVM_MEM_PRIVATE)."""

    GUEST_MEMFD = "gmem"  # KVM_CREATE_GUEST_MEMFD
    RESTRICTED = "restricted"  # the 2022 proposal's memfd_restricted


class Offered(Enum):
    """To which VMs KVM offers a guest_memfd feature."""

    NEVER = "never"
    PRIVATE_VMS = "VMs with private memory"  # kvm_arch_has_private_mem()
    ALL_VMS = "every VM"


class CreationFlags(Enum):
    """Which KVM_CREATE_GUEST_MEMFD flags exist (kvm_gmem_get_supported_flags)."""

    NONE = "none"  # 6.8 to 6.17
    MMAP = "MMAP; INIT_SHARED where the VM has no private memory"  # 6.18
    MMAP_INIT_SHARED = "MMAP and INIT_SHARED on every VM"  # in-place conversion


class PolicyHome(Enum):
    """Where mbind() on a guest_memfd mapping keeps the NUMA policy."""

    VMA = "the VMA"  # 6.18: the generic per-VMA policy
    FILE = "the file's page range"  # 6.19: kvm_gmem_set_policy, shared by every mapping


@dataclass(frozen=True)
class KvmPolicy:
    """What KVM offers: VM types, capabilities, creating and binding private memory."""

    vm_types: frozenset[int]
    private_file: PrivateFile = PrivateFile.GUEST_MEMFD
    guest_memfd: Offered = Offered.ALL_VMS  # KVM_CAP_GUEST_MEMFD
    creation_flags: CreationFlags = CreationFlags.MMAP
    gmem_slots: Offered = Offered.ALL_VMS  # who may bind with KVM_MEM_GUEST_MEMFD
    gmem_mmap: bool = True  # guest_memfd has an mmap file operation
    gmem_only_slots: bool = True  # binding an MMAP file makes a KVM_MEMSLOT_GMEM_ONLY slot
    mempolicy: PolicyHome = PolicyHome.VMA
    own_filesystem: bool = False  # guest_memfd inodes on their own pseudo-filesystem (6.19)
    mpol_max: int = uapi.MPOL_WEIGHTED_INTERLEAVE + 1  # MPOL_MAX (WEIGHTED_INTERLEAVE: 6.9)

    @staticmethod
    def has_private_mem(vm_type: int) -> bool:
        """kvm_arch_has_private_mem: every VM type but the default one."""
        return vm_type != uapi.KVM_X86_DEFAULT_VM

    @staticmethod
    def guest_chooses_private(vm_type: int) -> bool:
        """Whether the guest's own page tables say which accesses are private
        (SNP's C-bit, TDX's shared bit), rather than KVM's memory attributes."""
        return guest_chooses_private(vm_type)

    def offers(self, what: Offered, vm_type: int | None) -> bool:
        """Whether a feature offered to `what` exists for the VM (None: /dev/kvm, any VM)."""
        if what is Offered.NEVER:
            return False
        return what is Offered.ALL_VMS or vm_type is None or self.has_private_mem(vm_type)

    def gmem_flags(self, vm_type: int | None) -> int:
        """kvm_gmem_get_supported_flags (a NULL kvm counts as INIT_SHARED-capable)."""
        if self.guest_memfd is Offered.NEVER or self.creation_flags is CreationFlags.NONE:
            return 0
        flags = uapi.GUEST_MEMFD_FLAG_MMAP
        if self.creation_flags is CreationFlags.MMAP_INIT_SHARED or vm_type is None \
                or not self.has_private_mem(vm_type):
            flags |= uapi.GUEST_MEMFD_FLAG_INIT_SHARED
        return flags

    def cap_guest_memfd(self, vm_type: int | None) -> int:
        return int(self.offers(self.guest_memfd, vm_type))

    def gmem_memslot_allowed(self, vm_type: int) -> bool:
        """Whether KVM_MEM_GUEST_MEMFD is a valid memslot flag on this VM."""
        return self.offers(self.gmem_slots, vm_type)


# --- the host's mappings -----------------------------------------------------------------------


class MapScope(Enum):
    """How host userspace maps a restricted memfd."""

    WHOLE_FILE = "whole-file"  # seed: one mapping of all of it
    PAGES = "pages"  # page-mmap: any page range, at the file's canonical address
    KVM_ONLY = "kvm"  # kvm-map: only KVM maps it (kvm_map_shared)


class HasMappingAt(Enum):
    """When a successful mmap of a restricted memfd sets has_mapping (the text
    only says that a mapping exists; when it counts is the model's choice)."""

    ACCEPTED = "once every notifier accepted, before any mmap_end"
    AFTER_END = "after the last mmap_end"
    NEVER = "never"  # the sketch as written; the page-granular designs have no single mapping


@dataclass(frozen=True)
class MappingPolicy:
    """How host userspace may map the file that backs private memory."""

    scope: MapScope = MapScope.WHOLE_FILE
    has_mapping: HasMappingAt = HasMappingAt.ACCEPTED
    faults_check_private: bool = False  # a host fault asks KVM whether the page is shared
    # A guest's shared access to a gfn bound to a restricted memfd reaches the
    # file's own page (pKVM shares in place), not the memory at userspace_addr.
    shared_access_in_place: bool = False


# --- conversions ------------------------------------------------------------------------------


class AttributesHome(Enum):
    """Where the shared/private state of guest memory lives."""

    VM = "the VM (KVM_SET_MEMORY_ATTRIBUTES)"
    FILE = "the guest_memfd (KVM_SET_MEMORY_ATTRIBUTES2)"


class WhenReferenced(Enum):
    """What a conversion to private does to a page the host still references."""

    REFUSE = "fails with EAGAIN"  # inplace
    DEFER = "waits for the host's last reference"  # pkvm-inplace


@dataclass(frozen=True)
class ConversionPolicy:
    """How and when pages convert between shared and private."""

    attributes: AttributesHome = AttributesHome.VM
    referenced: WhenReferenced = WhenReferenced.REFUSE

    def vm_attributes(self, kvm: KvmPolicy, vm_type: int) -> bool:
        """Whether KVM_SET_MEMORY_ATTRIBUTES exists for the VM (ENOTTY if not).  The
        default VM answers ENOTTY, as a kernel built without
        CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES does."""
        return self.attributes is AttributesHome.VM and kvm.has_private_mem(vm_type)

    @property
    def in_place(self) -> bool:
        return self.attributes is AttributesHome.FILE

    @property
    def defers(self) -> bool:
        return self.referenced is WhenReferenced.DEFER

    def cap_file_attributes(self, kvm: KvmPolicy, vm_type: int | None) -> int:
        """KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES: PRIVATE where the file keeps the
        attributes and the VM has private memory (on /dev/kvm: where any VM can)."""
        if self.in_place and (vm_type is None or kvm.has_private_mem(vm_type)):
            return uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
        return 0


# --- the 2022 proposal's notifiers and references ------------------------------------------------


class MmapEndTo(Enum):
    """Which notifiers get mmap_end once every mmap_start succeeded."""

    EVERY_NOTIFIER = "every notifier"  # the proposal's intent
    LAST_STARTED = "the notifier the mmap_start loop ended on"  # the sketch as written


@dataclass(frozen=True)
class NotifyPolicy:
    """Who must be told of an mmap of the restricted memfd, and how a refusal unwinds
    (always: mmap_abort to the notifiers that accepted, in reverse order)."""

    mmap_end: MmapEndTo = MmapEndTo.EVERY_NOTIFIER


@dataclass(frozen=True)
class ReferencePolicy:
    """What a reference pins."""

    # Unmapping with get_pfn references outstanding destroys the file (the
    # proposal's restriction 5); otherwise references simply block conversions.
    destroy_at_unmap: bool = True
    # A destroyed file keeps has_mapping set (its close hook did not clear it).
    # The text is silent on whether that still refuses conversions of the
    # memslots bound to it; nothing can reach the file's pages any more, so the
    # model lets them through.
    destroyed_blocks_conversions: bool = False


class DirectMap(Enum):
    """Whether guest_memfd pages can leave the kernel's direct map."""

    KEPT = "kept"
    REMOVABLE = "removed for files created with GUEST_MEMFD_FLAG_NO_DIRECT_MAP"


@dataclass(frozen=True)
class DirectMapPolicy:
    """The kernel's own view of guest memory (the direct map) and what needs it.

    A file created with GUEST_MEMFD_FLAG_NO_DIRECT_MAP has its folios removed
    from the direct map when they are first mapped: a GUP pin on its mapping
    (O_DIRECT, VFIO) then fails with EFAULT, while the host's own mmap and
    KVM's accesses through it still work (secret hiding, as Firecracker asks).
    """

    direct_map: DirectMap = DirectMap.KEPT

    def flags(self, vm_type: int | None) -> int:
        """The creation flag it adds: not for TDX or SNP guests, whose memory the
        hardware already hides."""
        if self.direct_map is DirectMap.KEPT or vm_type in (uapi.KVM_X86_SNP_VM,
                                                            uapi.KVM_X86_TDX_VM):
            return 0
        return uapi.GUEST_MEMFD_FLAG_NO_DIRECT_MAP


# --- what the checker holds a design to ------------------------------------------------------------


class HostMappingPromise(Enum):
    """What a design promises about host mappings of private pages."""

    NO_VMA = "vma"  # no VMA covers a private page (the 2022 proposal)
    NO_PTE = "pte"  # no host page-table entry maps one
    NONE = "none"  # no promise (seed-as-written breaks it)


BASE_PROMISES = frozenset({"P1", "P4", "P5", "P6", "P7", "P8"})
WHOLE_FILE_PROMISES = BASE_PROMISES | {"P2", "P3", "P9"}


@dataclass(frozen=True)
class PromisePolicy:
    """The checker's promises (docs/CHECKER.md) the design makes.

    Every design promises P1 (host userspace never touches private bytes), P4,
    P5, P6, P7 and P8; P2 and P3 are the whole-file, single-mapping rules of the
    2022 restricted memfd, and P9 its restriction 5 (a file unmapped with
    references outstanding is dead).
    """

    host_mapping: HostMappingPromise = HostMappingPromise.NO_PTE
    promises: frozenset[str] = BASE_PROMISES
