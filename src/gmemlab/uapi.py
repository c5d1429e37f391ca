"""Every uAPI constant, flag, struct layout and ioctl number gmemlab uses.

x86-64, little-endian, Linux 6.18 (include/uapi/linux/kvm.h, asm/kvm.h,
linux/falloc.h, asm-generic/mman*.h).  Both kernels (model and host) take their
numbers from here and nowhere else, so a value that is wrong is wrong once.
Struct sizes are asserted at import: a layout that drifts from the kernel's
fails loudly instead of passing garbage to an ioctl.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Mapping

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# --- ioctl encoding (include/uapi/asm-generic/ioctl.h) -----------------------

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    assert 0 <= size < (1 << _IOC_SIZEBITS)
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOW(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOWR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


KVMIO = 0xAE

# --- struct layouts ------------------------------------------------------------

# struct kvm_create_guest_memfd { u64 size; u64 flags; u64 reserved[6]; }
KVM_CREATE_GUEST_MEMFD_STRUCT = struct.Struct("<QQ6Q")
# struct kvm_userspace_memory_region { u32 slot; u32 flags; u64 gpa, size, uaddr; }
KVM_USERSPACE_MEMORY_REGION_STRUCT = struct.Struct("<IIQQQ")
# struct kvm_userspace_memory_region2: v1 fields, then guest_memfd_offset,
# guest_memfd (u32), pad1 (u32), pad2[14]
KVM_USERSPACE_MEMORY_REGION2_STRUCT = struct.Struct("<IIQQQQII14Q")
# struct kvm_memory_attributes { u64 address, size, attributes, flags; }
KVM_MEMORY_ATTRIBUTES_STRUCT = struct.Struct("<QQQQ")
# struct kvm_memory_attributes2 (in-place conversion, v8): offset, size, attributes,
# flags, error_offset (written back on EAGAIN and ENOMEM), reserved[11]
KVM_MEMORY_ATTRIBUTES2_STRUCT = struct.Struct("<QQQQQ11Q")
# struct kvm_enable_cap { u32 cap; u32 flags; u64 args[4]; u8 pad[64]; }
KVM_ENABLE_CAP_STRUCT = struct.Struct("<II4Q64x")
# struct kvm_pre_fault_memory { u64 gpa, size, flags, padding[5]; }
KVM_PRE_FAULT_MEMORY_STRUCT = struct.Struct("<QQQ5Q")

assert KVM_CREATE_GUEST_MEMFD_STRUCT.size == 64
assert KVM_USERSPACE_MEMORY_REGION_STRUCT.size == 32
assert KVM_USERSPACE_MEMORY_REGION2_STRUCT.size == 160
assert KVM_MEMORY_ATTRIBUTES_STRUCT.size == 32
assert KVM_MEMORY_ATTRIBUTES2_STRUCT.size == 128
assert KVM_ENABLE_CAP_STRUCT.size == 104
assert KVM_PRE_FAULT_MEMORY_STRUCT.size == 64

# struct kvm_run (x86): the header, then the exit union at offset 32.
KVM_RUN_SIZE = 2352
KVM_RUN_HEADER = struct.Struct("<BB6xIBBHQQ")  # up to the exit union
KVM_RUN_EXIT_OFFSET = 32
KVM_RUN_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
KVM_RUN_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data[8], len, is_write
KVM_RUN_MEMORY_FAULT = struct.Struct("<QQQ")  # flags, gpa, size
KVM_RUN_HYPERCALL = struct.Struct("<Q6QQQ")  # nr, args[6], ret, flags
KVM_RUN_INTERNAL = struct.Struct("<II")  # suberror, ndata
KVM_RUN_FAIL_ENTRY = struct.Struct("<QI")  # hardware_entry_failure_reason, cpu
KVM_RUN_VALID_REGS_OFFSET = 288
KVM_RUN_IMMEDIATE_EXIT_OFFSET = 1  # u8 immediate_exit, after request_interrupt_window
KVM_RUN_EXCEPTION = struct.Struct("<II")  # exception, error_code
KVM_RUN_SYSTEM_EVENT = struct.Struct("<II")  # type, ndata
assert KVM_RUN_HEADER.size == KVM_RUN_EXIT_OFFSET
assert KVM_RUN_EXIT_OFFSET + 256 == KVM_RUN_VALID_REGS_OFFSET
assert KVM_RUN_HYPERCALL.size == 72
assert KVM_RUN_IO.size == 16
assert KVM_RUN_MMIO.size == 21  # packed as in the union: len at 16, is_write at 20
assert KVM_RUN_MEMORY_FAULT.size == 24

# --- vCPU registers (asm/kvm.h) -------------------------------------------------------

# struct kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
KVM_REGS_STRUCT = struct.Struct("<18Q")
KVM_REGS_FIELDS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                   "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
# struct kvm_segment { u64 base; u32 limit; u16 selector; u8 type, present, dpl,
#                      db, s, l, g, avl, unusable, padding; }
KVM_SEGMENT_STRUCT = struct.Struct("<QIH10B")
KVM_SEGMENT_FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g",
                      "avl", "unusable", "padding")
# struct kvm_dtable { u64 base; u16 limit; u16 padding[3]; }
KVM_DTABLE_STRUCT = struct.Struct("<QH6x")
# struct kvm_sregs: cs ds es fs gs ss tr ldt (segments), gdt idt (dtables),
# cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap[4]
KVM_SREGS_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
KVM_SREGS_DTABLES = ("gdt", "idt")
KVM_SREGS_CONTROL = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
KVM_SREGS_SIZE = 312
KVM_SREGS_DTABLE_OFFSET = 8 * KVM_SEGMENT_STRUCT.size
KVM_SREGS_CONTROL_OFFSET = KVM_SREGS_DTABLE_OFFSET + 2 * KVM_DTABLE_STRUCT.size
KVM_SREGS_CONTROL_STRUCT = struct.Struct("<7Q")
assert KVM_REGS_STRUCT.size == 144
assert KVM_SEGMENT_STRUCT.size == 24
assert KVM_DTABLE_STRUCT.size == 16
assert KVM_SREGS_CONTROL_OFFSET + KVM_SREGS_CONTROL_STRUCT.size + 4 * 8 == KVM_SREGS_SIZE

# struct kvm_cpuid2 { u32 nent; u32 padding; struct kvm_cpuid_entry2 entries[]; }
KVM_CPUID2_HEADER = struct.Struct("<II")
# struct kvm_cpuid_entry2 { u32 function, index, flags, eax, ebx, ecx, edx, padding[3]; }
KVM_CPUID_ENTRY2_STRUCT = struct.Struct("<7I12x")
KVM_MAX_CPUID_ENTRIES = 256
assert KVM_CPUID2_HEADER.size == 8
assert KVM_CPUID_ENTRY2_STRUCT.size == 40

# struct kvm_signal_mask { u32 len; u8 sigset[]; }: the kernel's sigset is 64 bits.
KVM_SIGNAL_MASK_HEADER = struct.Struct("<I")
KERNEL_SIGSET_SIZE = 8
assert KVM_SIGNAL_MASK_HEADER.size == 4

# --- ioctl numbers -------------------------------------------------------------

KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, KVM_CPUID2_HEADER.size)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, KVM_USERSPACE_MEMORY_REGION_STRUCT.size)
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, KVM_USERSPACE_MEMORY_REGION2_STRUCT.size)
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, KVM_REGS_STRUCT.size)
KVM_SET_REGS = _IOW(KVMIO, 0x82, KVM_REGS_STRUCT.size)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, KVM_SREGS_SIZE)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, KVM_SREGS_SIZE)
KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8B, KVM_SIGNAL_MASK_HEADER.size)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, KVM_CPUID2_HEADER.size)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, KVM_ENABLE_CAP_STRUCT.size)
KVM_SET_MEMORY_ATTRIBUTES = _IOW(KVMIO, 0xD2, KVM_MEMORY_ATTRIBUTES_STRUCT.size)
KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xD4, KVM_CREATE_GUEST_MEMFD_STRUCT.size)
# A guest_memfd ioctl of the in-place conversion series (v8): the same number
# as the VM's KVM_SET_MEMORY_ATTRIBUTES, another direction and size.
KVM_SET_MEMORY_ATTRIBUTES2 = _IOWR(KVMIO, 0xD2, KVM_MEMORY_ATTRIBUTES2_STRUCT.size)
KVM_PRE_FAULT_MEMORY = _IOWR(KVMIO, 0xD5, KVM_PRE_FAULT_MEMORY_STRUCT.size)

assert KVM_CREATE_VM == 0xAE01
assert KVM_SET_USER_MEMORY_REGION == 0x4020AE46
assert KVM_SET_USER_MEMORY_REGION2 == 0x40A0AE49
assert KVM_ENABLE_CAP == 0x4068AEA3
assert KVM_SET_MEMORY_ATTRIBUTES == 0x4020AED2
assert KVM_CREATE_GUEST_MEMFD == 0xC040AED4
assert KVM_SET_MEMORY_ATTRIBUTES2 == 0xC080AED2
assert KVM_PRE_FAULT_MEMORY == 0xC040AED5
assert KVM_GET_SUPPORTED_CPUID == 0xC008AE05
assert KVM_GET_REGS == 0x8090AE81
assert KVM_SET_REGS == 0x4090AE82
assert KVM_GET_SREGS == 0x8138AE83
assert KVM_SET_SREGS == 0x4138AE84
assert KVM_SET_SIGNAL_MASK == 0x4004AE8B
assert KVM_SET_CPUID2 == 0x4008AE90

KVM_API_VERSION = 12

# --- guest_memfd and memslot flags ---------------------------------------------

GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1
# Proposed (Patrick Roy's series for Firecracker's secret hiding, not merged as
# of 2026): the file's folios leave the kernel's direct map.
GUEST_MEMFD_FLAG_NO_DIRECT_MAP = 1 << 2

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3

KVM_USER_MEM_SLOTS = 32764  # x86: SHRT_MAX - 3 internal slots
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1
# x86 with 4-level paging: 52-bit guest physical addresses at most; the
# arch prepare hook refuses a slot ending above kvm_mmu_max_gfn().
KVM_MAX_GFN = (1 << 52 - PAGE_SHIFT) - 1

# --- VM types (asm/kvm.h), plus the model's arm64 protected VM --------------------

KVM_X86_DEFAULT_VM = 0
KVM_X86_SW_PROTECTED_VM = 1
KVM_X86_SEV_VM = 2
KVM_X86_SEV_ES_VM = 3
KVM_X86_SNP_VM = 4
KVM_X86_TDX_VM = 5
# Not an x86 type: the model's stand-in for an arm64 pKVM protected VM.
MODEL_PKVM_VM = 0x100

VM_TYPES: Mapping[str, int] = {
    "default": KVM_X86_DEFAULT_VM,
    "sw_protected": KVM_X86_SW_PROTECTED_VM,
    "sev": KVM_X86_SEV_VM,
    "sev_es": KVM_X86_SEV_ES_VM,
    "snp": KVM_X86_SNP_VM,
    "tdx": KVM_X86_TDX_VM,
    "pkvm": MODEL_PKVM_VM,
}

# --- capabilities ---------------------------------------------------------------

KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_READONLY_MEM = 81
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_MULTI_ADDRESS_SPACE = 118
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236
KVM_CAP_GUEST_MEMFD_FLAGS = 244
# In-place conversion (v8, not merged): which attributes a guest_memfd keeps itself.
KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES = 250

CAPS: Mapping[str, int] = {
    "NR_MEMSLOTS": KVM_CAP_NR_MEMSLOTS,
    "READONLY_MEM": KVM_CAP_READONLY_MEM,
    "CHECK_EXTENSION_VM": KVM_CAP_CHECK_EXTENSION_VM,
    "MULTI_ADDRESS_SPACE": KVM_CAP_MULTI_ADDRESS_SPACE,
    "EXIT_HYPERCALL": KVM_CAP_EXIT_HYPERCALL,
    "USER_MEMORY2": KVM_CAP_USER_MEMORY2,
    "MEMORY_FAULT_INFO": KVM_CAP_MEMORY_FAULT_INFO,
    "MEMORY_ATTRIBUTES": KVM_CAP_MEMORY_ATTRIBUTES,
    "GUEST_MEMFD": KVM_CAP_GUEST_MEMFD,
    "VM_TYPES": KVM_CAP_VM_TYPES,
    "PRE_FAULT_MEMORY": KVM_CAP_PRE_FAULT_MEMORY,
    "GUEST_MEMFD_FLAGS": KVM_CAP_GUEST_MEMFD_FLAGS,
    "GUEST_MEMFD_MEMORY_ATTRIBUTES": KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES,
}

KVM_HC_MAP_GPA_RANGE = 12
KVM_EXIT_HYPERCALL_VALID_MASK = 1 << KVM_HC_MAP_GPA_RANGE

# --- exit reasons ----------------------------------------------------------------

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_MEMORY_FAULT = 39

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# The local APIC's default base (asm/apicdef.h): KVM's emulator treats this
# guest physical page as MMIO whatever memslot covers it (vcpu_is_mmio_gpa).
APIC_DEFAULT_PHYS_BASE = 0xFEE00000

EXIT_NAMES: Mapping[int, str] = {
    KVM_EXIT_UNKNOWN: "unknown",
    KVM_EXIT_EXCEPTION: "exception",
    KVM_EXIT_IO: "io",
    KVM_EXIT_HYPERCALL: "hypercall",
    KVM_EXIT_DEBUG: "debug",
    KVM_EXIT_HLT: "hlt",
    KVM_EXIT_MMIO: "mmio",
    KVM_EXIT_SHUTDOWN: "shutdown",
    KVM_EXIT_FAIL_ENTRY: "fail_entry",
    KVM_EXIT_INTR: "intr",
    KVM_EXIT_INTERNAL_ERROR: "internal_error",
    KVM_EXIT_SYSTEM_EVENT: "system_event",
    KVM_EXIT_MEMORY_FAULT: "memory_fault",
}

# --- fallocate (linux/falloc.h) ---------------------------------------------------

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_NO_HIDE_STALE = 0x04
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
FALLOC_FL_UNSHARE_RANGE = 0x40
# Every mode bit vfs_fallocate knows; others are EOPNOTSUPP there.
FALLOC_FL_SUPPORTED_MASK = (
    FALLOC_FL_KEEP_SIZE
    | FALLOC_FL_PUNCH_HOLE
    | FALLOC_FL_COLLAPSE_RANGE
    | FALLOC_FL_ZERO_RANGE
    | FALLOC_FL_INSERT_RANGE
    | FALLOC_FL_UNSHARE_RANGE
)

# --- mmap family (asm-generic/mman-common.h, x86) ------------------------------------

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_FIXED_NOREPLACE = 0x100000

MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4

MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_COLLAPSE = 25

SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2

MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_HUGETLB = 0x0004

S_IFREG = 0o100000

# statfs f_type of 6.18's anon-inode based guest_memfd, and of the guest_memfd
# pseudo-filesystem every guest_memfd lives on from Linux 6.19
ANON_INODE_FS_MAGIC = 0x09041934
GUEST_MEMFD_MAGIC = 0x474D454D

# --- NUMA memory policy (uapi/linux/mempolicy.h) ------------------------------------------

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_INTERLEAVE = 3
MPOL_LOCAL = 4
MPOL_PREFERRED_MANY = 5
MPOL_WEIGHTED_INTERLEAVE = 6  # Linux 6.9
# Mode flags, or-ed into the mode of mbind and set_mempolicy.
MPOL_F_NUMA_BALANCING = 1 << 13
MPOL_F_RELATIVE_NODES = 1 << 14
MPOL_F_STATIC_NODES = 1 << 15
MPOL_MODE_FLAGS = MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES | MPOL_F_NUMA_BALANCING
# get_mempolicy flags
MPOL_F_NODE = 1 << 0
MPOL_F_ADDR = 1 << 1
MPOL_F_MEMS_ALLOWED = 1 << 2
# mbind flags
MPOL_MF_STRICT = 1 << 0
MPOL_MF_MOVE = 1 << 1
MPOL_MF_MOVE_ALL = 1 << 2
MPOL_MF_VALID = MPOL_MF_STRICT | MPOL_MF_MOVE | MPOL_MF_MOVE_ALL

# --- named flag sets for case files ----------------------------------------------------

PROT_NAMES: Mapping[str, int] = {
    "NONE": PROT_NONE, "READ": PROT_READ, "WRITE": PROT_WRITE, "EXEC": PROT_EXEC,
}
MAP_NAMES: Mapping[str, int] = {
    "SHARED": MAP_SHARED, "PRIVATE": MAP_PRIVATE, "SHARED_VALIDATE": MAP_SHARED_VALIDATE,
    "FIXED": MAP_FIXED, "ANONYMOUS": MAP_ANONYMOUS, "ANON": MAP_ANONYMOUS,
    "NORESERVE": MAP_NORESERVE, "POPULATE": MAP_POPULATE,
    "FIXED_NOREPLACE": MAP_FIXED_NOREPLACE,
}
FALLOC_NAMES: Mapping[str, int] = {
    "KEEP_SIZE": FALLOC_FL_KEEP_SIZE, "PUNCH_HOLE": FALLOC_FL_PUNCH_HOLE,
    "NO_HIDE_STALE": FALLOC_FL_NO_HIDE_STALE, "COLLAPSE_RANGE": FALLOC_FL_COLLAPSE_RANGE,
    "ZERO_RANGE": FALLOC_FL_ZERO_RANGE, "INSERT_RANGE": FALLOC_FL_INSERT_RANGE,
    "UNSHARE_RANGE": FALLOC_FL_UNSHARE_RANGE,
}
GUEST_MEMFD_FLAG_NAMES: Mapping[str, int] = {
    "MMAP": GUEST_MEMFD_FLAG_MMAP, "INIT_SHARED": GUEST_MEMFD_FLAG_INIT_SHARED,
    "NO_DIRECT_MAP": GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
}
MEMSLOT_FLAG_NAMES: Mapping[str, int] = {
    "LOG_DIRTY_PAGES": KVM_MEM_LOG_DIRTY_PAGES, "READONLY": KVM_MEM_READONLY,
    "GUEST_MEMFD": KVM_MEM_GUEST_MEMFD,
}
ATTRIBUTE_NAMES: Mapping[str, int] = {"PRIVATE": KVM_MEMORY_ATTRIBUTE_PRIVATE, "SHARED": 0}
MREMAP_NAMES: Mapping[str, int] = {
    "MAYMOVE": MREMAP_MAYMOVE, "FIXED": MREMAP_FIXED, "DONTUNMAP": MREMAP_DONTUNMAP,
}
MADV_NAMES: Mapping[str, int] = {
    "NORMAL": MADV_NORMAL, "RANDOM": MADV_RANDOM, "SEQUENTIAL": MADV_SEQUENTIAL,
    "WILLNEED": MADV_WILLNEED, "DONTNEED": MADV_DONTNEED, "FREE": MADV_FREE,
    "REMOVE": MADV_REMOVE, "DONTFORK": MADV_DONTFORK, "DOFORK": MADV_DOFORK,
    "HUGEPAGE": MADV_HUGEPAGE, "NOHUGEPAGE": MADV_NOHUGEPAGE, "COLLAPSE": MADV_COLLAPSE,
    "MERGEABLE": MADV_MERGEABLE, "UNMERGEABLE": MADV_UNMERGEABLE, "DONTDUMP": MADV_DONTDUMP,
    "DODUMP": MADV_DODUMP, "WIPEONFORK": MADV_WIPEONFORK, "KEEPONFORK": MADV_KEEPONFORK,
    "COLD": MADV_COLD, "PAGEOUT": MADV_PAGEOUT, "POPULATE_READ": MADV_POPULATE_READ,
    "POPULATE_WRITE": MADV_POPULATE_WRITE,
}
MPOL_MODE_NAMES: Mapping[str, int] = {
    "DEFAULT": MPOL_DEFAULT, "PREFERRED": MPOL_PREFERRED, "BIND": MPOL_BIND,
    "INTERLEAVE": MPOL_INTERLEAVE, "LOCAL": MPOL_LOCAL, "PREFERRED_MANY": MPOL_PREFERRED_MANY,
    "WEIGHTED_INTERLEAVE": MPOL_WEIGHTED_INTERLEAVE, "STATIC_NODES": MPOL_F_STATIC_NODES,
    "RELATIVE_NODES": MPOL_F_RELATIVE_NODES, "NUMA_BALANCING": MPOL_F_NUMA_BALANCING,
}
MPOL_GET_FLAG_NAMES: Mapping[str, int] = {
    "NODE": MPOL_F_NODE, "ADDR": MPOL_F_ADDR, "MEMS_ALLOWED": MPOL_F_MEMS_ALLOWED,
}
MBIND_FLAG_NAMES: Mapping[str, int] = {
    "STRICT": MPOL_MF_STRICT, "MOVE": MPOL_MF_MOVE, "MOVE_ALL": MPOL_MF_MOVE_ALL,
}
SEEK_NAMES: Mapping[str, int] = {"SET": SEEK_SET, "CUR": SEEK_CUR, "END": SEEK_END}
MFD_NAMES: Mapping[str, int] = {
    "CLOEXEC": MFD_CLOEXEC, "ALLOW_SEALING": MFD_ALLOW_SEALING, "HUGETLB": MFD_HUGETLB,
}
CAP_ENABLE_ARG_NAMES: Mapping[str, int] = {"MAP_GPA_RANGE": KVM_EXIT_HYPERCALL_VALID_MASK}

# pKVM stage-2 permissions (enum kvm_pgtable_prot: X = bit 0, W = bit 1, R = bit 2).
PKVM_PROT_NAMES: Mapping[str, int] = {"X": 1, "W": 2, "R": 4, "RWX": 7}

# Which names a flag-valued argument accepts, keyed by (operation, argument).
# An argument missing here takes integers only.
FLAG_ARGUMENTS: Mapping[tuple[str, str], Mapping[str, int]] = {
    ("mmap", "prot"): PROT_NAMES,
    ("mprotect", "prot"): PROT_NAMES,
    ("mmap", "flags"): MAP_NAMES,
    ("mremap", "flags"): MREMAP_NAMES,
    ("madvise", "advice"): MADV_NAMES,
    ("fallocate", "mode"): FALLOC_NAMES,
    ("create_guest_memfd", "flags"): GUEST_MEMFD_FLAG_NAMES,
    ("set_user_memory_region", "flags"): MEMSLOT_FLAG_NAMES,
    ("set_user_memory_region2", "flags"): MEMSLOT_FLAG_NAMES,
    ("set_memory_attributes", "attributes"): ATTRIBUTE_NAMES,
    ("set_memory_attributes2", "attributes"): ATTRIBUTE_NAMES,
    ("kvm_map_shared", "prot"): PROT_NAMES,
    ("pkvm_host_share_guest", "prot"): PKVM_PROT_NAMES,
    ("lseek", "whence"): SEEK_NAMES,
    ("memfd_create", "flags"): MFD_NAMES,
    ("create_vm", "type"): VM_TYPES,
    ("mbind", "mode"): MPOL_MODE_NAMES,
    ("mbind", "flags"): MBIND_FLAG_NAMES,
    ("set_mempolicy", "mode"): MPOL_MODE_NAMES,
    ("get_mempolicy", "flags"): MPOL_GET_FLAG_NAMES,
    ("check_extension", "cap"): CAPS,
    ("enable_cap", "cap"): CAPS,
}


def parse_flags(value: int | str, names: Mapping[str, int], what: str = "flags") -> int:
    """An integer, or names (or integers) joined by '|', as case files write flags.

    Names may carry their kernel prefix (``MAP_SHARED``, ``KVM_CAP_VM_TYPES``).
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected an integer or flag names, got a boolean")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected an integer or flag names, got {type(value).__name__}")
    upper = {k.upper(): v for k, v in names.items()}
    result = 0
    for part in (p.strip() for p in value.split("|")):
        if not part:
            raise ValueError(f"{what}: empty flag name in {value!r}")
        try:
            result |= int(part, 0)
            continue
        except ValueError:
            pass
        raw = part.upper()
        candidates = [raw] + [raw[len(p):] for p in _PREFIXES if raw.startswith(p)]
        candidates += [c[:-3] for c in candidates if c.endswith("_VM")]
        key = next((c for c in candidates if c in upper), None)
        if key is None:
            known = ", ".join(sorted(names))
            raise ValueError(f"{what}: unknown name {part!r} (known: {known})")
        result |= upper[key]
    return result


