/*
 * gmemlab's host kernel in C: every operation of the case vocabulary as
 * gmemlab.host.HostKernel performs it, with the same two additions:
 *
 *  - a case sees only its own resources: an fd the case did not get is
 *    treated as not open (EBADF, or -1 inside an ioctl struct), and an
 *    operation that would touch memory the case did not map (this
 *    program's own: stack, heap, libc, the guest runner) is refused;
 *  - loads and stores never kill the program: each page is copied under
 *    sigsetjmp, in ascending address order, and SIGBUS or SIGSEGV ends the
 *    access with that signal and the faulting address.
 *
 * Every operation returns a struct gl_out: a result, an errno, a signal, or
 * a malformed call (GL_USAGE, which the Python runner reports as "bad call").
 * A case runs in a child process of its own; gl_finish() reports its
 * outcome to the parent through a pipe.
 */

/* Never inlined: a case file of many steps then builds in half the time. */
#define GL_FN static __attribute__((unused, noinline))
#define GL_PAGE 4096ULL
#define GL_VPAGES (1ULL << 52)
#define GL_MAX_FD 65536
#define GL_MAX_WORDS (GL_PAGE / 8 + 1) /* the longest node mask the kernel reads or fills */

enum { GL_OK, GL_ERRNO, GL_SIGNAL, GL_USAGE, GL_INTERNAL };
enum { GL_R_INT, GL_R_BYTES, GL_R_STAT, GL_R_GUEST, GL_R_MEMPOLICY };
enum { GL_EXIT_NONE, GL_EXIT_MMIO, GL_EXIT_MEMORY_FAULT };

struct gl_guest {
	int exit;
	uint64_t gpa, size, flags;
	int write;
	int err; /* a memory fault's KVM_RUN errno */
};

struct gl_out {
	int kind, rkind;
	int64_t value;
	int err, sig;
	int has_error_offset; /* the error carries an offset (KVM_SET_MEMORY_ATTRIBUTES2) */
	uint64_t error_offset;
	uint64_t addr;
	unsigned char *data;
	size_t len;
	struct stat st;
	struct gl_guest ga;
	int mode; /* get_mempolicy: the mode and the node mask's words */
	uint64_t *words;
	size_t nwords;
	char msg[600];
};

/* --- reporting ------------------------------------------------------------------ */

static int gl_result_fd = -1;
static int gl_step_index;
static const char *gl_step_op = "";

GL_FN __attribute__((noreturn, format(printf, 2, 3)))
void gl_finish(const char *status, const char *fmt, ...)
{
	char text[2048];
	int n = snprintf(text, sizeof(text), "%s ", status);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text + n, sizeof(text) - n - 1, fmt, ap);
	va_end(ap);
	for (char *p = text; *p; p++)
		if (*p == '\n')
			*p = ' ';
	if (write(gl_result_fd, text, strlen(text)) < 0)
		_exit(3);
	_exit(0);
}

