"""KVM: /dev/kvm, VMs, capabilities, memslots, memory attributes, private memory.

Memslot updates follow kvm_vm_ioctl_set_memory_region / kvm_set_memory_region
check by check (first failure wins), so that a call that breaks several rules
fails with the errno the kernel reports.  A memslot's private memory is a
file of the kind the design makes private memory with (guest_memfd, or the
2022 restricted memfd): KVM binds, unbinds and gets pages through that kind's
operations (fileops.py).  vCPUs and guest accesses are vcpus.py's.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

from .. import uapi
from ..errors import UsageError, kernel_error
from . import pages
from .core import Component
from .fileops import Backing, FileOps, noop_llseek
from .gmem import NONE_SHARED, PRIVATE
from .notifiers import NO_NONZERO_AFTER_LAUNCH
from .pkvm import Pkvm
from .restricted_kvm import RestrictedKvm
from .state import TASK_SIZE, Memslot, OpenFile, Vm

PfnOp = Callable[[OpenFile, int], int]  # FileOps.get_pfn, FileOps.put_pfn

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT

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


class Kvm(Component):
    """/dev/kvm and VMs: capabilities, memslots, attributes, private memory."""

    pkvm: Pkvm
    restricted_kvm: RestrictedKvm

    def connect(self, pkvm: Pkvm, restricted_kvm: RestrictedKvm) -> None:
        self.pkvm, self.restricted_kvm = pkvm, restricted_kvm

    def dev_file_ops(self) -> FileOps:
        """kvm_chardev_ops (/dev/kvm)."""
        return FileOps(seekable=True, llseek=noop_llseek)

    def vm_file_ops(self) -> FileOps:
        """kvm_vm_fops: a VM fd has no mmap."""
        return FileOps(noexec=True, llseek=noop_llseek)

    # --- VMs and capabilities ----------------------------------------------------------

    def open_kvm(self) -> int:
        inode = self.core.new_inode("chardev", KVM_DEV_MODE)
        return self.core.install(self.core.new_file("kvm", inode))

    def anon_inode(self) -> int:
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
        f = self.core.new_file("vm", self.state.inodes[self.anon_inode()], vm=kvm)
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
            self.bind_private(kvm, new, gmem_fd, gmem_offset)
        if base_gfn + npages - 1 > uapi.KVM_MAX_GFN:
            self.unbind_private(kvm, new)
            raise kernel_error(errno.EINVAL, "memslot beyond the largest guest physical address")
        if old is not None:
            self._delete_memslot(kvm, old)  # a move: the old GPA range is invalidated
        kvm.memslots[key] = new
        kvm.gfn_slots.set(base_gfn, base_gfn + npages, key)
        return 0

    def destroy_vm(self, vm: Vm) -> None:
        """kvm_destroy_vm: the hypervisor reclaims the guest's pages, then the
        memslots go, unbinding their private files (a restricted memfd loses
        KVM's notifier and the binding's reference)."""
        self.pkvm.vm_destroyed(vm)
        for slot in list(vm.memslots.values()):
            self.unbind_private(vm, slot)
        vm.memslots.clear()

    def _gpa_overlaps(self, kvm: Vm, key: int, base_gfn: int, npages: int) -> bool:
        return any(k is not None and k != key
                   for _, _, k in kvm.gfn_slots.runs(base_gfn, base_gfn + npages))

    def _delete_memslot(self, kvm: Vm, slot: Memslot) -> None:
        self.unbind_private(kvm, slot)
        kvm.gfn_slots.set(slot.base_gfn, slot.base_gfn + slot.npages, None)
        del kvm.memslots[slot.key]
        self.state.counters["kvm_zaps"] += 1
        self.state.counters["tlb_flushes"] += 1

    # --- private memory: the file kind's operations -------------------------------------------

    def bind_private(self, kvm: Vm, slot: Memslot, fd: int, offset: int) -> None:
        """kvm_gmem_bind (2022: the restricted memfd binding), errno in order."""
        fid = self.state.fds.get(fd if fd < 1 << 31 else fd - (1 << 32))
        if fid is None:
            raise kernel_error(errno.EBADF, f"fd {fd} is not open")
        f = self.state.files[fid]
        kind = self.design.kvm.private_file.value
        if f.kind != kind:
            raise kernel_error(errno.EINVAL, f"fd {fd} is a {f.kind} fd, not a {kind} file")
        bind = self.core.ops[kind].bind
        assert bind is not None  # every kind that backs private memory binds
        bind(kvm, slot, f, offset)
        slot.private_bound = True

    def unbind_private(self, kvm: Vm, slot: Memslot) -> None:
        if slot.private_file is None:
            return
        f = self.state.files.get(slot.private_file)
        if f is None:
            slot.private_file = None
            return
        unbind = self.core.ops[f.kind].unbind
        assert unbind is not None
        unbind(kvm, slot)

    def private_backing(self, kvm: Vm, slot: Memslot, gfn: int) -> Backing:
        """The page behind a private (or gmem-only) guest access, or the errno
        kvm_gmem_get_pfn fails with."""
        f = self.state.files.get(slot.private_file) if slot.private_file is not None else None
        if f is None:
            return errno.EFAULT  # no file, or released: kvm_gmem_get_file() is NULL
        backing = self.core.ops[f.kind].private_backing
        assert backing is not None
        return backing(kvm, slot, gfn)

    def get_pfn(self, fd: int, index: int) -> int:
        f = self.core.file(fd)
        return self._pfn_op(fd, f, self.core.ops[f.kind].get_pfn)(f, index)

    def put_pfn(self, fd: int, index: int) -> int:
        f = self.core.file(fd)
        return self._pfn_op(fd, f, self.core.ops[f.kind].put_pfn)(f, index)

    @staticmethod
    def _pfn_op(fd: int, f: OpenFile, op: PfnOp | None) -> PfnOp:
        """Only a restricted memfd or a guest_memfd hands KVM its pages."""
        if op is None:
            raise kernel_error(errno.EINVAL, f"fd {fd} is a {f.kind} fd, not a restricted memfd "
                               "or a guest_memfd")
        return op

    # --- memory attributes -------------------------------------------------------------------

    def set_memory_attributes(self, vm: int, address: int, size: int, attributes: int,
                              flags: int = 0) -> int:
        kvm = self.core.vm_of(vm)
        first, last, attributes = self.attributes_checks(kvm, address, size, attributes, flags)
        self._set_attributes(kvm, first, last, attributes)
        return 0

    def attributes_checks(self, kvm: Vm, address: int, size: int, attributes: int,
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
        # A restricted memfd bound in the range may refuse (restricted_kvm.py).
        self.restricted_kvm.conversion_check(kvm, first, last, attributes)
        return first, last, attributes

    def _set_attributes(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        if kvm.attributes.all_equal(first, last, attributes):
            return
        # Between the zap and the store the conversion is in progress; the
        # atomic operation passes through that state without stopping (the
        # stepwise one, model/steps.py, stops there).
        kvm.converting = True
        self.state.counters["kvm_zaps"] += 1
        self.state.counters["tlb_flushes"] += 1
        self.store_attributes(kvm, first, last, attributes)
        kvm.converting = False

    def store_attributes(self, kvm: Vm, first: int, last: int, attributes: int) -> None:
        kvm.attributes.set(first, last, attributes)
        if attributes & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE:
            self.restricted_kvm.audit_private(kvm, first, last)

    def gfn_private(self, kvm: Vm, gfn: int) -> bool | None:
        """Whether the guest may access gfn as private (True) or shared (False),
        or neither (None: an in-place unshare still pending).  The file's own
        attribute where its inode keeps one (in-place designs), else the VM's."""
        key = kvm.gfn_slots[gfn] if gfn < kvm.gfn_slots.limit else None
        slot = kvm.memslots.get(key) if key is not None else None
        f = self.state.files.get(slot.private_file) \
            if slot is not None and slot.private_file is not None else None
        inode = self.state.inodes[f.inode] if f is not None else None
        if slot is None or inode is None or inode.attributes is None:
            return bool(kvm.attributes[gfn] & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        attr = inode.attributes[slot.private_pgoff + gfn - slot.base_gfn]
        return None if attr == NONE_SHARED else attr == PRIVATE

    def kvm_private(self, kvm: Vm, gfn: int) -> bool:
        """kvm_mem_is_private: whether KVM holds gfn private (an unshare still
        pending counts: the guest asked for it)."""
        return self.design.kvm.has_private_mem(kvm.type) and self.gfn_private(kvm, gfn) is not False

    # --- SNP and TDX: the pre-boot (measured) phase -------------------------------------------

    def populate(self, vm: int, gpa: int, data: bytes) -> int:
        kvm = self.core.vm_of(vm)
        if not self.design.kvm.has_private_mem(kvm.type):
            raise kernel_error(errno.EINVAL, "the VM has no private memory")
        if kvm.launched and kvm.type in NO_NONZERO_AFTER_LAUNCH and any(data):
            raise kernel_error(errno.EPERM, "non-zero data after launch_finish")
        pos, end = gpa, gpa + len(data)
        while pos < end:
            gfn = pos >> SHIFT
            stop = min(end, (gfn + 1) << SHIFT)
            key = kvm.gfn_slots[gfn] if gfn < kvm.gfn_slots.limit else None
            slot = kvm.memslots.get(key) if key is not None else None
            if slot is None or not slot.private_bound:
                raise kernel_error(errno.EINVAL, f"gfn {gfn:#x} is not in a private memslot")
            if not kvm.attributes[gfn] & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE:
                raise kernel_error(errno.EINVAL, f"gfn {gfn:#x} is not private")
            backing = self.private_backing(kvm, slot, gfn)
            if isinstance(backing, int):
                raise kernel_error(backing, f"gfn {gfn:#x}: its page cannot be taken")
            store, index = backing
            pages.write(store, (index << SHIFT) | (pos & (P - 1)), data[pos - gpa:stop - gpa])
            pos = stop
        return 0

    def launch_finish(self, vm: int) -> int:
        kvm = self.core.vm_of(vm)
        if not self.design.kvm.has_private_mem(kvm.type) or kvm.launched:
            raise kernel_error(errno.EINVAL, "no pre-boot phase to finish")
        kvm.launched = True
        return 0
