/*
 * The C baselines of bench/host_bench.py, written for it and compiled by it
 * with the system compiler.  Two measurements, each printed as one JSON line:
 *
 *   host_baseline exits GUEST.bin N
 *       A real-mode guest (the bytes of gmemlab/vmm/guests/outloop.s, which
 *       host_bench.py assembles and passes in) runs an endless `out` loop;
 *       KVM_RUN is called N times, each must end in KVM_EXIT_IO on the guest's
 *       port.  Prints exits per second of the loop alone.
 *
 *   host_baseline copy REGION SIZE SWEEPS
 *       A guest_memfd (MMAP|INIT_SHARED) of REGION bytes is mapped and
 *       prefaulted; memcpy then writes SIZE-byte chunks at successive offsets
 *       over the whole region SWEEPS times, and reads them back the same way
 *       into one reused buffer and into a freshly malloc'ed one per chunk (what
 *       a copy that returns new memory must do).  Prints GB/s (1e9 B/s).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Older distribution headers predate guest_memfd (Linux 6.8): the uAPI. */
#ifndef KVM_CREATE_GUEST_MEMFD
struct kvm_create_guest_memfd {
	__u64 size;
	__u64 flags;
	__u64 reserved[6];
};
#define KVM_CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)
#endif

static void die(const char *what)
{
	fprintf(stderr, "host_baseline: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int exits(const char *guest_path, long n)
{
	int kvm, vm, vcpu, fd;
	long run_size, i;
	uint8_t *mem;
	struct kvm_run *run;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_userspace_memory_region region;
	ssize_t len;
	uint16_t port = 0;
	double t0, t1;

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	mem = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	fd = open(guest_path, O_RDONLY);
	if (fd < 0)
		die(guest_path);
	len = read(fd, mem, 0x10000);
	if (len <= 0)
		die("read guest");
	close(fd);
	region = (struct kvm_userspace_memory_region){
		.slot = 0, .guest_phys_addr = 0, .memory_size = 0x10000,
		.userspace_addr = (uint64_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rip = 0;
	regs.rflags = 2;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");

	t0 = now();
	for (i = 0; i < n; i++) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (run->exit_reason != KVM_EXIT_IO) {
			fprintf(stderr, "host_baseline: exit %u, expected KVM_EXIT_IO\n",
				run->exit_reason);
			return 1;
		}
		if (i == 0)
			port = run->io.port;
		else if (run->io.port != port)
			return 1;
	}
	t1 = now();
	printf("{\"exits\": %ld, \"seconds\": %.6f, \"exits_per_s\": %.1f, \"port\": %u}\n",
	       n, t1 - t0, n / (t1 - t0), port);
	return 0;
}

static int copy(long region_size, long size, int sweeps, int use_gmem)
{
	int kvm, vm, gmem, s;
	uint8_t *map, *src, *dst, *fresh;
	struct kvm_create_guest_memfd args = { .size = region_size, .flags = 3 };
	double t0, w, r, ra;
	long off;

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	if (use_gmem) {
		gmem = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &args);
		if (gmem < 0)
			die("KVM_CREATE_GUEST_MEMFD");
	} else {
		/* A kernel without guest_memfd: the same copies through a memfd. */
		gmem = memfd_create("host_baseline", 0);
		if (gmem < 0 || ftruncate(gmem, region_size) < 0)
			die("memfd");
	}
	map = mmap(NULL, region_size, PROT_READ | PROT_WRITE, MAP_SHARED, gmem, 0);
	if (map == MAP_FAILED)
		die("mmap guest_memfd");
	memset(map, 1, region_size);
	src = malloc(size);
	dst = malloc(size);
	if (!src || !dst)
		die("malloc");
	memset(src, 0x5a, size);
	memset(dst, 0, size);

	t0 = now();
	for (s = 0; s < sweeps; s++)
		for (off = 0; off + size <= region_size; off += size)
			memcpy(map + off, src, size);
	w = now() - t0;
	t0 = now();
	for (s = 0; s < sweeps; s++)
		for (off = 0; off + size <= region_size; off += size)
			memcpy(dst, map + off, size);
	r = now() - t0;
	t0 = now();
	for (s = 0; s < sweeps; s++)
		for (off = 0; off + size <= region_size; off += size) {
			fresh = malloc(size);
			if (!fresh)
				die("malloc");
			memcpy(fresh, map + off, size);
			/* keep the copy from being optimised away */
			__asm__ volatile("" : : "r"(fresh) : "memory");
			free(fresh);
		}
	ra = now() - t0;
	printf("{\"size\": %ld, \"write_gbps\": %.3f, \"read_gbps\": %.3f, \"read_alloc_gbps\": %.3f}\n",
	       size, (double)region_size * sweeps / w / 1e9, (double)region_size * sweeps / r / 1e9,
	       (double)region_size * sweeps / ra / 1e9);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "exits"))
		return exits(argv[2], atol(argv[3]));
	if (argc == 6 && !strcmp(argv[1], "copy"))
		return copy(atol(argv[2]), atol(argv[3]), atoi(argv[4]), !strcmp(argv[5], "gmem"));
	fprintf(stderr, "usage: host_baseline exits GUEST.bin N | copy REGION SIZE SWEEPS gmem|memfd\n");
	return 2;
}