#define gl_fail(fmt, ...)                                                          \
	do {                                                                       \
		if (gl_step_index)                                                 \
			gl_finish("FAIL", "step %d (%s): " fmt, gl_step_index,   \
				  gl_step_op, ##__VA_ARGS__);                     \
		gl_finish("FAIL", fmt, ##__VA_ARGS__);                            \
	} while (0)
#define gl_skip(fmt, ...) gl_finish("SKIP", fmt, ##__VA_ARGS__)

/* strncpy that always terminates, without -Wformat-truncation's worries. */
GL_FN void gl_copy(char *dst, size_t size, const char *src)
{
	size_t n = strnlen(src, size - 1);

	memcpy(dst, src, n);
	dst[n] = 0;
}

GL_FN void gl_step(int index, const char *op)
{
	gl_step_index = index;
	gl_step_op = op;
}

/* --- outcomes ---------------------------------------------------------------------- */

GL_FN struct gl_out gl_ret(int64_t value)
{
	struct gl_out o;

	memset(&o, 0, sizeof(o));
	o.kind = GL_OK;
	o.rkind = GL_R_INT;
	o.value = value;
	return o;
}

GL_FN struct gl_out gl_errno_out(int err)
{
	struct gl_out o;

	memset(&o, 0, sizeof(o));
	o.kind = GL_ERRNO;
	o.err = err;
	return o;
}

GL_FN __attribute__((format(printf, 2, 3)))
struct gl_out gl_bad(int kind, const char *fmt, ...)
{
	struct gl_out o;
	va_list ap;

	memset(&o, 0, sizeof(o));
	o.kind = kind;
	va_start(ap, fmt);
	vsnprintf(o.msg, sizeof(o.msg), fmt, ap);
	va_end(ap);
	return o;
}

#define gl_usage(...) gl_bad(GL_USAGE, __VA_ARGS__)

GL_FN struct gl_out gl_sys(long r)
{
	return r < 0 ? gl_errno_out(errno) : gl_ret(r);
}

GL_FN const char *gl_errno_name(int err)
{
	switch (err) {
#define GL_E(name) case name: return #name;
	GL_E(EPERM) GL_E(ENOENT) GL_E(ESRCH) GL_E(EINTR) GL_E(EIO) GL_E(ENXIO) GL_E(E2BIG)
	GL_E(ENOEXEC) GL_E(EBADF) GL_E(ECHILD) GL_E(EAGAIN) GL_E(ENOMEM) GL_E(EACCES)
	GL_E(EFAULT) GL_E(EBUSY) GL_E(EEXIST) GL_E(EXDEV) GL_E(ENODEV) GL_E(ENOTDIR)
	GL_E(EISDIR) GL_E(EINVAL) GL_E(ENFILE) GL_E(EMFILE) GL_E(ENOTTY) GL_E(ETXTBSY)
	GL_E(EFBIG) GL_E(ENOSPC) GL_E(ESPIPE) GL_E(EROFS) GL_E(EMLINK) GL_E(EPIPE)
	GL_E(EDOM) GL_E(ERANGE) GL_E(EDEADLK) GL_E(ENAMETOOLONG) GL_E(ENOSYS)
	GL_E(EOVERFLOW) GL_E(EOPNOTSUPP) GL_E(ETIMEDOUT) GL_E(EHWPOISON)
#undef GL_E
	}
	return "E?";
}

GL_FN const char *gl_signal_name(int sig)
{
	return sig == SIGBUS ? "SIGBUS" : sig == SIGSEGV ? "SIGSEGV" : "SIG?";
}

/* What a call that did not succeed gave, in the runner's words. */
GL_FN void gl_describe(const struct gl_out *o, char *buf, size_t size)
{
	if (o->kind == GL_ERRNO)
		snprintf(buf, size, "%s (%s)", gl_errno_name(o->err), strerror(o->err));
	else if (o->kind == GL_SIGNAL)
		snprintf(buf, size, "%s (%s at %#" PRIx64 ")", gl_signal_name(o->sig),
			 gl_signal_name(o->sig), o->addr);
	else
		snprintf(buf, size, "success");
}

GL_FN void gl_show_result(const struct gl_out *o, char *buf, size_t size)
{
	if (o->rkind == GL_R_INT) {
		if (o->value > 4096)
			snprintf(buf, size, "%#" PRIx64, (uint64_t)o->value);
		else
			snprintf(buf, size, "%" PRId64, o->value);
	} else if (o->rkind == GL_R_BYTES) {
		size_t n = o->len < 16 ? o->len : 16;

		buf[0] = 0;
		for (size_t i = 0; i < n && 2 * i + 3 < size; i++)
			snprintf(buf + 2 * i, size - 2 * i, "%02x", o->data[i]);
		if (o->len > 16 && strlen(buf) + 4 < size)
			strcat(buf, "...");
	} else if (o->rkind == GL_R_STAT) {
		snprintf(buf, size, "{'size': %lld, ...}", (long long)o->st.st_size);
	} else if (o->rkind == GL_R_MEMPOLICY) {
		int n = snprintf(buf, size, "{'mode': %d, 'nodemask': [", o->mode);

		for (size_t i = 0; i < o->nwords && i < 4 && n > 0 && (size_t)n + 24 < size; i++)
			n += snprintf(buf + n, size - n, "%s%" PRIu64, i ? ", " : "", o->words[i]);
		if (n > 0 && (size_t)n + 8 < size)
			snprintf(buf + n, size - n, "%s]}", o->nwords > 4 ? ", ..." : "");
	} else {
		snprintf(buf, size, "exit %s", o->ga.exit == GL_EXIT_NONE ? "none" :
			 o->ga.exit == GL_EXIT_MMIO ? "mmio" : "memory_fault");
	}
}

/* A malformed call or a failure of gmemlab's own ends the case at once. */
GL_FN void gl_no_bad_call(const struct gl_out *o)
{
	if (o->kind == GL_USAGE)
		gl_fail("bad call: %s", o->msg);
	if (o->kind == GL_INTERNAL)
		gl_fail("internal error %s", o->msg);
}

GL_FN void gl_expect_success(const struct gl_out *o)
{
	char got[256];

	gl_no_bad_call(o);
	if (o->kind == GL_OK)
		return;
	gl_describe(o, got, sizeof(got));
	gl_fail("expected success, got %s", got);
}

GL_FN void gl_expect_errno(const struct gl_out *o, int err, const char *name)
{
	char got[256];

	gl_no_bad_call(o);
	if (o->kind == GL_ERRNO && o->err == err)
		return;
	if (o->kind == GL_OK) {
		gl_show_result(o, got, sizeof(got));
		gl_fail("expected errno %s, got success (%s)", name, got);
	}
	gl_describe(o, got, sizeof(got));
	gl_fail("expected errno %s, got %s", name, got);
}

GL_FN void gl_expect_signal(const struct gl_out *o, int sig)
{
	char got[256];

	gl_no_bad_call(o);
	if (o->kind == GL_SIGNAL && o->sig == sig)
		return;
	if (o->kind == GL_OK) {
		gl_show_result(o, got, sizeof(got));
		gl_fail("expected %s, got success (%s)", gl_signal_name(sig), got);
	}
	gl_describe(o, got, sizeof(got));
	gl_fail("expected %s, got %s", gl_signal_name(sig), got);
}

/* --- values -------------------------------------------------------------------------- */

GL_FN void gl_i128_text(__int128 v, char *buf, size_t size)
{
	char tmp[48];
	int n = 0, neg = v < 0;
	unsigned __int128 u = neg ? -(unsigned __int128)v : (unsigned __int128)v;

	do {
		tmp[n++] = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u);
	if (neg)
		tmp[n++] = '-';
	for (int i = 0; i < n && (size_t)i + 1 < size; i++)
		buf[i] = tmp[n - 1 - i];
	buf[(size_t)n < size ? (size_t)n : size - 1] = 0;
}

/* A value computed from a bound name, as the C type of its argument holds it
 * (interface.CInt.check): either spelling of the type, converted to its own. */
GL_FN int64_t gl_fit(__int128 v, int bits, int is_signed, uint64_t limit, const char *ctype,
		     const char *name)
{
	__int128 half = (__int128)1 << (bits - 1), top = (__int128)1 << bits;
	char text[48];

	if (v < -half || v >= top) {
		gl_i128_text(v, text, sizeof(text));
		gl_fail("bad call: %s: %s=%s does not fit %s (%d bits)", gl_step_op, name, text,
			ctype, bits);
	}
	v &= top - 1;
	if (is_signed && v >= half)
		v -= top;
	if (limit && v > (__int128)limit) {
		gl_i128_text(v, text, sizeof(text));
		gl_fail("bad call: %s: %s=%s is more than gmemlab returns at once (%" PRIu64
			" bytes)", gl_step_op, name, text, limit);
	}
	return (int64_t)v;
}

/* --- the case's fds ---------------------------------------------------------------- */

static unsigned char gl_own_fd[GL_MAX_FD];
static int gl_kvm = -1; /* gmemlab's own /dev/kvm fd, never the case's */

GL_FN int gl_owned(int64_t fd)
{
	return fd >= 0 && fd < GL_MAX_FD && gl_own_fd[fd];
}

GL_FN struct gl_out gl_adopt(long fd)
{
	if (fd < 0)
		return gl_errno_out(errno);
	if (fd >= GL_MAX_FD) {
		close((int)fd);
		return gl_bad(GL_INTERNAL, "fd %ld is beyond what the export tracks", fd);
	}
	gl_own_fd[fd] = 1;
	return gl_ret(fd);
}

#define GL_CHECK_FD(fd)                                                          \
	do {                                                                     \
		if (!gl_owned(fd))                                               \
			return gl_errno_out(EBADF);                              \
	} while (0)

/* --- VMs and vCPUs ---------------------------------------------------------------- */

/* A total map of page numbers to attribute bits, as runs of equal values
 * (gmemlab.rangemap.RangeMap): run i maps [start[i], start[i + 1]) to val[i]. */
#define GL_GFNS (1ULL << 52)

struct gl_rmap {
	int n;
	uint64_t *start, *val;
};

GL_FN void gl_rmap_init(struct gl_rmap *m, uint64_t value)
{
	m->start = malloc(sizeof(uint64_t));
	m->val = malloc(sizeof(uint64_t));
	if (!m->start || !m->val)
		gl_fail("internal error: out of memory");
	m->n = 1;
	m->start[0] = 0;
	m->val[0] = value;
}

GL_FN uint64_t gl_rmap_get(const struct gl_rmap *m, uint64_t i)
{
	int k = 0;

	while (k + 1 < m->n && m->start[k + 1] <= i)
		k++;
	return m->val[k];
}

GL_FN uint64_t gl_rmap_end(const struct gl_rmap *m, int k)
{
	return k + 1 < m->n ? m->start[k + 1] : GL_GFNS;
}

/* Map [lo, hi) to value; neighbouring runs of equal values merge. */
GL_FN void gl_rmap_set(struct gl_rmap *m, uint64_t lo, uint64_t hi, uint64_t value)
{
	uint64_t *start, *val, tail;
	int n = 0;

	if (hi > GL_GFNS)
		hi = GL_GFNS;
	if (lo >= hi)
		return;
	tail = hi < GL_GFNS ? gl_rmap_get(m, hi) : value;
	start = malloc((m->n + 2) * sizeof(uint64_t));
	val = malloc((m->n + 2) * sizeof(uint64_t));
	if (!start || !val)
		gl_fail("internal error: out of memory");
	for (int k = 0; k < m->n && m->start[k] < lo; k++, n++)
		start[n] = m->start[k], val[n] = m->val[k];
	start[n] = lo, val[n++] = value;
	if (hi < GL_GFNS)
		start[n] = hi, val[n++] = tail;
	for (int k = 0; k < m->n; k++)
		if (m->start[k] > hi)
			start[n] = m->start[k], val[n++] = m->val[k];
	free(m->start);
	free(m->val);
	m->n = 0;
	for (int k = 0; k < n; k++) {
		if (m->n && val[m->n - 1] == val[k])
			continue;
		start[m->n] = start[k];
		val[m->n++] = val[k];
	}
	m->start = start;
	m->val = val;
}

/* A guest_memfd the case created: under in-place conversion the kernel keeps
 * its attributes in the file (tracked), by file page. */
struct gl_gmem {
	int tracked;
	struct gl_rmap attributes;
};

struct gl_slot {
	uint32_t key; /* as_id << 16 | id */
	uint64_t gpa, size, uaddr;
	int gmem; /* a KVM_MEM_GUEST_MEMFD slot's file: index + 1, or 0 */
	uint64_t offset;
};

struct gl_vm {
	uint64_t type;
	struct gl_slot *slots;
	int nslots;
	struct gl_rmap attributes; /* KVM_SET_MEMORY_ATTRIBUTES that succeeded, by gfn */
	int hidden_fd; /* our dup of a VM fd while the VM has vCPU fds */
	int vcpus;
};

struct gl_vcpu {
	int vm;
	int fds[64];
	int nfds;
	struct kvm_run *run; /* kvm_run mapped on run_fd */
	int run_fd;
	int cpuid_set;
	int cr3_known;
	uint64_t cr3;
};

static size_t gl_run_size; /* KVM_GET_VCPU_MMAP_SIZE, once a guest ran */
static struct gl_vm gl_vms[1024];
static int gl_nvms;
static struct gl_vcpu gl_vcpus[1024];
static int gl_nvcpus;
static struct gl_gmem gl_gmems[1024];
static int gl_ngmems;
static short gl_vm_of[GL_MAX_FD];   /* index + 1 */
static short gl_vcpu_of[GL_MAX_FD]; /* index + 1 */
static short gl_gmem_of[GL_MAX_FD]; /* index + 1 */

GL_FN struct gl_vm *gl_vm_info(int64_t fd)
{
	return gl_owned(fd) && gl_vm_of[fd] ? &gl_vms[gl_vm_of[fd] - 1] : NULL;
}

GL_FN struct gl_vcpu *gl_vcpu_info(int64_t fd)
{
	return gl_owned(fd) && gl_vcpu_of[fd] ? &gl_vcpus[gl_vcpu_of[fd] - 1] : NULL;
}

/* A memslot call succeeded: remember the VM's slots, in the order a Python dict
 * keeps them (a new slot last, a changed one in place). */
GL_FN void gl_record_memslot(int64_t vm, uint32_t slot, uint64_t gpa, uint64_t size, uint64_t uaddr,
			     int gmem, uint64_t offset)
{
	struct gl_vm *info = gl_vm_info(vm);
	int i;

	if (!info)
		return;
	for (i = 0; i < info->nslots && info->slots[i].key != slot; i++)
		;
	if (size == 0) {
		if (i < info->nslots) {
			memmove(&info->slots[i], &info->slots[i + 1],
				(info->nslots - i - 1) * sizeof(*info->slots));
			info->nslots--;
		}
		return;
	}
	if (i == info->nslots) {
		info->slots = realloc(info->slots, (info->nslots + 1) * sizeof(*info->slots));
		if (!info->slots)
			gl_fail("internal error: out of memory");
		info->nslots++;
	}
	info->slots[i] = (struct gl_slot){ slot, gpa, size, uaddr, gmem, offset };
}

GL_FN struct gl_gmem *gl_gmem_info(int64_t fd)
{
	return gl_owned(fd) && gl_gmem_of[fd] ? &gl_gmems[gl_gmem_of[fd] - 1] : NULL;
}

/* Whether guest_memfds keep the PRIVATE attribute themselves (in-place conversion):
 * -1 until asked. */
static int gl_inplace_state = -1;

GL_FN int gl_inplace(void)
{
	if (gl_inplace_state < 0) {
		int cap = ioctl(gl_kvm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES);

		gl_inplace_state = cap > 0 && (cap & KVM_MEMORY_ATTRIBUTE_PRIVATE);
	}
	return gl_inplace_state;
}

/* kvm_mem_is_private() as the case's own calls left it (HostKernel._kvm_private). */
GL_FN int gl_kvm_private(const struct gl_vm *vm, uint64_t gfn)
{
	if (vm->type == KVM_X86_DEFAULT_VM)
		return 0;
	if (!gl_inplace())
		return !!(gl_rmap_get(&vm->attributes, gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE);
	for (int i = 0; i < vm->nslots; i++) {
		const struct gl_slot *s = &vm->slots[i];
		uint64_t first = s->gpa >> 12;

		if (first <= gfn && gfn < first + (s->size >> 12)) {
			const struct gl_gmem *g = s->gmem ? &gl_gmems[s->gmem - 1] : NULL;

			if (!g || !g->tracked)
				return 0;
			return !!(gl_rmap_get(&g->attributes, (s->offset >> 12) + gfn - first) &
				  KVM_MEMORY_ATTRIBUTE_PRIVATE);
		}
	}
	return 0;
}

/* --- the case's pages ---------------------------------------------------------------- */

struct gl_run_span {
	uint64_t lo, hi; /* pages [lo, hi) the case mapped */
};

static struct gl_run_span *gl_spans;
static int gl_nspans, gl_cap_spans;

GL_FN void gl_set_pages(uint64_t first, uint64_t last, int mine)
{
	struct gl_run_span *out;
	int n = 0;

	if (first >= last)
		return;
	out = malloc((gl_nspans + 2) * sizeof(*out));
	if (!out)
		gl_fail("internal error: out of memory");
	for (int i = 0; i < gl_nspans; i++) {
		struct gl_run_span s = gl_spans[i];

		if (s.hi <= first || s.lo >= last) {
			out[n++] = s;
			continue;
		}
		if (s.lo < first)
			out[n++] = (struct gl_run_span){ s.lo, first };
		if (s.hi > last)
			out[n++] = (struct gl_run_span){ last, s.hi };
	}
	if (mine)
		out[n++] = (struct gl_run_span){ first, last };
	/* sort (few spans) and merge neighbours */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && out[j - 1].lo > out[j].lo; j--) {
			struct gl_run_span t = out[j];

			out[j] = out[j - 1];
			out[j - 1] = t;
		}
	gl_nspans = 0;
	if (n + 1 > gl_cap_spans) {
		gl_cap_spans = 2 * (n + 1);
		gl_spans = realloc(gl_spans, gl_cap_spans * sizeof(*gl_spans));
		if (!gl_spans)
			gl_fail("internal error: out of memory");
	}
	for (int i = 0; i < n; i++) {
		if (gl_nspans && gl_spans[gl_nspans - 1].hi == out[i].lo)
			gl_spans[gl_nspans - 1].hi = out[i].hi;
		else
			gl_spans[gl_nspans++] = out[i];
	}
	free(out);
}

GL_FN int gl_all_mine(uint64_t first, uint64_t last)
{
	for (int i = 0; i < gl_nspans && first < last; i++) {
		if (gl_spans[i].hi <= first)
			continue;
		if (gl_spans[i].lo > first)
			return 0;
		first = gl_spans[i].hi;
	}
	return first >= last;
}

GL_FN uint64_t gl_pages(uint64_t length)
{
	return (length >> 12) + ((length & (GL_PAGE - 1)) != 0);
}

GL_FN void gl_mark(uint64_t addr, uint64_t length, int mine)
{
	uint64_t first = addr >> 12, end;

	if (length == 0)
		return;
	end = first + gl_pages(length);
	if (end > GL_VPAGES || end < first)
		end = GL_VPAGES;
	gl_set_pages(first, end, mine);
}

struct gl_vma {
	uint64_t lo, hi;
	char perms[5];
};

/* Every mapping of this process (/proc/self/maps); *n of them. */
GL_FN struct gl_vma *gl_read_maps(int *n)
{
	FILE *f = fopen("/proc/self/maps", "r");
	struct gl_vma *v = NULL;
	char line[4096];
	int cap = 0;

	*n = 0;
	if (!f)
		gl_fail("internal error: cannot read /proc/self/maps: %s", strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		unsigned long long lo, hi;
		char perms[8];

		if (sscanf(line, "%llx-%llx %7s", &lo, &hi, perms) != 3)
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 256;
			v = realloc(v, cap * sizeof(*v));
			if (!v)
				gl_fail("internal error: out of memory");
		}
		v[*n].lo = lo;
		v[*n].hi = hi;
		memcpy(v[*n].perms, perms, 4);
		v[*n].perms[4] = 0;
		(*n)++;
	}
	fclose(f);
	return v;
}

/* 0 when [addr, addr + length) touches only memory the case mapped (or none). */
GL_FN int gl_check_range(uint64_t addr, uint64_t length, const char *what, struct gl_out *o)
{
	unsigned __int128 end128 = (unsigned __int128)addr + length;
	uint64_t end = end128 > ~0ULL ? ~0ULL : (uint64_t)end128;
	uint64_t first = addr >> 12;
	uint64_t last = (uint64_t)((end128 > ~0ULL ? ((unsigned __int128)1 << 64) : end128)
				   + GL_PAGE - 1) >> 12;
	struct gl_vma *maps;
	int n, bad = 0;

	if (length == 0)
		return 0;
	if (gl_all_mine(first, last < GL_VPAGES ? last : GL_VPAGES))
		return 0;
	maps = gl_read_maps(&n);
	for (int i = 0; i < n && !bad; i++) {
		uint64_t a, b;

		if (maps[i].hi <= addr || maps[i].lo >= end)
			continue;
		a = (maps[i].lo > addr ? maps[i].lo : addr) >> 12;
		b = gl_pages(maps[i].hi < end ? maps[i].hi : end);
		if (!gl_all_mine(a > first ? a : first, b < last ? b : last))
			bad = 1;
	}
	free(maps);
	if (!bad)
		return 0;
	if (end128 > ~0ULL)
		*o = gl_usage("%s: [%#" PRIx64 ", 0x10000000000000000) touches memory this kernel "
			      "did not map (the interpreter's own)", what, addr);
	else
		*o = gl_usage("%s: [%#" PRIx64 ", %#" PRIx64 ") touches memory this kernel did not "
			      "map (the interpreter's own)", what, addr, end);
	return -1;
}

/* After a failed MAP_FIXED or MREMAP_FIXED, what it was to replace may have
 * become a gap: pages without a mapping are not the case's any more. */
GL_FN void gl_forget_holes(uint64_t addr, uint64_t length)
{
	uint64_t first = addr >> 12, last, p;
	struct gl_vma *maps;
	int n;

	if (length == 0)
		return;
	last = gl_pages(addr + length);
	if (last > GL_VPAGES || addr + length < addr)
		last = GL_VPAGES;
	maps = gl_read_maps(&n);
	p = first;
	for (int i = 0; i <= n && p < last; i++) {
		uint64_t lo = i < n ? maps[i].lo >> 12 : last, hi = i < n ? maps[i].hi >> 12 : last;

		if (hi <= p)
			continue;
		if (lo > p)
			gl_set_pages(p, lo < last ? lo : last, 0);
		p = hi;
	}
	free(maps);
}

/* --- loads and stores that cannot kill the program ---------------------------------- */

static sigjmp_buf gl_jmp;
static volatile sig_atomic_t gl_in_access;
static volatile int gl_fault_sig;
static volatile uint64_t gl_fault_addr;

static void gl_on_fault(int sig, siginfo_t *si, void *ctx)
{
	(void)ctx;
	if (!gl_in_access) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	gl_fault_sig = sig;
	gl_fault_addr = (uint64_t)(uintptr_t)si->si_addr;
	siglongjmp(gl_jmp, 1);
}

GL_FN void gl_catch_faults(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = gl_on_fault;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
}

/* Copy (or fill) one stretch within a page; the signal it took, or 0. */
static __attribute__((noinline)) int gl_guarded(void *dst, const void *src, size_t n, int fill,
						int use_fill)
{
	if (sigsetjmp(gl_jmp, 1)) {
		gl_in_access = 0;
		return gl_fault_sig;
	}
	gl_in_access = 1;
	if (use_fill)
		memset(dst, fill, n);
	else
		memcpy(dst, src, n);
	gl_in_access = 0;
	return 0;
}

GL_FN struct gl_out gl_signal_out(int sig)
{
	struct gl_out o;

	memset(&o, 0, sizeof(o));
	o.kind = GL_SIGNAL;
	o.sig = sig;
	o.addr = gl_fault_addr;
	return o;
}

GL_FN struct gl_out gl_read_mem(uint64_t addr, uint64_t length)
{
	struct gl_out o = gl_ret(0);
	struct gl_vma *maps;
	unsigned char *buf;
	uint64_t done = 0;
	int n;

	o.rkind = GL_R_BYTES;
	if (length == 0)
		return o;
	if (gl_check_range(addr, length, "read_mem", &o))
		return o;
	buf = malloc(length);
	if (!buf)
		return gl_bad(GL_INTERNAL, "cannot allocate %" PRIu64 " bytes", length);
	maps = gl_read_maps(&n);
	while (done < length) {
		uint64_t at = addr + done, chunk = GL_PAGE - (at & (GL_PAGE - 1));
		int sig;

		if (chunk > length - done)
			chunk = length - done;
		for (int i = 0; i < n; i++) {
			if (maps[i].lo <= at && at < maps[i].hi && maps[i].perms[0] != 'r' &&
			    memcmp(maps[i].perms, "---", 3)) {
				free(maps);
				free(buf);
				/* A load through PROT_WRITE or PROT_EXEC alone: the Python host
				 * refuses it rather than risk the interpreter. */
				return gl_usage("read_mem: %#" PRIx64 " is mapped without PROT_READ; "
						"the host cannot check such a load without risking "
						"a crash", at);
			}
		}
		sig = gl_guarded(buf + done, (const void *)(uintptr_t)at, chunk, 0, 0);
		if (sig) {
			free(maps);
			free(buf);
			return gl_signal_out(sig);
		}
		done += chunk;
	}
	free(maps);
	o.data = buf;
	o.len = length;
	return o;
}

GL_FN struct gl_out gl_store(uint64_t addr, const unsigned char *data, uint64_t n, int fill,
			     int use_fill)
{
	struct gl_out o = gl_ret((int64_t)n);
	uint64_t done = 0;

	if (n == 0)
		return o;
	if (gl_check_range(addr, n, "write_mem", &o))
		return o;
	while (done < n) {
		uint64_t at = addr + done, chunk = GL_PAGE - (at & (GL_PAGE - 1));
		int sig;

		if (chunk > n - done)
			chunk = n - done;
		sig = gl_guarded((void *)(uintptr_t)at, use_fill ? NULL : data + done, chunk, fill,
				 use_fill);
		if (sig)
			return gl_signal_out(sig);
		done += chunk;
	}
	return o;
}

GL_FN struct gl_out gl_write_mem(uint64_t addr, const unsigned char *data, uint64_t n)
{
	return gl_store(addr, data, n, 0, 0);
}

GL_FN struct gl_out gl_write_mem_fill(uint64_t addr, int fill, uint64_t length)
{
	return gl_store(addr, NULL, length, fill, 1);
}

/* --- files ------------------------------------------------------------------------ */

GL_FN struct gl_out gl_open_kvm(void)
{
	return gl_adopt(open("/dev/kvm", O_RDWR | O_CLOEXEC));
}

GL_FN struct gl_out gl_memfd_create(const char *name, uint32_t flags)
{
	return gl_adopt(syscall(SYS_memfd_create, name, flags));
}

GL_FN struct gl_out gl_memfd_restricted(uint32_t flags)
{
	(void)flags;
	/* The 2022 proposal's system call was never merged: no kernel has a number for it. */
	return gl_errno_out(ENOSYS);
}

GL_FN void gl_forget_vcpu_fd(struct gl_vcpu *v, int fd);

GL_FN struct gl_out gl_close(int64_t fd)
{
	struct gl_vcpu *v;

	GL_CHECK_FD(fd);
	v = gl_vcpu_info(fd);
	if (v) {
		gl_vcpu_of[fd] = 0;
		gl_forget_vcpu_fd(v, (int)fd);
	}
	gl_vm_of[fd] = 0;
	gl_gmem_of[fd] = 0;
	if (close((int)fd) < 0)
		return gl_errno_out(errno);
	gl_own_fd[fd] = 0;
	return gl_ret(0);
}

GL_FN struct gl_out gl_dup(int64_t fd)
{
	struct gl_out o;

	GL_CHECK_FD(fd);
	o = gl_adopt(fcntl((int)fd, F_DUPFD_CLOEXEC, 0));
	if (o.kind != GL_OK)
		return o;
	gl_vm_of[o.value] = gl_vm_of[fd];
	gl_vcpu_of[o.value] = gl_vcpu_of[fd];
	gl_gmem_of[o.value] = gl_gmem_of[fd];
	if (gl_vcpu_of[fd]) {
		struct gl_vcpu *v = &gl_vcpus[gl_vcpu_of[fd] - 1];

		if (v->nfds < 64)
			v->fds[v->nfds++] = (int)o.value;
	}
	return o;
}

GL_FN struct gl_out gl_fstat(int64_t fd)
{
	struct gl_out o = gl_ret(0);

	GL_CHECK_FD(fd);
	if (fstat((int)fd, &o.st) < 0)
		return gl_errno_out(errno);
	o.rkind = GL_R_STAT;
	return o;
}

GL_FN struct gl_out gl_fchmod(int64_t fd, uint32_t mode)
{
	char path[64], link[256];
	ssize_t n;

	GL_CHECK_FD(fd);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", (int)fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return gl_errno_out(errno);
	link[n] = 0;
	if (strncmp(link, "/memfd:", 7) && strcmp(link, "anon_inode:[kvm-gmem]"))
		return gl_usage("fchmod: only guest_memfd and memfd files may be changed (the others "
				"share a system-wide inode)");
	return gl_sys(fchmod((int)fd, mode));
}

GL_FN struct gl_out gl_fsync(int64_t fd)
{
	GL_CHECK_FD(fd);
	return gl_sys(fsync((int)fd));
}

GL_FN struct gl_out gl_bytes_out(unsigned char *buf, ssize_t n)
{
	struct gl_out o;

	if (n < 0) {
		int err = errno;

		free(buf);
		return gl_errno_out(err);
	}
	o = gl_ret(0);
	o.rkind = GL_R_BYTES;
	o.data = buf;
	o.len = (size_t)n;
	return o;
}

GL_FN struct gl_out gl_read(int64_t fd, uint64_t length)
{
	unsigned char *buf;

	GL_CHECK_FD(fd);
	buf = malloc(length ? length : 1);
	if (!buf)
		return gl_bad(GL_INTERNAL, "cannot allocate %" PRIu64 " bytes", length);
	return gl_bytes_out(buf, read((int)fd, buf, length));
}

GL_FN struct gl_out gl_write(int64_t fd, const unsigned char *data, uint64_t n)
{
	GL_CHECK_FD(fd);
	return gl_sys(write((int)fd, data, n));
}

GL_FN struct gl_out gl_pread(int64_t fd, uint64_t length, int64_t offset)
{
	unsigned char *buf;

	if (offset < 0)
		return gl_errno_out(EINVAL);
	GL_CHECK_FD(fd);
	buf = malloc(length ? length : 1);
	if (!buf)
		return gl_bad(GL_INTERNAL, "cannot allocate %" PRIu64 " bytes", length);
	return gl_bytes_out(buf, pread((int)fd, buf, length, offset));
}

GL_FN struct gl_out gl_pwrite(int64_t fd, const unsigned char *data, uint64_t n, int64_t offset)
{
	if (offset < 0)
		return gl_errno_out(EINVAL);
	GL_CHECK_FD(fd);
	return gl_sys(pwrite((int)fd, data, n, offset));
}

GL_FN struct gl_out gl_lseek(int64_t fd, int64_t offset, uint32_t whence)
{
	GL_CHECK_FD(fd);
	return gl_sys(lseek((int)fd, offset, (int)whence));
}

GL_FN struct gl_out gl_ftruncate(int64_t fd, int64_t length)
{
	if (length < 0)
		return gl_errno_out(EINVAL);
	GL_CHECK_FD(fd);
	return gl_sys(ftruncate((int)fd, length));
}

GL_FN struct gl_out gl_fallocate(int64_t fd, int32_t mode, int64_t offset, int64_t length)
{
	GL_CHECK_FD(fd);
	return gl_sys(fallocate((int)fd, mode, offset, length));
}

/* --- the address space ------------------------------------------------------------ */

GL_FN struct gl_out gl_mmap(int64_t fd, uint64_t length, int32_t prot, int32_t flags,
			    int64_t offset, uint64_t addr)
{
	struct gl_out o;
	int raw_fd = -1;
	long r;

	if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
		if (gl_check_range(addr, length, "mmap", &o))
			return o;
	} else {
		addr = 0; /* a hint could place the mapping among this program's own */
	}
	if (!(flags & MAP_ANONYMOUS)) {
		GL_CHECK_FD(fd);
		raw_fd = (int)fd;
	}
	r = syscall(SYS_mmap, addr, length, prot, flags, (unsigned long)(uint32_t)raw_fd, offset);
	if (r == -1) {
		int err = errno;

		if ((flags & MAP_FIXED) && !(flags & MAP_FIXED_NOREPLACE))
			gl_forget_holes(addr, length);
		return gl_errno_out(err);
	}
	gl_mark((uint64_t)r, length, 1);
	return gl_ret(r);
}

