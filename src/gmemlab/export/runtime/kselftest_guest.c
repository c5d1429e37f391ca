/*
 * guest_access(): one guest load or store, as gmemlab performs it.
 *
 * The guest is gmemlab's access program (vmm/guests/access.s in gmemlab,
 * assembled bytes below), run in 64-bit mode on the test's vCPU.  It moves
 * [gpa, gpa + len) in ascending address order, each step the largest of 8,
 * 4, 2 and 1 bytes that is naturally aligned and no longer than what
 * remains, and reports completion with an OUT to ACCESS_DONE_PORT.  The
 * first step the guest's memory cannot serve ends the access with its exit
 * (MMIO, or a memory fault).
 *
 * The program needs memory of its own in the guest: one RUNNER_SIZE memslot
 * (code, page tables, GDT, IDT, stack, a buffer) under the slot id the test
 * passes, added for the run and deleted after it, at the highest
 * RUNNER_SIZE-aligned guest physical range below MAXPHYADDR that overlaps
 * none of the test's memslots (slots[]) and not the 4 MiB around the
 * accessed range.  Guest virtual addresses: the runner at RUNNER_VA, the
 * accessed range's 2 MiB pages at WINDOW_VA.
 */
enum { GUEST_EXIT_NONE, GUEST_EXIT_MMIO, GUEST_EXIT_MEMORY_FAULT };

struct guest_access {
	int exit;
	uint64_t gpa, size, flags; /* MMIO: gpa, size; memory fault: gpa, size, flags */
	int err;                   /* memory fault: KVM_RUN's errno */
	bool write;                /* MMIO: the access was a write */
	const uint8_t *data;       /* a completed load's bytes */
};

struct gpa_range {
	uint64_t gpa, size;
};

static uint8_t *runner;

static unsigned int guest_phys_bits(void)
{
	const struct kvm_cpuid2 *cpuid = kvm_get_supported_cpuid();

	for (uint32_t i = 0; i < cpuid->nent; i++)
		if (cpuid->entries[i].function == 0x80000008 && (cpuid->entries[i].eax & 0xff))
			return cpuid->entries[i].eax & 0xff;
	return 36;
}

