/* Stand-in for tools/testing/selftests/kvm/include/x86/processor.h (declarations only). */
#ifndef GMEMLAB_STANDIN_PROCESSOR_H
#define GMEMLAB_STANDIN_PROCESSOR_H

#include "kvm_util.h"

const struct kvm_cpuid2 *kvm_get_supported_cpuid(void);
void vcpu_init_cpuid(struct kvm_vcpu *vcpu, const struct kvm_cpuid2 *cpuid);

#endif