GL_FN struct gl_out gl_munmap(uint64_t addr, uint64_t length)
{
	struct gl_out o;

	if (gl_check_range(addr, length, "munmap", &o))
		return o;
	if (munmap((void *)(uintptr_t)addr, length) < 0)
		return gl_errno_out(errno);
	if (!(addr & (GL_PAGE - 1)))
		gl_mark(addr, length, 0);
	return gl_ret(0);
}

GL_FN struct gl_out gl_mprotect(uint64_t addr, uint64_t length, int32_t prot)
{
	struct gl_out o;

	if (gl_check_range(addr, length, "mprotect", &o))
		return o;
	return gl_sys(mprotect((void *)(uintptr_t)addr, length, prot));
}

GL_FN struct gl_out gl_madvise(uint64_t addr, uint64_t length, int32_t advice)
{
	struct gl_out o;

	if (gl_check_range(addr, length, "madvise", &o))
		return o;
	return gl_sys(madvise((void *)(uintptr_t)addr, length, advice));
}

GL_FN struct gl_out gl_mremap(uint64_t addr, uint64_t old_length, uint64_t new_length, uint64_t flags,
			      uint64_t new_address)
{
	struct gl_out o;
	long r;

	if (gl_check_range(addr, old_length, "mremap", &o))
		return o;
	if ((flags & MREMAP_FIXED) && gl_check_range(new_address, new_length, "mremap", &o))
		return o;
	r = syscall(SYS_mremap, addr, old_length, new_length, flags, new_address);
	if (r == -1) {
		int err = errno;

		if (flags & MREMAP_FIXED)
			gl_forget_holes(new_address, new_length);
		return gl_errno_out(err);
	}
	if ((uint64_t)r != addr)
		gl_mark(addr, old_length, 0);
	else if (new_length < old_length)
		gl_mark(addr + new_length, old_length - new_length, 0);
	gl_mark((uint64_t)r, new_length, 1);
	return gl_ret(r);
}

