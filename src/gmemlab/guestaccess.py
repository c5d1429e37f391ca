"""The guest access protocol: what one `guest_access` is, on either kernel.

A guest access is a real guest's loads or stores, so it has the shape of the
instructions that perform it (`vmm/guests/access.s`):

* The bytes [gpa, gpa + length) are moved in ascending address order, one
  mov per step; each step moves the largest of 8, 4, 2 and 1 bytes that is
  naturally aligned at its address and no longer than what remains.  So no
  step crosses a page, and an aligned 2-, 4- or 8-byte access is one access
  of that size.
* The first step the guest's memory cannot serve ends the access with its
  exit: an MMIO exit names that step's address and width, a memory-fault
  exit its page.  The steps before it have happened (a store has written
  them).

How KVM resolves each step depends on who executes the guest's instruction
(the *guest path*):

* ``"mmu"``: the CPU, with KVM resolving a guest page fault through its MMU
  (VMX/SVM with EPT/NPT or shadow paging).  A guest_memfd-only memslot is
  served from guest_memfd, and a host address that cannot be faulted in is a
  memory-fault exit (KVM_RUN -1/EFAULT, exit 39).
* ``"emulator"``: KVM's x86 instruction emulator.  It reads and writes guest
  memory with kvm_vcpu_read_guest/kvm_vcpu_write_guest, that is through the
  memslot's userspace_addr, guest_memfd-only or not, and any step it cannot
  complete there becomes an MMIO exit (emulator_read_write_onepage).  This is
  how every guest instruction runs on a PVM host for a vCPU outside PVM mode
  (a PVM host; docs/CONFORMANCE.md, "Guest access paths").
"""

from __future__ import annotations

from collections.abc import Callable

from . import uapi

GUEST_ACCESS_LIMIT = 1 << 20
GUEST_PATHS = ("mmu", "emulator")
WIDTHS = (8, 4, 2, 1)


def step_width(addr: int, remaining: int) -> int:
    """The width of the step at addr with `remaining` bytes still to move."""
    for width in WIDTHS:
        if not addr & (width - 1) and remaining >= width:
            return width
    raise ValueError("nothing remains to move")


# Who says whether an access is private.  On SEV-SNP the guest's page tables
# carry the C-bit, reported in the #NPF error code (PFERR_GUEST_ENC_MASK); on
# TDX the GPA's shared bit.  For every other VM type KVM sets
# PFERR_PRIVATE_ACCESS itself, exactly when kvm_mem_is_private() says the gfn
# is private (kvm_mmu_page_fault, arch/x86/kvm/mmu/mmu.c): the per-VM memory
# attributes, or the guest_memfd's own under in-place conversion.  A pKVM
# protected guest has no such bit either: it converts pages with the
# MEM_SHARE/MEM_UNSHARE hypercalls, which reach the host, and its faults are
# resolved from the attributes the host keeps.
GUEST_CHOOSES_PRIVATE = frozenset({uapi.KVM_X86_SNP_VM, uapi.KVM_X86_TDX_VM})


def guest_chooses_private(vm_type: int) -> bool:
    """Whether the guest itself marks an access private (SNP, TDX)."""
    return vm_type in GUEST_CHOOSES_PRIVATE


def check_private(vm_type: int, private: bool | None, gpa: int, length: int,
                  gfn_private: Callable[[int], bool]) -> None:
    """On a VM type whose attributes decide, an explicit `private` must say
    what KVM decides for every page of the access (gfn_private), else no
    guest instruction could make the access asked for (UsageError)."""
    from .errors import UsageError

    if private is None or guest_chooses_private(vm_type):
        return
    shift = uapi.PAGE_SHIFT
    for gfn in range(gpa >> shift, ((gpa + length - 1) >> shift) + 1):
        if gfn_private(gfn) != private:
            state = "private" if gfn_private(gfn) else "shared"
            raise UsageError(f"guest_access: gfn {gfn:#x} is {state}, and on a VM of type "
                             f"{vm_type} KVM, not the guest, decides from the memory attributes "
                             f"that an access to it is {state}: private = {str(private).lower()} "
                             "names an access no guest can make (omit private)")


def check_call(has_private_mem: bool, vm_type: int, gpa: int, length: int, write: bool,
               private: bool | None, data: bytes) -> None:
    """The guest accesses no kernel can perform (UsageError), checked the same on both."""
    from .errors import UsageError

    if not 1 <= length <= GUEST_ACCESS_LIMIT:
        raise UsageError(f"guest_access: length must be 1..{GUEST_ACCESS_LIMIT}")
    if gpa + length > 1 << 64:
        raise UsageError("guest_access: gpa + length wraps")
    if write and len(data) != length:
        raise UsageError(f"guest_access: a write of {length} bytes needs {length} bytes of data")
    if not write and data:
        raise UsageError("guest_access: data is only for writes")
    if private and not has_private_mem:
        raise UsageError(f"guest_access: a VM of type {vm_type} has no private memory, "
                         "so no private access")
