"""KVM: VMs, capabilities, memslots, memory attributes, vCPUs, guest accesses.

Memslot updates follow kvm_vm_ioctl_set_memory_region / kvm_set_memory_region
check by check (first failure wins), so that a call that breaks several rules
fails with the errno the kernel reports.  A guest access is resolved the way
the x86 MMU resolves a fault: memslot lookup, private/shared check against the
VM's attributes, then guest_memfd (private, or any access to a gmem-only
slot) or the host mapping at userspace_addr.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from .. import uapi
from ..errors import UsageError, kernel_error
from ..guestaccess import check_call, check_private, step_width
from ..interface import GuestAccess, GuestHypercall
from . import pages
from .gmem import GmemOps
from .state import TASK_SIZE, Memslot, OpenFile, Vm

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT

KVM_ENOSYS = 1000
KVM_EINVAL = 22
KVM_MAX_VCPU_IDS = 4096
KVM_MAX_VCPUS = 4096
NR_ADDRESS_SPACES = 1  # KVM_CAP_MULTI_ADDRESS_SPACE reports 0: no SMM
V1_FLAGS = uapi.KVM_MEM_LOG_DIRTY_PAGES | uapi.KVM_MEM_READONLY

# Capabilities whose value does not depend on the VM or the design: those of
# Linux 6.18 on x86-64 built as KVM on PVM (no SMM, no pre-fault).
FIXED_CAPS = {
    uapi.KVM_CAP_NR_MEMSLOTS: uapi.KVM_USER_MEM_SLOTS,
    uapi.KVM_CAP_READONLY_MEM: 1,
    uapi.KVM_CAP_CHECK_EXTENSION_VM: 1,
    uapi.KVM_CAP_MULTI_ADDRESS_SPACE: 0,
    uapi.KVM_CAP_EXIT_HYPERCALL: uapi.KVM_EXIT_HYPERCALL_VALID_MASK,
    uapi.KVM_CAP_USER_MEMORY2: 1,
    uapi.KVM_CAP_MEMORY_FAULT_INFO: 1,
    uapi.KVM_CAP_PRE_FAULT_MEMORY: 0,
}


KVM_DEV_MODE = 0o020600  # /dev/kvm, a character device


class KvmOps(GmemOps):
    # --- VMs and capabilities ----------------------------------------------------------

    def open_kvm(self) -> int:
        inode = self.core.new_inode("chardev", KVM_DEV_MODE)
        return self.core.install(self.core.new_file("kvm", inode))

    def _anon_inode(self) -> int:
        """The one anon inode every VM and vCPU file shares, as in the kernel."""
        if self.state.anon_ino is None:
            inode = self.core.new_inode("anon", 0o600)
            inode.files += 1  # never freed
            self.state.anon_ino = inode.ino
        return self.state.anon_ino

    def create_vm(self, type: int = 0) -> int:
        if type not in self.design.kvm.vm_types:
            raise kernel_error(errno.EINVAL, f"VM type {type} is not supported")
        kvm = Vm(id=self.state.new_id(), type=type)
        self.state.vms[kvm.id] = kvm
        f = self.core.new_file("vm", self.state.inodes[self._anon_inode()], vm=kvm)
        return self.core.install(f)

    def check_extension(self, cap: int, vm: int | None = None) -> int:
        kvm = None
        if vm is not None:
            f = self.core.file(vm)
            if f.kind == "vm":
                assert f.vm is not None
                kvm = self.state.vms[f.vm]
            elif f.kind != "kvm":
                raise kernel_error(errno.EINVAL if f.kind == "vcpu" else errno.ENOTTY,
                                   f"fd {vm} is a {f.kind} fd")
        vm_type = kvm.type if kvm is not None else None
        if cap in FIXED_CAPS:
            return FIXED_CAPS[cap]
        if cap == uapi.KVM_CAP_GUEST_MEMFD:
            return self.design.kvm.cap_guest_memfd(vm_type)
        if cap == uapi.KVM_CAP_GUEST_MEMFD_FLAGS:
            return self.design.gmem_flags(vm_type)
        if cap == uapi.KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES:
            return self.design.cap_file_attributes(vm_type)
        if cap == uapi.KVM_CAP_MEMORY_ATTRIBUTES:
            supported = kvm is not None and self.design.vm_attributes(kvm.type)
            return uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE if supported else 0
        if cap == uapi.KVM_CAP_VM_TYPES:
            return sum(1 << t for t in self.design.kvm.vm_types if t < 32)
        return 0

    def enable_cap(self, vm: int, cap: int, args: Sequence[int] = (), flags: int = 0) -> int:
        kvm = self.core.vm_of(vm)
        if len(args) > 4:
            raise UsageError("enable_cap: at most 4 args")
        if flags:
            raise kernel_error(errno.EINVAL, "flags must be 0")
        if cap == uapi.KVM_CAP_EXIT_HYPERCALL:
            arg0 = args[0] if args else 0
            if arg0 & ~uapi.KVM_EXIT_HYPERCALL_VALID_MASK:
                raise kernel_error(errno.EINVAL, "only KVM_HC_MAP_GPA_RANGE exits exist")
            kvm.exit_hypercall = arg0
            return 0
        raise kernel_error(errno.EINVAL, f"capability {cap} cannot be enabled")

    def create_vcpu(self, vm: int, id: int = 0) -> int:
        kvm = self.core.vm_of(vm)
        if id >= KVM_MAX_VCPU_IDS:
            raise kernel_error(errno.EINVAL, f"vCPU id {id} >= {KVM_MAX_VCPU_IDS}")
        if len(kvm.vcpus) >= KVM_MAX_VCPUS:
            raise kernel_error(errno.EINVAL, "too many vCPUs")
        if id in kvm.vcpus:
            raise kernel_error(errno.EEXIST, f"vCPU {id} exists")
        kvm.vcpus.add(id)
        f = self.core.new_file("vcpu", self.state.inodes[self._anon_inode()], vm=kvm)
        f.vcpu = id
        return self.core.install(f)

    # --- memslots -----------------------------------------------------------------------

    def set_user_memory_region(self, vm: int, slot: int, flags: int, guest_phys_addr: int,
                               memory_size: int, userspace_addr: int = 0) -> int:
        kvm = self.core.vm_of(vm)
        if flags & ~V1_FLAGS:
            raise kernel_error(errno.EINVAL, "the v1 ioctl takes only LOG_DIRTY_PAGES|READONLY")
        return self._set_memory_region(kvm, slot, flags, guest_phys_addr, memory_size,
                                       userspace_addr, 0, 0)

    def set_user_memory_region2(self, vm: int, slot: int, flags: int, guest_phys_addr: int,
                                memory_size: int, userspace_addr: int = 0,
                                guest_memfd: int = -1, guest_memfd_offset: int = 0) -> int:
        kvm = self.core.vm_of(vm)
        return self._set_memory_region(kvm, slot, flags, guest_phys_addr, memory_size,
                                       userspace_addr, guest_memfd, guest_memfd_offset)

    def _set_memory_region(self, kvm: Vm, slot: int, flags: int, gpa: int, size: int,
                           uaddr: int, gmem_fd: int, gmem_offset: int) -> int:
        if slot & 0xFFFF >= uapi.KVM_USER_MEM_SLOTS:
            raise kernel_error(errno.EINVAL, f"slot id {slot & 0xFFFF} >= {uapi.KVM_USER_MEM_SLOTS}")
        # check_memory_region_flags
        gmem = bool(flags & uapi.KVM_MEM_GUEST_MEMFD)
        valid = uapi.KVM_MEM_LOG_DIRTY_PAGES
        if self.design.kvm.gmem_memslot_allowed(kvm.type):
            valid |= uapi.KVM_MEM_GUEST_MEMFD
        if gmem:
            valid &= ~uapi.KVM_MEM_LOG_DIRTY_PAGES
        else:
            valid |= uapi.KVM_MEM_READONLY
        if flags & ~valid:
            raise kernel_error(errno.EINVAL, f"memslot flags {flags:#x} not valid here")
        as_id, sid = slot >> 16, slot & 0xFFFF
        if size & (P - 1):
            raise kernel_error(errno.EINVAL, "memory_size not page-aligned")
        if gpa & (P - 1):
            raise kernel_error(errno.EINVAL, "guest_phys_addr not page-aligned")
        if uaddr & (P - 1) or uaddr + size > TASK_SIZE:
            raise kernel_error(errno.EINVAL, "userspace_addr unaligned or not a user address")
        if gmem and (gmem_offset & (P - 1) or gmem_offset + size >= 1 << 64):
            raise kernel_error(errno.EINVAL, "guest_memfd_offset unaligned or wrapping")
        if as_id >= NR_ADDRESS_SPACES:
            raise kernel_error(errno.EINVAL, f"address space {as_id} does not exist")
        if gpa + size >= 1 << 64:
            raise kernel_error(errno.EINVAL, "guest_phys_addr + memory_size wraps")
        npages = size >> SHIFT
        if npages > uapi.KVM_MEM_MAX_NR_PAGES:
            raise kernel_error(errno.EINVAL, "memslot larger than KVM_MEM_MAX_NR_PAGES")
        key = as_id << 16 | sid
        old = kvm.memslots.get(key)
        if size == 0:
            if old is None:
                raise kernel_error(errno.EINVAL, f"slot {sid} does not exist")
            self._delete_memslot(kvm, old)
            return 0
        base_gfn = gpa >> SHIFT
        if old is not None:
            # Private memslots are immutable: they can only be deleted.
            if gmem or old.private_bound:
                raise kernel_error(errno.EINVAL, "guest_memfd memslots cannot be changed")
            if uaddr != old.userspace_addr or npages != old.npages or \
                    (flags ^ old.flags) & uapi.KVM_MEM_READONLY:
                raise kernel_error(errno.EINVAL, "only the GPA and dirty logging may change")
            if base_gfn == old.base_gfn:
                old.flags = flags
                return 0
        if self._gpa_overlaps(kvm, key, base_gfn, npages):
            raise kernel_error(errno.EEXIST, "the GPA range overlaps another memslot")
        new = Memslot(as_id=as_id, id=sid, base_gfn=base_gfn, npages=npages, flags=flags,
                      userspace_addr=uaddr)
        if gmem:
            self._bind_private(kvm, new, gmem_fd, gmem_offset)
        if base_gfn + npages - 1 > uapi.KVM_MAX_GFN:
            self._unbind_private(kvm, new)
            raise kernel_error(errno.EINVAL, "memslot beyond the largest guest physical address")
        if old is not None:
            self._delete_memslot(kvm, old)  # a move: the old GPA range is invalidated
        kvm.memslots[key] = new
        kvm.gfn_slots.set(base_gfn, base_gfn + npages, key)
        return 0

    def _destroy_vm(self, vm: Vm) -> None:
        """kvm_destroy_vm frees the memslots, unbinding their private files
        (a restricted memfd loses KVM's notifier and the binding's reference),
        after the hypervisor reclaimed the guest's pages."""
        self.pkvm.vm_destroyed(vm)
        for slot in list(vm.memslots.values()):
            self._unbind_private(vm, slot)
        super()._destroy_vm(vm)

    def _gpa_overlaps(self, kvm: Vm, key: int, base_gfn: int, npages: int) -> bool:
        return any(k is not None and k != key
                   for _, _, k in kvm.gfn_slots.runs(base_gfn, base_gfn + npages))

    def _delete_memslot(self, kvm: Vm, slot: Memslot) -> None:
        self._unbind_private(kvm, slot)
        kvm.gfn_slots.set(slot.base_gfn, slot.base_gfn + slot.npages, None)
        del kvm.memslots[slot.key]
        self.state.counters["kvm_zaps"] += 1
        self.state.counters["tlb_flushes"] += 1

    # --- memory attributes -------------------------------------------------------------------

    def set_memory_attributes(self, vm: int, address: int, size: int, attributes: int,
                              flags: int = 0) -> int:
        kvm = self.core.vm_of(vm)
        first, last, attributes = self._attributes_checks(kvm, address, size, attributes, flags)
        self._set_attributes(kvm, first, last, attributes)
        return 0

    def _attributes_checks(self, kvm: Vm, address: int, size: int, attributes: int,
                           flags: int) -> tuple[int, int, int]:
        """kvm_vm_ioctl_set_mem_attributes' checks, then the design's veto."""
        if not self.design.vm_attributes(kvm.type):
            raise kernel_error(errno.ENOTTY, "KVM_SET_MEMORY_ATTRIBUTES is not available "
                               "for this VM (a kernel built without "
                               "CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES)")
        if flags:
            raise kernel_error(errno.EINVAL, "flags must be 0")
        if attributes & ~uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE:
            raise kernel_error(errno.EINVAL, "unsupported attribute bits")
        if size == 0 or address + size >= 1 << 64:
            raise kernel_error(errno.EINVAL, "size 0 or range wraps")
        if address & (P - 1) or size & (P - 1):
            raise kernel_error(errno.EINVAL, "address and size must be page-aligned")
        first, last = address >> SHIFT, (address + size) >> SHIFT
        self._conversion_check(kvm, first, last, attributes)
        return first, last, attributes

    def _conversion_check(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        """A design's veto on converting [first, last) to attributes; guest_memfd has none."""

    def _set_attributes(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        if kvm.attributes.all_equal(first, last, attributes):
            return
        # Between the zap and the store the conversion is in progress; the
        # atomic operation passes through that state without stopping (the
        # stepwise one, model/steps.py, stops there).
        kvm.converting = True
        self.state.counters["kvm_zaps"] += 1
        self.state.counters["tlb_flushes"] += 1
        self._store_attributes(kvm, first, last, attributes)
        kvm.converting = False

    def _store_attributes(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        kvm.attributes.set(first, last, attributes)
        if attributes & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE:
            self._audit_private(kvm, first, last)

    def _audit_private(self, kvm: Vm, first: int, last: int) -> None:
        """Record pages that became private under a host mapping (design hook)."""

    # --- guest accesses -------------------------------------------------------------------------

    def _gfn_private(self, kvm: Vm, gfn: int) -> bool | None:
        """Whether the guest may access gfn as private (True) or shared
        (False), or neither (None: an in-place unshare still pending)."""
        return bool(kvm.attributes[gfn] & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)

    def guest_access(self, vcpu: int, gpa: int, length: int, write: bool = False,
                     private: bool | None = None, data: bytes = b"") -> GuestAccess:
        f = self.core.ioctl_file(vcpu, "vcpu")
        assert f.vm is not None
        kvm = self.state.vms[f.vm]
        check_call(self.design.kvm.has_private_mem(kvm.type), kvm.type, gpa, length, write, private,
                   data)
        check_private(kvm.type, private, gpa, length, lambda gfn: self._kvm_private(kvm, gfn))
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

    def _kvm_private(self, kvm: Vm, gfn: int) -> bool:
        """kvm_mem_is_private: whether KVM holds gfn private (an unshare still
        pending counts: the guest asked for it)."""
        return self.design.kvm.has_private_mem(kvm.type) and self._gfn_private(kvm, gfn) is not False

    def _guest_page(self, kvm: Vm, gpa: int, n: int, write: bool, private: bool | None,
                    data: bytes | None) -> bytes | GuestAccess:
        """One access within a page: its bytes, or the exit it causes."""
        emulated = self.core.guest_path == "emulator"
        gfn = gpa >> SHIFT
        if self.design.kvm.has_private_mem(kvm.type):
            attr = self._gfn_private(kvm, gfn)
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
            backing = self._private_backing(kvm, slot, gfn)
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


    def _mmap_vcpu(self, f: OpenFile, shared: bool, prot: int, pgoff: int, npages: int) -> None:
        return None

    def _fault_vcpu(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        return max(first, min(last, 3))  # kvm_run, pio page, coalesced MMIO ring

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