/* --- NUMA memory policy: the raw system calls ------------------------------------------ */

/* The unsigned longs of a mask of maxnode - 1 bits (the kernel drops one). */
GL_FN unsigned __int128 gl_mask_words(uint64_t maxnode)
{
	return ((unsigned __int128)(uint64_t)(maxnode - 1) + 63) / 64;
}

/* The words to pass for a case's mask: as many as the kernel may read, zero-padded
 * (NULL for an empty mask). */
GL_FN uint64_t *gl_user_nodemask(const uint64_t *mask, size_t n, uint64_t maxnode)
{
	unsigned __int128 want = gl_mask_words(maxnode);
	size_t words = want > GL_MAX_WORDS ? GL_MAX_WORDS : want < 1 ? 1 : (size_t)want;
	uint64_t *buf;

	if (!n)
		return NULL;
	buf = calloc(words, sizeof(uint64_t));
	if (!buf)
		gl_fail("internal error: out of memory");
	memcpy(buf, mask, (n < words ? n : words) * sizeof(uint64_t));
	return buf;
}

GL_FN struct gl_out gl_mbind(uint64_t addr, uint64_t len, int32_t mode, const uint64_t *mask,
			     size_t n, uint64_t maxnode, uint32_t flags)
{
	uint64_t size = (len + GL_PAGE - 1) & ~(GL_PAGE - 1), *words;
	struct gl_out o;
	long r;
	int err;

	if ((flags & GL_MPOL_MF_VALID) && !(flags & ~GL_MPOL_MF_VALID))
		return gl_usage("mbind: flags MPOL_MF_STRICT, MOVE and MOVE_ALL refused: where pages "
				"lie and their migration are not modelled");
	/* Only a call the kernel could carry out needs the range to be the case's. */
	if (!(addr & (GL_PAGE - 1)) && size &&
	    (unsigned __int128)addr + size <= (unsigned __int128)1 << 64 &&
	    gl_check_range(addr, size, "mbind", &o))
		return o;
	words = gl_user_nodemask(mask, n, maxnode);
	r = syscall(SYS_mbind, addr, len, (long)mode, words, maxnode, (unsigned long)flags);
	err = errno;
	free(words);
	return r < 0 ? gl_errno_out(err) : gl_ret(0);
}

