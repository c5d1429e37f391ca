/* Stand-in for tools/testing/selftests/kvm/include/numaif.h (declarations only): the
 * NUMA policy system calls, each as NAME() returning the raw result and kvm_NAME()
 * asserting success. */
#ifndef GMEMLAB_STANDIN_NUMAIF_H
#define GMEMLAB_STANDIN_NUMAIF_H

#include "gmemlab_constants.h"

long get_mempolicy(int *policy, const unsigned long *nmask, unsigned long maxnode, void *addr,
		   int flags);
void kvm_get_mempolicy(int *policy, const unsigned long *nmask, unsigned long maxnode,
		       void *addr, int flags);
long set_mempolicy(int mode, const unsigned long *nmask, unsigned long maxnode);
void kvm_set_mempolicy(int mode, const unsigned long *nmask, unsigned long maxnode);
long mbind(void *addr, unsigned long size, int mode, const unsigned long *nodemask,
	   unsigned long maxnode, unsigned int flags);
void kvm_mbind(void *addr, unsigned long size, int mode, const unsigned long *nodemask,
	       unsigned long maxnode, unsigned int flags);

#endif
