"""Designs: each a frozen row of policies (policies.py) over the one model core.

A design answers the questions on which the kernels and proposals differ by
the policies it is made of; the core asks the policies and never branches on
a design's name.  docs/DESIGNS.md shows every design as its row.  Adding a
design is one declaration below (and at most one new policy class, when it
raises a question no policy answers yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .. import uapi
from ..errors import UsageError
from .policies import (
    WHOLE_FILE_PROMISES,
    AttributesHome,
    ConversionPolicy,
    CreationFlags,
    DirectMap,
    DirectMapPolicy,
    HasMappingAt,
    HostMappingPromise,
    KvmPolicy,
    MappingPolicy,
    MapScope,
    MmapEndTo,
    NotifyPolicy,
    Offered,
    PolicyHome,
    PrivateFile,
    PromisePolicy,
    ReferencePolicy,
    WhenReferenced,
)

# The default VM, the software-protected VM (which kernels built without
# CONFIG_KVM_SW_PROTECTED_VM lack but the model implements) and an arm64
# protected VM under pKVM (guest_memfd's host mmap was written for it).
MAINLINE_VMS = frozenset({uapi.KVM_X86_DEFAULT_VM, uapi.KVM_X86_SW_PROTECTED_VM,
                          uapi.MODEL_PKVM_VM})
# ... and the confidential VMs whose guests choose private accesses themselves.
ALL_VMS = MAINLINE_VMS | {uapi.KVM_X86_SNP_VM, uapi.KVM_X86_TDX_VM}


@dataclass(frozen=True)
class Design:
    """A kernel or proposal: its name, a line about it, and its policies."""

    name: str
    summary: str
    kvm: KvmPolicy
    mapping: MappingPolicy = field(default_factory=MappingPolicy)
    conversion: ConversionPolicy = field(default_factory=ConversionPolicy)
    notify: NotifyPolicy = field(default_factory=NotifyPolicy)
    references: ReferencePolicy = field(default_factory=ReferencePolicy)
    direct_map: DirectMapPolicy = field(default_factory=DirectMapPolicy)
    promise: PromisePolicy = field(default_factory=PromisePolicy)

    # --- questions whose answer takes two policies -----------------------------------------

    def gmem_flags(self, vm_type: int | None) -> int:
        """The KVM_CREATE_GUEST_MEMFD flags the VM (None: /dev/kvm) accepts."""
        flags = self.kvm.gmem_flags(vm_type)
        return flags | self.direct_map.flags(vm_type) if flags else flags

    def vm_attributes(self, vm_type: int) -> bool:
        """Whether KVM_SET_MEMORY_ATTRIBUTES exists for the VM (ENOTTY if not)."""
        return self.conversion.vm_attributes(self.kvm, vm_type)

    def cap_file_attributes(self, vm_type: int | None) -> int:
        """KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES."""
        return self.conversion.cap_file_attributes(self.kvm, vm_type)

    def promises(self) -> frozenset[str]:
        return self.promise.promises

    def rows(self) -> dict[str, str]:
        """The design's choices, policy by policy, as docs/DESIGNS.md tabulates them."""
        k, m, c = self.kvm, self.mapping, self.conversion
        return {
            "private memory in": k.private_file.value,
            "guest_memfd offered to": k.guest_memfd.value,
            "creation flags": k.creation_flags.value if k.guest_memfd is not Offered.NEVER
            else "-",
            "host mmap of guest_memfd": "yes" if k.gmem_mmap and k.guest_memfd is not Offered.NEVER
            else "no",
            "restricted memfd mapped": m.scope.value if k.private_file is PrivateFile.RESTRICTED
            else "-",
            "shared/private kept in": c.attributes.value,
            "to private while referenced": c.referenced.value if c.in_place else "-",
            "mmap_end goes to": self.notify.mmap_end.value
            if k.private_file is PrivateFile.RESTRICTED else "-",
            "has_mapping set": m.has_mapping.value
            if k.private_file is PrivateFile.RESTRICTED and m.scope is MapScope.WHOLE_FILE else "-",
            "unmap with references out": "destroys the file"
            if self.references.destroy_at_unmap and k.private_file is PrivateFile.RESTRICTED
            else "-",
            "a destroyed file blocks conversions": ("yes" if self.references.destroyed_blocks_conversions
                                                    else "no")
            if k.private_file is PrivateFile.RESTRICTED and m.scope is MapScope.WHOLE_FILE else "-",
            "direct map": self.direct_map.direct_map.value,
            "NUMA policy on": k.mempolicy.value,
            "promises": ", ".join(sorted(self.promise.promises)),
        }