GL_FN struct gl_out gl_get_mempolicy(uint64_t maxnode, uint64_t addr, uint64_t flags)
{
	unsigned __int128 want = gl_mask_words(maxnode);
	size_t words = 0;
	uint64_t *buf;
	struct gl_out o;
	int mode = 0;

	if ((flags & MPOL_F_NODE) && !(flags & ~(uint64_t)(MPOL_F_NODE | MPOL_F_ADDR)))
		return gl_usage("get_mempolicy: MPOL_F_NODE refused: the node of a page or the next "
				"interleave node is not modelled");
	if ((flags & MPOL_F_ADDR) && gl_check_range(addr, 1, "get_mempolicy", &o))
		return o;
	if (maxnode)
		words = want > GL_MAX_WORDS ? GL_MAX_WORDS : (size_t)want;
	buf = calloc(words ? words : 1, sizeof(uint64_t));
	if (!buf)
		return gl_bad(GL_INTERNAL, "out of memory");
	if (syscall(SYS_get_mempolicy, &mode, maxnode ? buf : NULL, maxnode, addr, flags) < 0) {
		int err = errno;

		free(buf);
		return gl_errno_out(err);
	}
	o = gl_ret(0);
	o.rkind = GL_R_MEMPOLICY;
	o.mode = mode;
	o.words = buf;
	o.nwords = words;
	return o;
}

GL_FN struct gl_out gl_set_mempolicy(int32_t mode, const uint64_t *mask, size_t n, uint64_t maxnode)
{
	static int saved;
	uint64_t *words;
	long r;
	int err;

	if (!saved) {
		/* The Python host saves the thread's policy (1024 nodes) before the case's first
		 * set_mempolicy, to give it back after the case; here the case's process ends
		 * instead, but the call is made alike, as its failure would be the step's. */
		uint64_t old[16];
		int old_mode;

		if (syscall(SYS_get_mempolicy, &old_mode, old, 64UL * 16 + 1, 0UL, 0UL) < 0)
			return gl_errno_out(errno);
		saved = 1;
	}
	words = gl_user_nodemask(mask, n, maxnode);
	r = syscall(SYS_set_mempolicy, (long)mode, words, maxnode);
	err = errno;
	free(words);
	return r < 0 ? gl_errno_out(err) : gl_ret(0);
}

