/*
 * guest_access as gmemlab.host.guest performs it: gmemlab's access program
 * (vmm/guests/access.s, embedded above as gl_access_code) runs in 64-bit
 * mode on the case's own vCPU.  It needs memory of its own in the guest:
 * one 4 MiB memslot of this program's anonymous memory (code, page tables,
 * GDT, IDT, stack, a buffer), added right before KVM_RUN and deleted right
 * after, under the highest slot id the case does not use and at the highest
 * 4 MiB of guest physical address space that overlaps no memslot of the case
 * and not the 4 MiB around the accessed range.  Guest virtual addresses: the
 * runner at 2 MiB, and a window at 1 GiB mapping the accessed range's 2 MiB
 * pages.  The vCPU gets KVM's supported CPUID at its first access.
 */

struct gl_runner {
	int ready;
	unsigned char *mem;
	struct kvm_cpuid2 *cpuid;
	int phys_bits;
};

static struct gl_runner gl_runner;

GL_FN struct gl_out gl_runner_init(void)
{
	struct kvm_cpuid2 *c;
	uint32_t n = 64;
	long size;
	void *mem;

	for (;;) {
		c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));
		if (!c)
			return gl_bad(GL_INTERNAL, "out of memory");
		c->nent = n;
		if (ioctl(gl_kvm, KVM_GET_SUPPORTED_CPUID, c) == 0)
			break;
		free(c);
		if (errno == E2BIG && n < 4 * GL_KVM_MAX_CPUID_ENTRIES) {
			n *= 2;
			continue;
		}
		return gl_errno_out(errno);
	}
	gl_runner.phys_bits = 36;
	for (uint32_t i = 0; i < c->nent; i++)
		if (c->entries[i].function == 0x80000008 && (c->entries[i].eax & 0xff)) {
			gl_runner.phys_bits = c->entries[i].eax & 0xff;
			break;
		}
	size = ioctl(gl_kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (size < 0) {
		free(c);
		return gl_errno_out(errno);
	}
	mem = mmap(NULL, GL_RUNNER_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED) {
		free(c);
		return gl_errno_out(errno);
	}
	gl_runner.mem = mem;
	gl_runner.cpuid = c;
	gl_run_size = (size_t)size;
	memcpy(gl_runner.mem + GL_RUNNER_GDT, gl_gdt_long, sizeof(gl_gdt_long));
	for (int v = 0; v < 32; v++) {
		uint64_t handler = GL_VA_RUNNER + GL_RUNNER_CODE + GL_SYM_vectors +
				   (uint64_t)v * GL_SYM_VECTOR_STUB_SIZE;
		unsigned char *gate = gl_runner.mem + GL_RUNNER_IDT + 16 * v;

		/* 64-bit interrupt gate: present, DPL 0, type 0xE, the code segment */
		memset(gate, 0, 16);
		gate[0] = handler & 0xff;
		gate[1] = (handler >> 8) & 0xff;
		gate[2] = GL_SEL_CODE;
		gate[5] = 0x8e;
		gate[6] = (handler >> 16) & 0xff;
		gate[7] = (handler >> 24) & 0xff;
		for (int b = 0; b < 4; b++)
			gate[8 + b] = (handler >> (32 + 8 * b)) & 0xff;
	}
	memcpy(gl_runner.mem + GL_RUNNER_CODE, gl_access_code, sizeof(gl_access_code));
	gl_runner.ready = 1;
	return gl_ret(0);
}

/* 4-level page tables with 2 MiB pages (gmemlab.vmm.modes.PageTables). */
struct gl_tables {
	uint64_t base;
	int n;
	int parent[GL_MAX_TABLES], index[GL_MAX_TABLES];
	uint64_t buf[GL_MAX_TABLES][512];
};

GL_FN int gl_table(struct gl_tables *t, int parent, int index)
{
	for (int i = 1; i < t->n; i++)
		if (t->parent[i] == parent && t->index[i] == index)
			return i;
	if (t->n >= GL_MAX_TABLES)
		return -1;
	t->parent[t->n] = parent;
	t->index[t->n] = index;
	memset(t->buf[t->n], 0, sizeof(t->buf[0]));
	t->buf[parent][index] = (t->base + (uint64_t)t->n * 4096) | GL_PTE_PRESENT | GL_PTE_WRITE;
	return t->n++;
}

