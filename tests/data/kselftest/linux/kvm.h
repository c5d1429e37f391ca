/* Stand-in for <linux/kvm.h>: the structures gmemlab's kselftest exports touch. */
#ifndef GMEMLAB_STANDIN_LINUX_KVM_H
#define GMEMLAB_STANDIN_LINUX_KVM_H

#include <linux/types.h>
#include <sys/ioctl.h>
#include "gmemlab_constants.h"

struct kvm_create_guest_memfd {
	__u64 size, flags, reserved[6];
};

struct kvm_userspace_memory_region {
	__u32 slot, flags;
	__u64 guest_phys_addr, memory_size, userspace_addr;
};

struct kvm_userspace_memory_region2 {
	__u32 slot, flags;
	__u64 guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset;
	__u32 guest_memfd, pad1;
	__u64 pad2[14];
};

struct kvm_memory_attributes {
	__u64 address, size, attributes, flags;
};

struct kvm_memory_attributes2 {
	__u64 offset, size, attributes, flags, error_offset, reserved[11];
};

struct kvm_enable_cap {
	__u32 cap, flags;
	__u64 args[4];
	__u8 pad[64];
};

struct kvm_regs {
	__u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15;
	__u64 rip, rflags;
};

struct kvm_segment {
	__u64 base;
	__u32 limit;
	__u16 selector;
	__u8 type, present, dpl, db, s, l, g, avl, unusable, padding;
};

struct kvm_dtable {
	__u64 base;
	__u16 limit, padding[3];
};

struct kvm_sregs {
	struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
	struct kvm_dtable gdt, idt;
	__u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base, interrupt_bitmap[4];
};

struct kvm_cpuid_entry2 {
	__u32 function, index, flags, eax, ebx, ecx, edx, padding[3];
};

struct kvm_cpuid2 {
	__u32 nent, padding;
	struct kvm_cpuid_entry2 entries[];
};

struct kvm_run {
	__u8 request_interrupt_window, immediate_exit;
	__u8 padding1[6];
	__u32 exit_reason;
	__u8 ready_for_interrupt_injection, if_flag;
	__u16 flags;
	__u64 cr8, apic_base;
	union {
		struct {
			__u8 direction, size;
			__u16 port;
			__u32 count;
			__u64 data_offset;
		} io;
		struct {
			__u64 phys_addr;
			__u8 data[8];
			__u32 len;
			__u8 is_write;
		} mmio;
		struct {
			__u64 flags, gpa, size;
		} memory_fault;
		char padding[256];
	};
};

#endif
