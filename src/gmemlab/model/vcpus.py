"""vCPUs and guest accesses.

A guest access is resolved the way the x86 MMU resolves a fault: memslot
lookup, private/shared check against what KVM holds (kvm.py: the VM's
attributes, or the file's in the in-place designs), then the file that backs
private memory (private, or any access to a gmem-only slot) or the host
mapping at userspace_addr.  The emulator guest path (guestaccess.py) reaches
guest memory through userspace_addr only.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from .. import uapi
from ..errors import UsageError, kernel_error
from ..guestaccess import check_call, check_private, step_width
from ..interface import GuestAccess, GuestHypercall
from . import pages
from .core import Component
from .fileops import FileOps, noop_llseek
from .kvm import Kvm
from .mm import AddressSpace
from .state import OpenFile, Vm

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
KVM_ENOSYS = 1000
KVM_EINVAL = 22
KVM_MAX_VCPU_IDS = 4096
KVM_MAX_VCPUS = 4096


class Vcpus(Component):
    """vCPU files, and what a guest's loads, stores and hypercalls do."""

    kvm: Kvm
    mm: AddressSpace

    def connect(self, kvm: Kvm, mm: AddressSpace) -> None:
        self.kvm, self.mm = kvm, mm

    def file_ops(self) -> FileOps:
        """kvm_vcpu_fops: kvm_run and its companion pages can be mapped."""
        return FileOps(noexec=True, llseek=noop_llseek, mmap=self.mmap, fault=self.fault)

    def create_vcpu(self, vm: int, id: int = 0) -> int:
        kvm = self.core.vm_of(vm)
        if id >= KVM_MAX_VCPU_IDS:
            raise kernel_error(errno.EINVAL, f"vCPU id {id} >= {KVM_MAX_VCPU_IDS}")
        if len(kvm.vcpus) >= KVM_MAX_VCPUS:
            raise kernel_error(errno.EINVAL, "too many vCPUs")
        if id in kvm.vcpus:
            raise kernel_error(errno.EEXIST, f"vCPU {id} exists")
        kvm.vcpus.add(id)
        f = self.core.new_file("vcpu", self.state.inodes[self.kvm.anon_inode()], vm=kvm)
        f.vcpu = id
        return self.core.install(f)

    # --- the vCPU's mapping (kvm_vcpu_vm_ops) ----------------------------------------------------

    def mmap(self, f: OpenFile, shared: bool, prot: int, pgoff: int, npages: int) -> None:
        return None

    def fault(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        return max(first, min(last, 3))  # kvm_run, pio page, coalesced MMIO ring

    # --- guest accesses ----------------------------------------------------------------------------

    def guest_access(self, vcpu: int, gpa: int, length: int, write: bool = False,
                     private: bool | None = None, data: bytes = b"") -> GuestAccess:
        f = self.core.ioctl_file(vcpu, "vcpu")
        assert f.vm is not None
        kvm = self.state.vms[f.vm]
        check_call(self.design.kvm.has_private_mem(kvm.type), kvm.type, gpa, length, write, private,
                   data)
        check_private(kvm.type, private, gpa, length, lambda gfn: self.kvm.kvm_private(kvm, gfn))
        if self.core.guest_path == "emulator" and self.design.kvm.has_private_mem(kvm.type):
            raise UsageError("guest_access: the emulator guest path is modelled for VMs without "
                             "private memory only")
        self.state.counters["exits"] += 1
        out = bytearray()
        pos = gpa
        end = gpa + length
        while pos < end:
            stop = min(end, (pos | (P - 1)) + 1)
            chunk = data[pos - gpa:stop - gpa] if write else None
            result = self._guest_page(kvm, pos, stop - pos, write, private, chunk)
            if isinstance(result, GuestAccess):
                if result.exit == "mmio":
                    # A real guest's MMIO exit names one step of the access
                    # protocol (guestaccess.py), not the rest of the page.
                    result = GuestAccess(exit="mmio", gpa=pos, size=step_width(pos, end - pos),
                                         write=write)
                return result
            out += result
            pos = stop
        return GuestAccess(exit="none", data_hex="" if write else out.hex())

    def _guest_page(self, kvm: Vm, gpa: int, n: int, write: bool, private: bool | None,
                    data: bytes | None) -> bytes | GuestAccess:
        """One access within a page: its bytes, or the exit it causes."""
        emulated = self.core.guest_path == "emulator"
        gfn = gpa >> SHIFT
        if self.design.kvm.has_private_mem(kvm.type):
            attr = self.kvm.gfn_private(kvm, gfn)
            if self.design.kvm.guest_chooses_private(kvm.type):
                # The guest's C-bit or shared bit says; KVM checks it against
                # its own view (kvm_mmu_faultin_pfn) and exits on a mismatch.
                private = bool(private)
                mismatch = attr is None or attr != private
            else:
                # kvm_mmu_page_fault: private exactly when KVM holds the gfn private.
                private = attr is not False
                mismatch = attr is None  # an unshare waiting for the host (pkvm-inplace)
        else:
            private, mismatch = False, False

        def fault(err: int = errno.EFAULT) -> GuestAccess:
            return GuestAccess(exit="memory_fault", gpa=gfn << SHIFT, size=P,
                               flags=uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE if private else 0,
                               errno=uapi.errno_name(err))

        if mismatch:
            return fault()
        if emulated and gfn == uapi.APIC_DEFAULT_PHYS_BASE >> SHIFT:
            # vcpu_is_mmio_gpa: "For APIC access vmexit", memslot or not.
            return GuestAccess(exit="mmio", gpa=gpa, size=n, write=write)
        key = kvm.gfn_slots[gfn] if gfn < kvm.gfn_slots.limit else None
        slot = kvm.memslots.get(key) if key is not None else None
        if slot is None:
            if private:
                return fault()
            return GuestAccess(exit="mmio", gpa=gpa, size=n, write=write)
        # The emulator reaches guest memory through userspace_addr only
        # (kvm_vcpu_read_guest), guest_memfd-only slot or not.
        if private or (slot.gmem_only and not emulated):
            if not slot.private_bound:
                return fault()
            backing = self.kvm.private_backing(kvm, slot, gfn)
            if isinstance(backing, int):
                return fault(backing)
            store, index = backing
            offset = (index << SHIFT) | (gpa & (P - 1))
            if write:
                assert data is not None
                pages.write(store, offset, data)
                return b""
            return pages.read(store, offset, n)
        if write and slot.flags & uapi.KVM_MEM_READONLY:
            return GuestAccess(exit="mmio", gpa=gpa, size=n, write=True)
        hva = slot.userspace_addr + (gpa - (slot.base_gfn << SHIFT))
        segments, host_fault = self.mm.resolve(hva, n, write)
        if host_fault is not None:
            if emulated:  # the emulator's copy failed: emulated MMIO
                return GuestAccess(exit="mmio", gpa=gpa, size=n, write=write)
            return fault()  # hva_to_pfn failed: KVM_PFN_ERR_FAULT
        out = bytearray()
        for store, offset, count, m in segments:
            if write:
                assert data is not None
                self.mm.store(store, offset, count, m, data[len(out):len(out) + count], None)
                out += bytes(count)
            else:
                out += self.mm.load(store, offset, count, m)
        return b"" if write else bytes(out)


    # --- guest hypercalls (model only: on a PVM host a guest's vmcall gives no exit) ------

    def guest_hypercall(self, vcpu: int, nr: int, args: Sequence[int] = ()) -> GuestHypercall:
        """A 64-bit guest at CPL 0 executes vmcall with RAX = nr and the args
        in RBX, RCX, RDX, RSI: __kvm_emulate_hypercall's answer."""
        f = self.core.ioctl_file(vcpu, "vcpu")
        assert f.vm is not None
        kvm = self.state.vms[f.vm]
        a = [_u64(v, "args") for v in args] + [0] * (4 - len(args))
        if len(a) > 4:
            raise UsageError("guest_hypercall: at most 4 arguments")
        self.state.counters["exits"] += 1
        if _u64(nr, "nr") != uapi.KVM_HC_MAP_GPA_RANGE:
            return GuestHypercall(exit="none", ret=-KVM_ENOSYS)
        if not kvm.exit_hypercall & (1 << uapi.KVM_HC_MAP_GPA_RANGE):
            return GuestHypercall(exit="none", ret=-KVM_ENOSYS)
        gpa, npages = a[0], a[1]
        gfn = gpa >> SHIFT
        if gpa & (P - 1) or npages == 0 or (gfn + npages) & ((1 << 64) - 1) <= gfn:
            return GuestHypercall(exit="none", ret=-KVM_EINVAL)
        return GuestHypercall(exit="hypercall", nr=uapi.KVM_HC_MAP_GPA_RANGE,
                              args=(gpa, npages, a[2], 0, 0, 0), flags=1)


def _u64(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 63) <= value < 1 << 64:
        raise UsageError(f"guest_hypercall: {name} must be 64-bit integers, got {value!r}")
    return value & ((1 << 64) - 1)