GL_FN int gl_map_large(struct gl_tables *t, uint64_t virt, uint64_t phys, uint64_t size)
{
	for (uint64_t off = 0; off < size; off += GL_LARGE_PAGE) {
		uint64_t v = virt + off;
		int pdpt = gl_table(t, 0, (v >> 39) & 511);
		int pd = pdpt < 0 ? -1 : gl_table(t, pdpt, (v >> 30) & 511);

		if (pd < 0)
			return -1;
		t->buf[pd][(v >> 21) & 511] = (phys + off) | GL_PTE_PRESENT | GL_PTE_WRITE |
					      GL_PTE_LARGE;
	}
	return 0;
}

/* The runner's guest physical address: free, reachable, away from the access, from
 * the case's memslots and from every gfn range KVM holds private by the VM's attributes. */
GL_FN int gl_place(const struct gl_vm *vm, uint64_t gpa, uint64_t *base_out)
{
	int bits = gl_runner.phys_bits < 52 ? gl_runner.phys_bits : 52;
	__int128 top = (__int128)1 << bits, size = GL_RUNNER_SIZE;
	__int128 base = (top - size) & ~(size - 1);
	__int128 window = gpa & ~(GL_LARGE_PAGE - 1);
	const struct gl_rmap *attrs = &vm->attributes;

	while (base >= 0) {
		__int128 end = base + size, low = -1;

		for (int i = 0; i <= vm->nslots + attrs->n; i++) {
			__int128 s, n;

			if (i < vm->nslots) {
				s = vm->slots[i].gpa, n = vm->slots[i].size;
			} else if (i < vm->nslots + attrs->n) {
				int k = i - vm->nslots;

				if (!(attrs->val[k] & KVM_MEMORY_ATTRIBUTE_PRIVATE))
					continue;
				s = (__int128)attrs->start[k] << 12;
				n = ((__int128)gl_rmap_end(attrs, k) - attrs->start[k]) << 12;
			} else {
				s = window, n = 2 * GL_LARGE_PAGE;
			}
			if (s < end && base < s + n && (low < 0 || s < low))
				low = s;
		}
		if (low < 0) {
			*base_out = (uint64_t)base;
			return 0;
		}
		base = (low - size) & ~(size - 1);
	}
	return -1;
}

static void gl_on_alarm(int sig)
{
	(void)sig;
}

/* KVM_RUN runs with SIGALRM unblocked; outside it the signal stays blocked, so
 * a deadline that passes between two runs is not lost. */
GL_FN int gl_prepare_deadline(int fd)
{
	struct {
		uint32_t len;
		uint8_t sigset[8];
	} mask;
	struct sigaction sa;
	sigset_t block, cur;
	uint64_t bits = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = gl_on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGALRM);
	sigprocmask(SIG_BLOCK, &block, NULL);
	sigprocmask(SIG_BLOCK, NULL, &cur);
	for (int s = 1; s <= 64; s++)
		if (s != SIGALRM && sigismember(&cur, s) == 1)
			bits |= 1ULL << (s - 1);
	mask.len = 8;
	memcpy(mask.sigset, &bits, 8);
	return ioctl(fd, KVM_SET_SIGNAL_MASK, &mask);
}

GL_FN void gl_arm(double seconds)
{
	struct itimerval it;

	memset(&it, 0, sizeof(it));
	it.it_value.tv_sec = (time_t)seconds;
	it.it_value.tv_usec = (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6);
	setitimer(ITIMER_REAL, &it, NULL);
}

GL_FN int gl_drain_alarm(void)
{
	sigset_t set;
	struct timespec zero = { 0, 0 };

	sigemptyset(&set);
	sigaddset(&set, SIGALRM);
	return sigtimedwait(&set, NULL, &zero) == SIGALRM;
}

GL_FN double gl_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

GL_FN struct gl_out gl_guest_out(int exit)
{
	struct gl_out o = gl_ret(0);

	o.rkind = GL_R_GUEST;
	o.ga.exit = exit;
	return o;
}