static void runner_init(void)
{
	runner = mmap(NULL, RUNNER_SIZE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	TEST_ASSERT(runner != MAP_FAILED, "mmap of the access program's memory failed");
	memcpy(runner + RUNNER_GDT, runner_gdt, sizeof(runner_gdt));
	for (int v = 0; v < 32; v++) {
		uint64_t handler = RUNNER_VA + RUNNER_CODE + ACCESS_VECTORS + v * ACCESS_VECTOR_SIZE;
		uint32_t *gate = (uint32_t *)(runner + RUNNER_IDT + 16 * v);

		/* 64-bit interrupt gate: present, DPL 0, type 0xE, the code segment */
		gate[0] = (handler & 0xffff) | RUNNER_SEL_CODE << 16;
		gate[1] = (handler & 0xffff0000) | 0x8e00;
		gate[2] = handler >> 32;
		gate[3] = 0;
	}
	memcpy(runner + RUNNER_CODE, access_code, sizeof(access_code));
}

/* Where the runner goes: free, reachable, away from the access. */
static uint64_t runner_place(const struct gpa_range *slots, int nslots, uint64_t gpa)
{
	unsigned int bits = guest_phys_bits();
	uint64_t top = 1ull << (bits < 52 ? bits : 52);
	uint64_t window = gpa & ~(LARGE_PAGE - 1);
	int64_t base = (top - RUNNER_SIZE) & ~(RUNNER_SIZE - 1);

	while (base >= 0) {
		uint64_t end = base + RUNNER_SIZE, low = UINT64_MAX;

		for (int i = 0; i <= nslots; i++) {
			uint64_t s = i < nslots ? slots[i].gpa : window;
			uint64_t n = i < nslots ? slots[i].size : 2 * LARGE_PAGE;

			if (s < end && (uint64_t)base < s + n && s < low)
				low = s;
		}
		if (low == UINT64_MAX)
			return base;
		base = (int64_t)((low - RUNNER_SIZE) & ~(RUNNER_SIZE - 1));
		if (low < RUNNER_SIZE)
			break;
	}
	TEST_FAIL("no %u MiB of guest physical address space left for the access program",
		  (unsigned int)(RUNNER_SIZE >> 20));
	return 0;
}

/* 2 MiB pages: PML4 at tables[0], then PDPTs and PDs as the mappings need them. */
static void runner_map(uint64_t *tables, int *n, uint64_t base, uint64_t va, uint64_t pa)
{
	int pdpt = 0, pd = 0;
	int index[2] = { (va >> 39) & 511, (va >> 30) & 511 };

	for (int level = 0; level < 2; level++) {
		int parent = level ? pdpt : 0;
		uint64_t *entry = &tables[parent * 512 + index[level]];

		if (!*entry) {
			TEST_ASSERT(*n < RUNNER_TABLES, "too many page tables");
			*entry = (base + RUNNER_PT + *n * 4096ull) | 3;
			(*n)++;
		}
		if (level)
			pd = (int)(((*entry & ~0xfffull) - base - RUNNER_PT) / 4096);
		else
			pdpt = (int)(((*entry & ~0xfffull) - base - RUNNER_PT) / 4096);
	}
	tables[pd * 512 + ((va >> 21) & 511)] = pa | 0x83;
}

static int guest_access(struct kvm_vcpu *vcpu, uint32_t slot, const struct gpa_range *slots,
			int nslots, uint64_t gpa, uint64_t len, bool write, const void *data,
			struct guest_access *out)
{
	uint64_t window = gpa & ~(LARGE_PAGE - 1), base, target, buffer;
	uint64_t *tables;
	struct kvm_run *run = vcpu->run;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int n = 1, r, err;

	TEST_ASSERT(len >= 1 && len <= (1 << 20), "a guest access moves 1 byte to 1 MiB");
	if (!runner)
		runner_init();
	if (!vcpu->cpuid)
		vcpu_init_cpuid(vcpu, kvm_get_supported_cpuid());
	base = runner_place(slots, nslots, gpa);
	tables = (uint64_t *)(runner + RUNNER_PT);
	memset(tables, 0, RUNNER_TABLES * 4096);
	runner_map(tables, &n, base, RUNNER_VA, base);
	runner_map(tables, &n, base, RUNNER_VA + LARGE_PAGE, base + LARGE_PAGE);
	runner_map(tables, &n, base, WINDOW_VA, window);
	if (gpa + len > window + LARGE_PAGE)
		runner_map(tables, &n, base, WINDOW_VA + LARGE_PAGE, window + LARGE_PAGE);
	target = WINDOW_VA + gpa - window;
	buffer = RUNNER_VA + RUNNER_BUFFER + (gpa & 7); /* the target's alignment */
	if (write)
		memcpy(runner + RUNNER_BUFFER + (gpa & 7), data, len);

	vm_set_user_memory_region(vcpu->vm, slot, 0, base, RUNNER_SIZE, runner);
	vcpu_sregs_get(vcpu, &sregs);
	sregs.cr3 = base + RUNNER_PT;
	sregs.cr4 = RUNNER_CR4;
	sregs.efer = RUNNER_EFER;
	sregs.cr0 = RUNNER_CR0;
	sregs.cs = (struct kvm_segment){ .limit = 0xffffffff, .selector = RUNNER_SEL_CODE,
					 .type = 11, .present = 1, .s = 1, .l = 1, .g = 1 };
	sregs.ds = (struct kvm_segment){ .limit = 0xffffffff, .selector = RUNNER_SEL_DATA,
					 .type = 3, .present = 1, .db = 1, .s = 1, .g = 1 };
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.gdt = (struct kvm_dtable){ .base = RUNNER_VA + RUNNER_GDT,
					 .limit = sizeof(runner_gdt) - 1 };
	sregs.idt = (struct kvm_dtable){ .base = RUNNER_VA + RUNNER_IDT, .limit = 32 * 16 - 1 };
	vcpu_sregs_set(vcpu, &sregs);
	memset(&regs, 0, sizeof(regs));
	regs.rip = RUNNER_VA + RUNNER_CODE + ACCESS_ENTRY;
	regs.rsp = RUNNER_VA + RUNNER_STACK_TOP;
	regs.rsi = write ? buffer : target;
	regs.rdi = write ? target : buffer;
	regs.rcx = len;
	regs.rflags = 2;
	vcpu_regs_set(vcpu, &regs);

	do {
		r = ioctl(vcpu->fd, KVM_RUN, NULL);
	} while (r == -1 && errno == EINTR);
	err = errno;
	memset(out, 0, sizeof(*out));
	if (r == -1 && (err == EFAULT || err == EHWPOISON) &&
	    run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
		out->exit = GUEST_EXIT_MEMORY_FAULT;
		out->gpa = run->memory_fault.gpa;
		out->size = run->memory_fault.size;
		out->flags = run->memory_fault.flags;
		out->err = err;
		r = 0;
	} else if (!r && run->exit_reason == KVM_EXIT_IO && run->io.port == ACCESS_DONE_PORT) {
		out->exit = GUEST_EXIT_NONE;
		out->data = write ? NULL : runner + RUNNER_BUFFER + (gpa & 7);
	} else if (!r && run->exit_reason == KVM_EXIT_MMIO) {
		out->exit = GUEST_EXIT_MMIO;
		out->gpa = run->mmio.phys_addr;
		out->size = run->mmio.len;
		out->write = run->mmio.is_write;
		/* Complete the pending instruction without running the guest again. */
		run->immediate_exit = 1;
		r = ioctl(vcpu->fd, KVM_RUN, NULL);
		run->immediate_exit = 0;
		TEST_ASSERT(r == -1 && errno == EINTR, "KVM_RUN with immediate_exit should give EINTR");
		r = 0;
	} else if (!r) {
		TEST_FAIL("the access program stopped with exit reason %u (port %#x)",
			  run->exit_reason, run->io.port);
	}
	vm_set_user_memory_region(vcpu->vm, slot, 0, base, 0, runner);
	errno = err;
	return r;
}

/*
 * Who executes guest accesses on this kernel: "mmu" (the CPU, with KVM's MMU
 * resolving the guest's page faults) or "emulator" (KVM's instruction
 * emulator, which reads and writes guest memory through userspace_addr);
 * NULL when it cannot be told.  With guest_memfd, a guest reads a
 * guest_memfd-only memslot whose userspace_addr maps 0x5a: the MMU path
 * reads guest_memfd (zero).  Without it, the guest reads a memslot whose
 * userspace_addr is PROT_NONE: the MMU fails KVM_RUN with EFAULT, the
 * emulator gives an MMIO exit.
 */
static const char *guest_access_path(void)
{
	const uint64_t gpa = 1 << 20, page = getpagesize();
	const struct gpa_range slot = { gpa, page };
	struct guest_access ga;
	const char *path = NULL;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int memfd, gmem, r;
	char *mem;

	vm = vm_create_barebones();
	memfd = memfd_create("guest-path", 0);
	TEST_ASSERT(memfd >= 0 && !ftruncate(memfd, page), "memfd for the probe");
	mem = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	TEST_ASSERT(mem != MAP_FAILED, "mmap for the probe");
	memset(mem, 0x5a, page);
	vcpu = __vm_vcpu_add(vm, 0);
	if (kvm_has_cap(KVM_CAP_GUEST_MEMFD)) {
		gmem = __vm_create_guest_memfd(vm, page, GUEST_MEMFD_FLAG_MMAP |
					       GUEST_MEMFD_FLAG_INIT_SHARED);
		if (gmem >= 0) {
			vm_set_user_memory_region2(vm, 0, KVM_MEM_GUEST_MEMFD, gpa, page, mem, gmem, 0);
			r = guest_access(vcpu, RUNNER_PROBE_SLOT, &slot, 1, gpa, 1, false, NULL, &ga);
			if (!r && ga.exit == GUEST_EXIT_NONE)
				path = ga.data[0] == 0x00 ? "mmu" : ga.data[0] == 0x5a ? "emulator" : NULL;
		}
	} else {
		TEST_ASSERT(!mprotect(mem, page, PROT_NONE), "mprotect for the probe");
		vm_set_user_memory_region(vm, 0, 0, gpa, page, mem);
		r = guest_access(vcpu, RUNNER_PROBE_SLOT, &slot, 1, gpa, 1, false, NULL, &ga);
		if (r == -1 && errno == EFAULT)
			path = "mmu";
		else if (!r)
			path = ga.exit == GUEST_EXIT_MMIO ? "emulator" :
			       ga.exit == GUEST_EXIT_MEMORY_FAULT ? "mmu" : NULL;
	}
	kvm_vm_free(vm);
	munmap(mem, page);
	close(memfd);
	return path;
}