_PREFIXES = ("KVM_CAP_", "KVM_X86_", "KVM_MEMORY_ATTRIBUTE_", "GUEST_MEMFD_FLAG_", "KVM_MEM_",
             "FALLOC_FL_", "PROT_", "MAP_", "MADV_", "MREMAP_", "SEEK_", "MFD_", "MPOL_MF_",
             "MPOL_F_", "MPOL_")


# --- errno ------------------------------------------------------------------------------

# Kernel spelling first: Python calls 95 ENOTSUP, the kernel returns EOPNOTSUPP.
_ERRNO_CANONICAL: Mapping[int, str] = {
    _errno.EOPNOTSUPP: "EOPNOTSUPP",
    _errno.EAGAIN: "EAGAIN",
    _errno.EDEADLK: "EDEADLK",
}
EHWPOISON = 133


def errno_name(number: int) -> str:
    if number in _ERRNO_CANONICAL:
        return _ERRNO_CANONICAL[number]
    if number == EHWPOISON:
        return "EHWPOISON"
    return _errno.errorcode.get(number, f"E{number}")


def errno_number(name: str | int) -> int:
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    if not isinstance(name, str):
        raise ValueError(f"errno: expected a name like 'EINVAL', got {name!r}")
    key = name.strip().upper()
    if key == "EHWPOISON":
        return EHWPOISON
    value = getattr(_errno, key, None)
    if not isinstance(value, int) or not key.startswith("E"):
        raise ValueError(f"unknown errno name {name!r}")
    return value


SIGBUS = 7
SIGSEGV = 11
SIGNAL_NAMES: Mapping[str, int] = {"SIGBUS": SIGBUS, "SIGSEGV": SIGSEGV}


def signal_name(number: int) -> str:
    for name, value in SIGNAL_NAMES.items():
        if value == number:
            return name
    return f"SIG{number}"