GL_FN struct gl_out gl_run_access(struct gl_vcpu *v, int fd, uint64_t gpa, uint64_t length, int write)
{
	struct kvm_run *run = v->run;
	double deadline = gl_now() + GL_GUEST_TIMEOUT;
	struct gl_out o;
	long r;

	gl_arm(GL_GUEST_TIMEOUT);
	for (;;) {
		run->exit_reason = 0;
		r = ioctl(fd, KVM_RUN, 0);
		if (r < 0 && errno == EINTR) {
			if (gl_drain_alarm() || gl_now() >= deadline) {
				gl_arm(0);
				return gl_bad(GL_INTERNAL, "GuestTimeout: the guest ran for more than "
					      "%g s", (double)GL_GUEST_TIMEOUT);
			}
			continue;
		}
		break;
	}
	gl_arm(0);
	gl_drain_alarm();
	if (r < 0) {
		int err = errno;

		if ((err == EFAULT || err == EHWPOISON) && run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
			struct gl_memory_fault f;

			memcpy(&f, (char *)run + GL_KVM_RUN_EXIT_OFFSET, sizeof(f));
			o = gl_guest_out(GL_EXIT_MEMORY_FAULT);
			o.ga.gpa = f.gpa;
			o.ga.size = f.size;
			o.ga.flags = f.flags;
			o.ga.err = err;
			return o;
		}
		return gl_errno_out(err);
	}
	if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
	    run->io.port == GL_SYM_DONE_PORT) {
		o = gl_guest_out(GL_EXIT_NONE);
		if (!write) {
			o.data = malloc(length);
			if (!o.data)
				return gl_bad(GL_INTERNAL, "out of memory");
			memcpy(o.data, gl_runner.mem + GL_RUNNER_BUFFER + (gpa & 7), length);
			o.len = length;
		}
		return o;
	}
	if (run->exit_reason == KVM_EXIT_MMIO) {
		o = gl_guest_out(GL_EXIT_MMIO);
		o.ga.gpa = run->mmio.phys_addr;
		o.ga.size = run->mmio.len;
		o.ga.write = run->mmio.is_write != 0;
		/* Finish the pending instruction without running the guest again. */
		run->immediate_exit = 1;
		r = ioctl(fd, KVM_RUN, 0);
		run->immediate_exit = 0;
		if (r < 0 && errno != EINTR)
			return gl_errno_out(errno);
		return o;
	}
	if (run->exit_reason == KVM_EXIT_IO && run->io.port == GL_SYM_FAULT_PORT) {
		uint32_t vector = 0;

		memcpy(&vector, (char *)run + run->io.data_offset, run->io.size < 4 ? run->io.size : 4);
		return gl_bad(GL_INTERNAL, "VmmError: guest_access: the access program took "
			      "exception %u", vector);
	}
	return gl_bad(GL_INTERNAL, "VmmError: guest_access: unexpected exit %u", run->exit_reason);
}