/* --- KVM ---------------------------------------------------------------------------- */

struct gl_create_guest_memfd {
	uint64_t size, flags, reserved[6];
};

struct gl_memory_region {
	uint32_t slot, flags;
	uint64_t guest_phys_addr, memory_size, userspace_addr;
};

struct gl_memory_region2 {
	uint32_t slot, flags;
	uint64_t guest_phys_addr, memory_size, userspace_addr;
	uint64_t guest_memfd_offset;
	uint32_t guest_memfd, pad1;
	uint64_t pad2[14];
};

struct gl_memory_attributes {
	uint64_t address, size, attributes, flags;
};

struct gl_memory_attributes2 {
	uint64_t offset, size, attributes, flags, error_offset, reserved[11];
};

struct gl_enable_cap {
	uint32_t cap, flags;
	uint64_t args[4];
	uint8_t pad[64];
};

struct gl_memory_fault {
	uint64_t flags, gpa, size;
};

_Static_assert(sizeof(struct gl_create_guest_memfd) == GL_SIZEOF_KVM_CREATE_GUEST_MEMFD, "layout");
_Static_assert(sizeof(struct gl_memory_region) == GL_SIZEOF_KVM_USERSPACE_MEMORY_REGION, "layout");
_Static_assert(sizeof(struct gl_memory_region2) == GL_SIZEOF_KVM_USERSPACE_MEMORY_REGION2, "layout");
_Static_assert(sizeof(struct gl_memory_attributes) == GL_SIZEOF_KVM_MEMORY_ATTRIBUTES, "layout");
_Static_assert(sizeof(struct gl_memory_attributes2) == GL_SIZEOF_KVM_MEMORY_ATTRIBUTES2, "layout");
_Static_assert(sizeof(struct gl_enable_cap) == GL_SIZEOF_KVM_ENABLE_CAP, "layout");
_Static_assert(sizeof(struct kvm_regs) == GL_SIZEOF_KVM_REGS, "layout");
_Static_assert(sizeof(struct kvm_sregs) == GL_SIZEOF_KVM_SREGS, "layout");

GL_FN struct gl_out gl_create_vm(uint64_t type)
{
	struct gl_out o = gl_adopt(ioctl(gl_kvm, KVM_CREATE_VM, (unsigned long)type));

	if (o.kind == GL_OK) {
		if (gl_nvms == (int)(sizeof(gl_vms) / sizeof(gl_vms[0])))
			return gl_bad(GL_INTERNAL, "more VMs than the export tracks");
		gl_vms[gl_nvms] = (struct gl_vm){ .type = type, .hidden_fd = -1 };
		gl_rmap_init(&gl_vms[gl_nvms].attributes, 0);
		gl_vm_of[o.value] = (short)++gl_nvms;
	}
	return o;
}

GL_FN struct gl_out gl_check_extension(uint64_t cap, int has_vm, int64_t vm)
{
	int fd = gl_kvm;

	if (has_vm) {
		GL_CHECK_FD(vm);
		fd = (int)vm;
	}
	return gl_sys(ioctl(fd, KVM_CHECK_EXTENSION, (unsigned long)cap));
}

GL_FN struct gl_out gl_create_guest_memfd(int64_t vm, uint64_t size, uint64_t flags,
					  const uint64_t *reserved, int nreserved)
{
	struct gl_create_guest_memfd arg = { .size = size, .flags = flags };
	struct gl_out o;
	struct gl_gmem *g;

	for (int i = 0; i < nreserved && i < 6; i++)
		arg.reserved[i] = reserved[i];
	GL_CHECK_FD(vm);
	o = gl_adopt(ioctl((int)vm, KVM_CREATE_GUEST_MEMFD, &arg));
	if (o.kind != GL_OK)
		return o;
	if (gl_ngmems == (int)(sizeof(gl_gmems) / sizeof(gl_gmems[0])))
		return gl_bad(GL_INTERNAL, "more guest_memfds than the export tracks");
	g = &gl_gmems[gl_ngmems];
	g->tracked = gl_inplace();
	if (g->tracked)
		gl_rmap_init(&g->attributes, flags & GUEST_MEMFD_FLAG_INIT_SHARED ? 0 :
			     KVM_MEMORY_ATTRIBUTE_PRIVATE);
	gl_gmem_of[o.value] = (short)++gl_ngmems;
	return o;
}

/* An fd inside an ioctl struct: one the case does not have becomes -1. */
GL_FN uint32_t gl_struct_fd(uint32_t fd)
{
	return gl_owned((int32_t)fd) ? fd : 0xffffffffu;
}

GL_FN struct gl_out gl_set_user_memory_region(int64_t vm, uint32_t slot, uint32_t flags,
					      uint64_t gpa, uint64_t size, uint64_t uaddr)
{
	struct gl_memory_region arg = { slot, flags, gpa, size, uaddr };
	struct gl_out o;

	GL_CHECK_FD(vm);
	o = gl_sys(ioctl((int)vm, KVM_SET_USER_MEMORY_REGION, &arg));
	if (o.kind == GL_OK)
		gl_record_memslot(vm, slot, gpa, size, uaddr, 0, 0);
	return o;
}

GL_FN struct gl_out gl_set_user_memory_region2(int64_t vm, uint32_t slot, uint32_t flags,
					       uint64_t gpa, uint64_t size, uint64_t uaddr,
					       uint32_t guest_memfd, uint64_t guest_memfd_offset)
{
	struct gl_memory_region2 arg = {
		.slot = slot, .flags = flags, .guest_phys_addr = gpa, .memory_size = size,
		.userspace_addr = uaddr, .guest_memfd_offset = guest_memfd_offset,
		.guest_memfd = gl_struct_fd(guest_memfd),
	};
	struct gl_out o;

	GL_CHECK_FD(vm);
	o = gl_sys(ioctl((int)vm, KVM_SET_USER_MEMORY_REGION2, &arg));
	if (o.kind == GL_OK)
		gl_record_memslot(vm, slot, gpa, size, uaddr,
				  flags & KVM_MEM_GUEST_MEMFD && gl_owned((int32_t)guest_memfd) ?
				  gl_gmem_of[(int32_t)guest_memfd] : 0, guest_memfd_offset);
	return o;
}

GL_FN struct gl_out gl_set_memory_attributes(int64_t vm, uint64_t address, uint64_t size,
					     uint64_t attributes, uint64_t flags)
{
	struct gl_memory_attributes arg = { address, size, attributes, flags };
	struct gl_vm *info;
	struct gl_out o;

	GL_CHECK_FD(vm);
	o = gl_sys(ioctl((int)vm, KVM_SET_MEMORY_ATTRIBUTES, &arg));
	info = gl_vm_info(vm);
	if (o.kind == GL_OK && info)
		gl_rmap_set(&info->attributes, address >> 12,
			    (uint64_t)(((unsigned __int128)address + size) >> 12), attributes);
	return o;
}

/* KVM_SET_MEMORY_ATTRIBUTES2 on a guest_memfd (in-place conversion): on EAGAIN or
 * ENOMEM the kernel writes back the offset of the page that stopped it. */
GL_FN struct gl_out gl_set_memory_attributes2(int64_t fd, uint64_t offset, uint64_t size,
					      uint64_t attributes, uint64_t flags)
{
	struct gl_memory_attributes2 arg = {
		.offset = offset, .size = size, .attributes = attributes, .flags = flags,
	};
	struct gl_gmem *g;

	GL_CHECK_FD(fd);
	if (ioctl((int)fd, KVM_SET_MEMORY_ATTRIBUTES2, &arg) < 0) {
		struct gl_out o = gl_errno_out(errno);

		if (o.err == EAGAIN || o.err == ENOMEM) {
			o.has_error_offset = 1;
			o.error_offset = arg.error_offset;
		}
		return o;
	}
	g = gl_gmem_info(fd);
	if (g && g->tracked)
		gl_rmap_set(&g->attributes, offset >> 12,
			    (uint64_t)(((unsigned __int128)offset + size) >> 12), attributes);
	return gl_ret(0);
}

GL_FN struct gl_out gl_enable_cap(int64_t vm, uint32_t cap, const uint64_t *args, int nargs,
				  uint32_t flags)
{
	struct gl_enable_cap arg = { .cap = cap, .flags = flags };

	for (int i = 0; i < nargs && i < 4; i++)
		arg.args[i] = args[i];
	GL_CHECK_FD(vm);
	return gl_sys(ioctl((int)vm, KVM_ENABLE_CAP, &arg));
}

