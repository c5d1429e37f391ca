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

GUEST_ACCESS_LIMIT = 1 << 20
GUEST_PATHS = ("mmu", "emulator")
WIDTHS = (8, 4, 2, 1)


def step_width(addr: int, remaining: int) -> int:
    """The width of the step at addr with `remaining` bytes still to move."""
    for width in WIDTHS:
        if not addr & (width - 1) and remaining >= width:
            return width
    raise ValueError("nothing remains to move")


def check_call(has_private_mem: bool, vm_type: int, gpa: int, length: int, write: bool,
               private: bool, data: bytes) -> None:
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