GMEM_6_18 = Design(
    "gmem-6.18", "guest_memfd with MMAP and INIT_SHARED (Linux 6.18)",
    KvmPolicy(vm_types=MAINLINE_VMS))

GMEM_6_8 = Design(
    "gmem-6.8", "guest_memfd as merged in Linux 6.8: no mmap, attributes per VM",
    KvmPolicy(vm_types=MAINLINE_VMS, guest_memfd=Offered.PRIVATE_VMS,
              creation_flags=CreationFlags.NONE, gmem_slots=Offered.PRIVATE_VMS, gmem_mmap=False,
              gmem_only_slots=False,
              mpol_max=uapi.MPOL_PREFERRED_MANY + 1))  # no MPOL_WEIGHTED_INTERLEAVE before 6.9

GMEM_6_19 = Design(
    "gmem-6.19", "guest_memfd as from Linux 6.19: mbind sets a NUMA policy on the file's page "
                 "range, shared by every mapping; inodes on their own pseudo-filesystem",
    KvmPolicy(vm_types=MAINLINE_VMS, mempolicy=PolicyHome.FILE, own_filesystem=True))

GMEM_NO_DIRECT_MAP = Design(
    "gmem-nodirectmap", "guest_memfd 6.18 with GUEST_MEMFD_FLAG_NO_DIRECT_MAP (proposed): the "
                        "file's pages leave the kernel's direct map, so GUP pins on its mapping "
                        "fail",
    GMEM_6_18.kvm, direct_map=DirectMapPolicy(DirectMap.REMOVABLE))

SEED = Design(
    "seed", "the 2022 restricted memfd: whole-file single mmap, notifier hooks, get_pfn refused "
            "while mapped, no split or mremap, destroyed at unmap with references out",
    # KVM_MEM_PRIVATE (the same bit as KVM_MEM_GUEST_MEMFD) exists only for VMs
    # with private memory; there is no guest_memfd in 2022.
    KvmPolicy(vm_types=ALL_VMS, private_file=PrivateFile.RESTRICTED, guest_memfd=Offered.NEVER,
              creation_flags=CreationFlags.NONE, gmem_slots=Offered.PRIVATE_VMS,
              gmem_only_slots=False),
    promise=PromisePolicy(HostMappingPromise.NO_VMA, WHOLE_FILE_PROMISES))

SEED_AS_WRITTEN = replace(
    SEED, name="seed-as-written",
    summary="the 2022 sketch literally: has_mapping is never set, mmap_end reaches only the "
            "last notifier",
    mapping=MappingPolicy(has_mapping=HasMappingAt.NEVER),
    notify=NotifyPolicy(MmapEndTo.LAST_STARTED),
    # Held to the same text; defect 1 lets a page turn private under the mapping.
    promise=PromisePolicy(HostMappingPromise.NONE, WHOLE_FILE_PROMISES))

PAGE_MMAP = replace(
    SEED, name="page-mmap",
    summary="the restricted memfd mapped page by page at its canonical address; a page turns "
            "private only when no VMA covers it and nothing references it",
    # Any number of mappings, so nothing is "the" mapping; page-granular sharing
    # gives up the whole-file rules (P2, P3) on purpose.
    mapping=MappingPolicy(MapScope.PAGES, HasMappingAt.NEVER, shared_access_in_place=True),
    references=ReferencePolicy(destroy_at_unmap=False),
    promise=PromisePolicy(HostMappingPromise.NO_VMA))