GL_FN struct gl_out gl_create_vcpu(int64_t vm, uint64_t id)
{
	struct gl_vm *info;
	struct gl_vcpu *v;
	struct gl_out o;

	GL_CHECK_FD(vm);
	o = gl_adopt(ioctl((int)vm, KVM_CREATE_VCPU, (unsigned long)id));
	info = gl_vm_info(vm);
	if (o.kind != GL_OK || !info)
		return o;
	if (gl_nvcpus == (int)(sizeof(gl_vcpus) / sizeof(gl_vcpus[0])))
		return gl_bad(GL_INTERNAL, "more vCPUs than the export tracks");
	v = &gl_vcpus[gl_nvcpus];
	memset(v, 0, sizeof(*v));
	v->vm = gl_vm_of[vm] - 1;
	v->fds[v->nfds++] = (int)o.value;
	gl_vcpu_of[o.value] = (short)++gl_nvcpus;
	info->vcpus++;
	if (info->hidden_fd < 0)
		info->hidden_fd = fcntl((int)vm, F_DUPFD_CLOEXEC, 0);
	return o;
}

/* The case closes a vCPU fd: drop the kvm_run mapping on it, and our VM dup
 * once the VM has no vCPU fd left. */
GL_FN void gl_forget_vcpu_fd(struct gl_vcpu *v, int fd)
{
	struct gl_vm *vm = &gl_vms[v->vm];
	int i;

	for (i = 0; i < v->nfds && v->fds[i] != fd; i++)
		;
	if (i < v->nfds)
		v->fds[i] = v->fds[--v->nfds];
	if (v->run && v->run_fd == fd) {
		munmap(v->run, gl_run_size);
		v->run = NULL;
	}
	if (!v->nfds) {
		vm->vcpus--;
		if (vm->vcpus == 0 && vm->hidden_fd >= 0) {
			close(vm->hidden_fd);
			vm->hidden_fd = -1;
		}
	}
}

/* Whether the guest itself marks an access private (SNP: the C-bit, TDX: the shared bit). */
GL_FN int gl_guest_chooses_private(uint64_t type)
{
	return type == KVM_X86_SNP_VM || type == KVM_X86_TDX_VM;
}

/* The guest accesses no guest can make (guestaccess.check_call's private rule and
 * check_private): 0, or -1 with the malformed call in *o.  private_access is 1 or 0 as
 * the case says, -1 when it does not. */
GL_FN int gl_check_private(const struct gl_vm *vm, uint64_t gpa, uint64_t length,
			   int private_access, struct gl_out *o)
{
	if (private_access == 1 && vm->type == KVM_X86_DEFAULT_VM) {
		*o = gl_usage("guest_access: a VM of type %" PRIu64 " has no private memory, so no "
			      "private access", vm->type);
		return -1;
	}
	if (private_access < 0 || gl_guest_chooses_private(vm->type))
		return 0;
	/* KVM, not the guest, decides from the attributes: private must say what it decides. */
	for (uint64_t gfn = gpa >> 12; gfn <= (gpa + length - 1) >> 12; gfn++) {
		int is_private = gl_kvm_private(vm, gfn);
		const char *state = is_private ? "private" : "shared";

		if (is_private == private_access)
			continue;
		*o = gl_usage("guest_access: gfn 0x%" PRIx64 " is %s, and on a VM of type %" PRIu64
			      " KVM, not the guest, decides from the memory attributes that an access "
			      "to it is %s: private = %s names an access no guest can make (omit "
			      "private)", gfn, state, vm->type, state, private_access ? "true" : "false");
		return -1;
	}
	return 0;
}

/* --- judging a result (conform/runner.py _check_result) ------------------------------------ */

GL_FN const char *gl_exit_name(int exit)
{
	return exit == GL_EXIT_NONE ? "none" : exit == GL_EXIT_MMIO ? "mmio" : "memory_fault";
}

/* The bytes a result holds: a read's, or a completed guest load's. */
GL_FN void gl_data_of(const struct gl_out *o, const char *op)
{
	if (o->rkind == GL_R_GUEST && o->ga.exit != GL_EXIT_NONE)
		gl_fail("expected the access to complete, got exit %s (gpa %#" PRIx64 ")",
			gl_exit_name(o->ga.exit), o->ga.gpa);
	if (o->rkind != GL_R_BYTES && o->rkind != GL_R_GUEST)
		gl_fail("%s returns no bytes to compare", op);
}

GL_FN void gl_all_bytes(const struct gl_out *o, int value)
{
	gl_data_of(o, gl_step_op);
	for (size_t i = 0; i < o->len; i++)
		if (o->data[i] != value)
			gl_fail("expected every byte %#04x, byte %zu is %#04x (%zu bytes read)", value, i,
				o->data[i], o->len);
}

GL_FN void gl_bytes_equal(const struct gl_out *o, const char *want, size_t n, const char *hex)
{
	char got[64];

	gl_data_of(o, gl_step_op);
	if (o->len == n && !memcmp(o->data, want, n))
		return;
	gl_show_result(o, got, sizeof(got));
	gl_fail("expected bytes %s, got %s%s", hex, o->rkind == GL_R_GUEST ? "data " : "", got);
}

/* differs = "HEX" on a read: the bytes read are not these. */
GL_FN void gl_bytes_differ(const struct gl_out *o, const char *other, size_t n, const char *hex)
{
	if (o->len == n && !memcmp(o->data, other, n))
		gl_fail("expected bytes other than %s", hex);
}

/* A value as the runner compares it (runner._equal): strings in any case, booleans
 * only with booleans, lists element by element.  GL_T_MISSING equals nothing. */
enum { GL_T_MISSING, GL_T_INT, GL_T_STR, GL_T_BOOL, GL_T_LIST };

struct gl_val {
	int kind;
	__int128 num;         /* GL_T_INT, GL_T_BOOL */
	const char *str;      /* GL_T_STR */
	const __int128 *list; /* GL_T_LIST */
	size_t n;
	const char *shown;    /* as the case writes it (NULL: show the value) */
};

GL_FN struct gl_val gl_v_int(__int128 v, const char *shown)
{
	return (struct gl_val){ .kind = GL_T_INT, .num = v, .shown = shown };
}

GL_FN struct gl_val gl_v_bool(int v, const char *shown)
{
	return (struct gl_val){ .kind = GL_T_BOOL, .num = !!v, .shown = shown };
}

GL_FN struct gl_val gl_v_str(const char *v, const char *shown)
{
	return (struct gl_val){ .kind = GL_T_STR, .str = v, .shown = shown };
}

GL_FN struct gl_val gl_v_list(const __int128 *v, size_t n, const char *shown)
{
	return (struct gl_val){ .kind = GL_T_LIST, .list = v, .n = n, .shown = shown };
}

GL_FN struct gl_val gl_v_never(const char *shown)
{
	return (struct gl_val){ .kind = GL_T_MISSING, .shown = shown };
}

GL_FN int gl_equal(const struct gl_val *got, const struct gl_val *want)
{
	if (got->kind == GL_T_MISSING || want->kind == GL_T_MISSING)
		return 0;
	if (got->kind == GL_T_STR || want->kind == GL_T_STR)
		return got->kind == want->kind && !strcasecmp(got->str, want->str);
	if (got->kind == GL_T_BOOL || want->kind == GL_T_BOOL)
		return got->kind == want->kind && got->num == want->num;
	if (got->kind != want->kind)
		return 0;
	if (got->kind == GL_T_INT)
		return got->num == want->num;
	if (got->n != want->n)
		return 0;
	for (size_t i = 0; i < got->n; i++)
		if (got->list[i] != want->list[i])
			return 0;
	return 1;
}

/* The value as the runner shows it (repr). */
GL_FN void gl_val_text(const struct gl_val *v, char *buf, size_t size)
{
	size_t at;

	if (v->shown) {
		snprintf(buf, size, "%s", v->shown);
		return;
	}
	switch (v->kind) {
	case GL_T_INT:
		gl_i128_text(v->num, buf, size);
		return;
	case GL_T_STR:
		snprintf(buf, size, "'%s'", v->str);
		return;
	case GL_T_BOOL:
		snprintf(buf, size, "%s", v->num ? "True" : "False");
		return;
	case GL_T_LIST:
		snprintf(buf, size, "[");
		for (size_t i = 0; i < v->n && (at = strlen(buf)) + 48 < size; i++) {
			if (i)
				strcat(buf, ", ");
			gl_i128_text(v->list[i], buf + strlen(buf), size - strlen(buf));
		}
		if (strlen(buf) + 2 < size)
			strcat(buf, "]");
		return;
	}
	snprintf(buf, size, "?");
}