/* private_access: 1 or 0 as the case says, -1 when it does not (guestaccess.check_private). */
GL_FN struct gl_out gl_guest_access(int64_t vcpu, uint64_t gpa, uint64_t length, int write,
				    int private_access, const unsigned char *data, uint64_t ndata)
{
	struct gl_vcpu *v;
	struct gl_vm *vm;
	struct gl_tables tables;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct gl_memory_region slot;
	struct gl_out o;
	uint64_t base, window, target, buffer;
	int fd, slot_id;

	GL_CHECK_FD(vcpu);
	v = gl_vcpu_info(vcpu);
	if (!v) {
		/* Not a vCPU: KVM_RUN gives that fd's own answer. */
		if (ioctl((int)vcpu, KVM_RUN, 0) < 0)
			return gl_errno_out(errno);
		return gl_errno_out(ENOTTY);
	}
	vm = &gl_vms[v->vm];
	if (length < 1 || length > GL_GUEST_ACCESS_LIMIT)
		return gl_usage("guest_access: length must be 1..%d", (int)GL_GUEST_ACCESS_LIMIT);
	if ((unsigned __int128)gpa + length > (unsigned __int128)1 << 64)
		return gl_usage("guest_access: gpa + length wraps");
	if (write && ndata != length)
		return gl_usage("guest_access: a write of %" PRIu64 " bytes needs %" PRIu64
				" bytes of data", length, length);
	if (!write && ndata)
		return gl_usage("guest_access: data is only for writes");
	if (gl_check_private(vm, gpa, length, private_access, &o))
		return o;
	if (private_access == 1 && gl_guest_chooses_private(vm->type))
		return gl_usage("guest_access: a private access of an SNP or TDX guest (C-bit, shared "
				"bit in its page tables) is not implemented on the host");
	if (!gl_runner.ready) {
		o = gl_runner_init();
		if (o.kind != GL_OK)
			return o;
	}
	if (!v->run) {
		int low = v->fds[0];

		for (int i = 1; i < v->nfds; i++)
			if (v->fds[i] < low)
				low = v->fds[i];
		v->run = mmap(NULL, gl_run_size, PROT_READ | PROT_WRITE, MAP_SHARED, low, 0);
		if (v->run == MAP_FAILED) {
			v->run = NULL;
			return gl_errno_out(errno);
		}
		v->run_fd = low;
		if (gl_prepare_deadline(low) < 0)
			return gl_errno_out(errno);
	}
	fd = v->run_fd;
	/* KVM may load or store at userspace_addr for this access: it must be the case's. */
	for (int i = 0; i < vm->nslots; i++) {
		const struct gl_slot *s = &vm->slots[i];
		uint64_t lo = gpa > s->gpa ? gpa : s->gpa;
		unsigned __int128 hi = (unsigned __int128)gpa + length, shi =
			(unsigned __int128)s->gpa + s->size;

		if (shi < hi)
			hi = shi;
		if (lo < hi && gl_check_range(s->uaddr + lo - s->gpa, (uint64_t)(hi - lo),
					      "guest_access", &o))
			return o;
	}
	for (slot_id = GL_KVM_USER_MEM_SLOTS - 1; slot_id >= 0; slot_id--) {
		int used = 0;

		for (int i = 0; i < vm->nslots && !used; i++)
			used = vm->slots[i].key >> 16 == 0 && (int)(vm->slots[i].key & 0xffff) == slot_id;
		if (!used)
			break;
	}
	if (slot_id < 0)
		return gl_usage("guest_access: every memslot id is taken; gmemlab needs one for its "
				"access program");
	if (gl_runner.phys_bits < 64 && gpa + length > (1ULL << gl_runner.phys_bits))
		return gl_usage("guest_access: [%#" PRIx64 ", %#" PRIx64 ") is beyond this guest's "
				"physical address width (%d bits): no guest instruction can reach it",
				gpa, gpa + length, gl_runner.phys_bits);
	if (!v->cpuid_set) {
		if (ioctl(fd, KVM_SET_CPUID2, gl_runner.cpuid) < 0)
			return gl_errno_out(errno);
		v->cpuid_set = 1;
	}
	if (gl_place(vm, gpa, &base))
		return gl_usage("guest_access: the case's memslots leave no 4 MiB of guest physical "
				"address space for gmemlab's access program");
	window = gpa & ~(GL_LARGE_PAGE - 1);
	memset(&tables, 0, sizeof(tables));
	tables.base = base + GL_RUNNER_TABLES;
	tables.n = 1;
	if (gl_map_large(&tables, GL_VA_RUNNER, base, GL_RUNNER_SIZE) ||
	    gl_map_large(&tables, GL_VA_WINDOW, window, GL_LARGE_PAGE) ||
	    (gpa + length > window + GL_LARGE_PAGE &&
	     gl_map_large(&tables, GL_VA_WINDOW + GL_LARGE_PAGE, window + GL_LARGE_PAGE,
			  GL_LARGE_PAGE)))
		return gl_bad(GL_INTERNAL, "ValueError: more than %d page tables needed",
			      (int)GL_MAX_TABLES);
	memcpy(gl_runner.mem + GL_RUNNER_TABLES, tables.buf, (size_t)tables.n * 4096);
	target = GL_VA_WINDOW + gpa - window;
	buffer = GL_VA_RUNNER + GL_RUNNER_BUFFER + (gpa & 7);
	if (write)
		memcpy(gl_runner.mem + GL_RUNNER_BUFFER + (gpa & 7), data, length);
	memset(&regs, 0, sizeof(regs));
	regs.rip = GL_VA_RUNNER + GL_RUNNER_CODE + GL_SYM_access;
	regs.rsp = GL_VA_RUNNER + GL_RUNNER_STACK_TOP;
	regs.rsi = write ? buffer : target;
	regs.rdi = write ? target : buffer;
	regs.rcx = length;
	regs.rflags = 2;
	slot = (struct gl_memory_region){ (uint32_t)slot_id, 0, base, GL_RUNNER_SIZE,
					   (uint64_t)(uintptr_t)gl_runner.mem };
	if (ioctl(vm->hidden_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
		return gl_errno_out(errno);
	if (!v->cr3_known || v->cr3 != tables.base) {
		if (ioctl(fd, KVM_GET_SREGS, &sregs) < 0) {
			o = gl_errno_out(errno);
			goto out;
		}
		sregs.cr3 = tables.base;
		sregs.cr4 = GL_CR4_PAE;
		sregs.efer = GL_EFER_LME | GL_EFER_LMA;
		sregs.cr0 = GL_CR0_LONG;
		sregs.cs = (struct kvm_segment){ .base = 0, .limit = 0xffffffff, .selector = GL_SEL_CODE,
						 .type = 11, .present = 1, .dpl = 0, .db = 0, .s = 1,
						 .l = 1, .g = 1 };
		sregs.ds = (struct kvm_segment){ .base = 0, .limit = 0xffffffff, .selector = GL_SEL_DATA,
						 .type = 3, .present = 1, .dpl = 0, .db = 1, .s = 1,
						 .l = 0, .g = 1 };
		sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
		sregs.gdt = (struct kvm_dtable){ .base = GL_VA_RUNNER + GL_RUNNER_GDT,
						 .limit = sizeof(gl_gdt_long) - 1 };
		sregs.idt = (struct kvm_dtable){ .base = GL_VA_RUNNER + GL_RUNNER_IDT,
						 .limit = 32 * 16 - 1 };
		if (ioctl(fd, KVM_SET_SREGS, &sregs) < 0) {
			o = gl_errno_out(errno);
			goto out;
		}
		v->cr3_known = 1;
		v->cr3 = tables.base;
	}
	if (ioctl(fd, KVM_SET_REGS, &regs) < 0) {
		o = gl_errno_out(errno);
		goto out;
	}
	o = gl_run_access(v, fd, gpa, length, write);
out:
	slot.memory_size = 0;
	ioctl(vm->hidden_fd, KVM_SET_USER_MEMORY_REGION, &slot);
	return o;
}

/* Who executes a guest access here (gmemlab.host.guest.probe_access_path):
 * "mmu" or "emulator", or why it cannot be told.  Runs in a child of its own. */
GL_FN void gl_probe_access_path(void)
{
	uint64_t gpa = 1 << 20;
	struct gl_out o;
	int64_t vm, memfd, addr, vcpu;
	int has_gmem = ioctl(gl_kvm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) > 0;

#define GL_PROBE(call)                                                                   \
	do {                                                                             \
		o = (call);                                                              \
		if (o.kind == GL_ERRNO)                                                  \
			gl_finish("MISSING", "the guest-path probe failed: [Errno %d] %s", \
				  o.err, strerror(o.err));                                \
		if (o.kind != GL_OK)                                                     \
			gl_finish("MISSING", "the guest-path probe failed: %s", o.msg);  \
	} while (0)
	GL_PROBE(gl_create_vm(0));
	vm = o.value;
	GL_PROBE(gl_memfd_create("gmemlab-probe", 0));
	memfd = o.value;
	GL_PROBE(gl_ftruncate(memfd, 4096));
	GL_PROBE(gl_mmap(memfd, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 0, 0));
	addr = o.value;
	GL_PROBE(gl_write_mem_fill((uint64_t)addr, 0x5a, 4096));
	GL_PROBE(gl_create_vcpu(vm, 0));
	vcpu = o.value;
	if (has_gmem) {
		int64_t gmem;

		GL_PROBE(gl_create_guest_memfd(vm, 4096, GUEST_MEMFD_FLAG_MMAP |
					       GUEST_MEMFD_FLAG_INIT_SHARED, NULL, 0));
		gmem = o.value;
		GL_PROBE(gl_set_user_memory_region2(vm, 0, KVM_MEM_GUEST_MEMFD, gpa, 4096,
						    (uint64_t)addr, (uint32_t)gmem, 0));
		GL_PROBE(gl_guest_access(vcpu, gpa, 1, 0, -1, NULL, 0));
		if (o.ga.exit == GL_EXIT_NONE && o.len == 1 && o.data[0] == 0x00)
			gl_finish("PATH", "mmu");
		if (o.ga.exit == GL_EXIT_NONE && o.len == 1 && o.data[0] == 0x5a)
			gl_finish("PATH", "emulator");
	} else {
		GL_PROBE(gl_mprotect((uint64_t)addr, 4096, PROT_NONE));
		GL_PROBE(gl_set_user_memory_region(vm, 0, 0, gpa, 4096, (uint64_t)addr));
		o = gl_guest_access(vcpu, gpa, 1, 0, -1, NULL, 0);
		if (o.kind == GL_ERRNO && o.err == EFAULT)
			gl_finish("PATH", "mmu");
		GL_PROBE(o);
		if (o.ga.exit == GL_EXIT_MMIO)
			gl_finish("PATH", "emulator");
		if (o.ga.exit == GL_EXIT_MEMORY_FAULT)
			gl_finish("PATH", "mmu");
	}
#undef GL_PROBE
	gl_finish("MISSING", "the guest-path probe failed: cannot tell how this kernel runs guest "
		  "accesses");
}
