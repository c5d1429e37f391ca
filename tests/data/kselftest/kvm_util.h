/* Stand-in for tools/testing/selftests/kvm/include/kvm_util.h (declarations only). */
#ifndef GMEMLAB_STANDIN_KVM_UTIL_H
#define GMEMLAB_STANDIN_KVM_UTIL_H

#include "test_util.h"
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/types.h>

#define KVM_DEV_PATH "/dev/kvm"

struct kvm_vm {
	int mode;
	unsigned long type;
	int kvm_fd;
	int fd;
};

struct kvm_vcpu {
	uint32_t id;
	int fd;
	struct kvm_vm *vm;
	struct kvm_run *run;
	struct kvm_cpuid2 *cpuid;
};

int open_kvm_dev_path_or_exit(void);
unsigned int kvm_check_cap(long cap);
static inline bool kvm_has_cap(long cap) { return kvm_check_cap(cap); }
int vm_check_cap(struct kvm_vm *vm, long cap);
int __vm_enable_cap(struct kvm_vm *vm, uint32_t cap, uint64_t arg0);
void vm_enable_cap(struct kvm_vm *vm, uint32_t cap, uint64_t arg0);

struct kvm_vm *vm_create_barebones(void);
struct kvm_vm *vm_create_barebones_type(unsigned long type);
void kvm_vm_free(struct kvm_vm *vmp);

#define __vm_ioctl(vm, cmd, arg) ioctl((vm)->fd, cmd, arg)

int __vm_create_guest_memfd(struct kvm_vm *vm, uint64_t size, uint64_t flags);
int vm_create_guest_memfd(struct kvm_vm *vm, uint64_t size, uint64_t flags);
void vm_set_user_memory_region(struct kvm_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa,
			       uint64_t size, void *hva);
int __vm_set_user_memory_region(struct kvm_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa,
				uint64_t size, void *hva);
void vm_set_user_memory_region2(struct kvm_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa,
				uint64_t size, void *hva, uint32_t guest_memfd,
				uint64_t guest_memfd_offset);
int __vm_set_user_memory_region2(struct kvm_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa,
				 uint64_t size, void *hva, uint32_t guest_memfd,
				 uint64_t guest_memfd_offset);
void vm_set_memory_attributes(struct kvm_vm *vm, uint64_t gpa, uint64_t size, uint64_t attributes);

/* KVM_SET_MEMORY_ATTRIBUTES2 on a guest_memfd (the in-place conversion series): the __
 * forms return the ioctl's result and store the error's offset when it fails. */
int __gmem_set_private(int fd, loff_t offset, uint64_t size, loff_t *error_offset);
int __gmem_set_shared(int fd, loff_t offset, uint64_t size, loff_t *error_offset);
void gmem_set_private(int fd, loff_t offset, uint64_t size);
void gmem_set_shared(int fd, loff_t offset, uint64_t size);

struct kvm_vcpu *__vm_vcpu_add(struct kvm_vm *vm, uint32_t vcpu_id);
void vcpu_regs_set(struct kvm_vcpu *vcpu, struct kvm_regs *regs);
void vcpu_sregs_get(struct kvm_vcpu *vcpu, struct kvm_sregs *sregs);
void vcpu_sregs_set(struct kvm_vcpu *vcpu, struct kvm_sregs *sregs);

#endif