/* Room for one value of a table result. */
struct gl_cell {
	struct gl_val v;
	char text[64];
	char *hex; /* a guest access's data_hex */
	__int128 list[GL_MAX_WORDS];
};

GL_FN void gl_cell_free(struct gl_cell *c)
{
	free(c->hex);
	c->hex = NULL;
}

/* The keys a table result has, sorted, as "a, b" (or "['a', 'b']" when quoted). */
GL_FN void gl_table_keys(const struct gl_out *o, char *buf, size_t size, int quoted)
{
	static const char *stat_keys[] = { "blksize", "blocks", "dev", "ino", "mode", "nlink", "size" };
	static const char *policy_keys[] = { "mode", "nodemask" };
	static const char *none_keys[] = { "data_hex", "exit" };
	static const char *mmio_keys[] = { "data_hex", "exit", "gpa", "size", "write" };
	static const char *fault_keys[] = { "data_hex", "errno", "exit", "flags", "gpa", "size" };
	const char **keys;
	size_t n;

	if (o->rkind == GL_R_STAT)
		keys = stat_keys, n = 7;
	else if (o->rkind == GL_R_MEMPOLICY)
		keys = policy_keys, n = 2;
	else if (o->ga.exit == GL_EXIT_NONE)
		keys = none_keys, n = 2;
	else if (o->ga.exit == GL_EXIT_MMIO)
		keys = mmio_keys, n = 5;
	else
		keys = fault_keys, n = 6;
	snprintf(buf, size, "%s", quoted ? "[" : "");
	for (size_t i = 0; i < n; i++)
		snprintf(buf + strlen(buf), size - strlen(buf), quoted ? "%s'%s'" : "%s%s",
			 i ? ", " : "", keys[i]);
	if (quoted)
		snprintf(buf + strlen(buf), size - strlen(buf), "]");
}

/* One value of a table result (Stat, Mempolicy, GuestAccess .as_table()), or GL_T_MISSING. */
GL_FN void gl_table_get(const struct gl_out *o, const char *key, struct gl_cell *c)
{
	memset(&c->v, 0, sizeof(c->v));
	c->hex = NULL;
	c->v.kind = GL_T_INT;
	if (o->rkind == GL_R_STAT) {
		const struct stat *st = &o->st;

		if (!strcmp(key, "size")) c->v.num = st->st_size;
		else if (!strcmp(key, "mode")) c->v.num = st->st_mode;
		else if (!strcmp(key, "blksize")) c->v.num = st->st_blksize;
		else if (!strcmp(key, "blocks")) c->v.num = st->st_blocks;
		else if (!strcmp(key, "nlink")) c->v.num = st->st_nlink;
		else if (!strcmp(key, "ino")) c->v.num = st->st_ino;
		else if (!strcmp(key, "dev")) c->v.num = st->st_dev;
		else c->v.kind = GL_T_MISSING;
		return;
	}
	if (o->rkind == GL_R_MEMPOLICY) {
		if (!strcmp(key, "mode")) {
			c->v.num = o->mode;
		} else if (!strcmp(key, "nodemask")) {
			c->v.kind = GL_T_LIST;
			for (size_t i = 0; i < o->nwords && i < GL_MAX_WORDS; i++)
				c->list[i] = o->words[i];
			c->v.list = c->list;
			c->v.n = o->nwords;
		} else {
			c->v.kind = GL_T_MISSING;
		}
		return;
	}
	if (o->rkind != GL_R_GUEST) {
		c->v.kind = GL_T_MISSING;
		return;
	}
	if (!strcmp(key, "exit")) {
		c->v = gl_v_str(gl_exit_name(o->ga.exit), NULL);
	} else if (!strcmp(key, "data_hex")) {
		c->hex = malloc(2 * o->len + 1);
		if (!c->hex)
			gl_fail("internal error: out of memory");
		c->hex[0] = 0;
		for (size_t i = 0; i < o->len; i++)
			snprintf(c->hex + 2 * i, 3, "%02x", o->data[i]);
		c->v = gl_v_str(c->hex, NULL);
	} else if (o->ga.exit != GL_EXIT_NONE && !strcmp(key, "gpa")) {
		c->v.num = o->ga.gpa;
	} else if (o->ga.exit != GL_EXIT_NONE && !strcmp(key, "size")) {
		c->v.num = o->ga.size;
	} else if (o->ga.exit == GL_EXIT_MMIO && !strcmp(key, "write")) {
		c->v = gl_v_bool(o->ga.write, NULL);
	} else if (o->ga.exit == GL_EXIT_MEMORY_FAULT && !strcmp(key, "flags")) {
		c->v.num = o->ga.flags;
	} else if (o->ga.exit == GL_EXIT_MEMORY_FAULT && !strcmp(key, "errno")) {
		snprintf(c->text, sizeof(c->text), "%s", gl_errno_name(o->ga.err));
		c->v = gl_v_str(c->text, NULL);
	} else {
		c->v.kind = GL_T_MISSING;
	}
}

/* ret = {key = VALUE} (differ: differs = {key = VALUE}) on a table result. */
GL_FN void gl_table_check(const struct gl_out *o, const char *key, struct gl_val want, int differ)
{
	char got[4096], shown[4096], keys[256];
	struct gl_cell c;

	if (o->rkind != GL_R_STAT && o->rkind != GL_R_GUEST && o->rkind != GL_R_MEMPOLICY)
		gl_fail("expected a table, got a number");
	gl_table_get(o, key, &c);
	if (c.v.kind == GL_T_MISSING) {
		gl_table_keys(o, keys, sizeof(keys), 1);
		gl_fail("result has no '%s' (it has %s)", key, keys);
	}
	if (gl_equal(&c.v, &want) == !differ) {
		gl_cell_free(&c);
		return;
	}
	gl_val_text(&c.v, got, sizeof(got));
	gl_val_text(&want, shown, sizeof(shown));
	if (differ)
		gl_fail("expected %s to differ from %s, it is the same", key, shown);
	gl_fail("expected %s = %s, got %s", key, shown, got);
}

/* ret = VALUE (differ: differs = VALUE) on a number. */
GL_FN void gl_int_check(const struct gl_out *o, struct gl_val want, int differ)
{
	struct gl_val got = gl_v_int(o->value, NULL);
	char text[64], shown[128];

	if (o->rkind == GL_R_INT && gl_equal(&got, &want) == !differ)
		return;
	gl_val_text(&want, shown, sizeof(shown));
	if (differ)
		gl_fail("expected a result other than %s", shown);
	gl_show_result(o, text, sizeof(text));
	gl_fail("expected %s, got %s", shown, text);
}

/* error_offset = N after the expected errno. */
GL_FN void gl_error_offset(const struct gl_out *o, struct gl_val want)
{
	struct gl_val got = gl_v_int(o->error_offset, NULL);
	char shown[128];

	gl_val_text(&want, shown, sizeof(shown));
	if (!o->has_error_offset)
		gl_fail("expected error_offset %s, but the error reports none", shown);
	if (!gl_equal(&got, &want))
		gl_fail("expected error_offset %s, got %#" PRIx64, shown, o->error_offset);
}

/* $name.key of a bound table result (spelling._field): missing fails the step. */
GL_FN void gl_field_present(const struct gl_out *t, const char *key, const char *name)
{
	char keys[256];
	struct gl_cell c;

	gl_table_get(t, key, &c);
	gl_cell_free(&c);
	if (c.v.kind != GL_T_MISSING)
		return;
	gl_table_keys(t, keys, sizeof(keys), 0);
	gl_fail("$%s has no field '%s' (it has %s)", name, key, keys);
}

/* $name.key as a number (the plan knows the field holds one, once present). */
GL_FN __int128 gl_field_num(const struct gl_out *t, const char *key, const char *name)
{
	struct gl_cell c;

	gl_field_present(t, key, name);
	gl_table_get(t, key, &c);
	gl_cell_free(&c);
	return c.v.num;
}

/* $name.key as a value to compare with; c holds what it points to. */
GL_FN struct gl_val gl_field_val(const struct gl_out *t, const char *key, const char *name,
				 struct gl_cell *c)
{
	gl_field_present(t, key, name);
	gl_table_get(t, key, c);
	return c->v;
}

/* align_up(v, a): v rounded up to a multiple of a (a > 0), as Python's -(-v // a) * a. */
GL_FN __int128 gl_align_up(__int128 v, __int128 a)
{
	__int128 q = v / a;

	if (v % a && v > 0)
		q++;
	return q * a;
}