KVM_MAP = replace(
    PAGE_MMAP, name="kvm-map",
    summary="only KVM maps the restricted memfd (kvm_map_shared), refusing private pages; a "
            "conversion to private zaps the host's page tables and keeps the VMA",
    mapping=MappingPolicy(MapScope.KVM_ONLY, HasMappingAt.NEVER, faults_check_private=True,
                          shared_access_in_place=True),
    promise=PromisePolicy(HostMappingPromise.NO_PTE))

INPLACE = Design(
    "inplace", "guest_memfd with per-page shared/private state on the file; conversion to "
               "private zaps host page tables and fails with EAGAIN while pages are referenced",
    # On a tree with 6.19's guest_memfd; conversion exists, so a file may start
    # shared whatever the VM (vm_memory_attributes=false: PRIVATE lives in the file).
    replace(GMEM_6_19.kvm, vm_types=ALL_VMS, creation_flags=CreationFlags.MMAP_INIT_SHARED),
    conversion=ConversionPolicy(AttributesHome.FILE, WhenReferenced.REFUSE))

PKVM_INPLACE = replace(
    INPLACE, name="pkvm-inplace",
    summary="the pKVM variant of in-place sharing: all-shared / guest-shared / none-shared per "
            "page, an unshare completing when the host's last reference drops",
    conversion=ConversionPolicy(AttributesHome.FILE, WhenReferenced.DEFER))

DESIGNS: dict[str, Design] = {d.name: d for d in (
    GMEM_6_18, GMEM_6_8, GMEM_6_19, GMEM_NO_DIRECT_MAP, SEED, SEED_AS_WRITTEN, PAGE_MMAP,
    KVM_MAP, INPLACE, PKVM_INPLACE)}

# The seed with the other answer to a question its text leaves open, for each
# question a verdict depends on (docs/DESIGNS.md, "What the verdicts rest on").
SEED_LATE_HAS_MAPPING = replace(
    SEED, name="seed-late-has-mapping",
    summary="the seed with has_mapping set after the mmap_end calls instead of before them",
    mapping=MappingPolicy(has_mapping=HasMappingAt.AFTER_END))

SEED_DESTROYED_BLOCKS = replace(
    SEED, name="seed-destroyed-blocks",
    summary="the seed with a destroyed file still refusing conversions of its memslots (it "
            "keeps has_mapping set)",
    references=ReferencePolicy(destroyed_blocks_conversions=True))

VARIANTS: dict[str, Design] = {d.name: d for d in (SEED_LATE_HAS_MAPPING, SEED_DESTROYED_BLOCKS)}

DEFAULT_DESIGN = GMEM_6_18.name


def make_design(name: str) -> Design:
    """A design or a variant by name."""
    try:
        return DESIGNS.get(name) or VARIANTS[name]
    except KeyError:
        known = ", ".join(sorted(DESIGNS) + sorted(VARIANTS))
        raise UsageError(f"unknown design {name!r} (known: {known})") from None


def policy_tables() -> str:
    """Every design and variant as its row of policies, one markdown table per
    family of private-memory file (docs/DESIGNS.md holds this text)."""
    every = {**DESIGNS, **VARIANTS}
    out = []
    for kind, title in ((PrivateFile.GUEST_MEMFD, "guest_memfd"),
                        (PrivateFile.RESTRICTED, "the restricted memfd")):
        names = [n for n, d in every.items() if d.kvm.private_file is kind]
        rows = {n: every[n].rows() for n in names}
        # (a question every design of the family answers alike says nothing here)
        questions = [q for q in rows[names[0]] if q != "private memory in"
                     and (q == "promises" or len({rows[n][q] for n in names}) > 1)]
        out.append(f"Private memory in {title}:\n")
        out.append("| | " + " | ".join(f"`{n}`" for n in names) + " |")
        out.append("|---" * (len(names) + 1) + "|")
        out += [f"| {q} | " + " | ".join(rows[n][q] for n in names) + " |" for q in questions]
        out.append("")
    return "\n".join(out)
