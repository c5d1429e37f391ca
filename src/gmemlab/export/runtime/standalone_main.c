/*
 * The TAP driver: one child process per case, so that a case's fds, mappings
 * and signal handlers are its own, as a fresh HostKernel's are in Python.
 */

struct gl_case {
	const char *id;
	void (*run)(void); /* NULL when the verdict was decided at export */
	const char *status; /* that verdict: "SKIP" or "FAIL" */
	const char *message;
	int guest; /* the case asks who runs guest accesses here */
};

static char gl_guest_path[16];
static char gl_guest_missing[600];
static int gl_guest_probed;

/* Why /dev/kvm cannot be used here, or NULL (gmemlab.host.probe.kvm_missing). */
GL_FN const char *gl_kvm_missing(char *buf, size_t size)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int version;

	if (fd < 0) {
		snprintf(buf, size, "cannot open /dev/kvm: %s", strerror(errno));
		return buf;
	}
	version = ioctl(fd, KVM_GET_API_VERSION, 0);
	if (version < 0) {
		snprintf(buf, size, "KVM_GET_API_VERSION failed: %s", strerror(errno));
		close(fd);
		return buf;
	}
	close(fd);
	if (version != GL_KVM_API_VERSION) {
		snprintf(buf, size, "KVM API version %d, expected %d", version, GL_KVM_API_VERSION);
		return buf;
	}
	return NULL;
}

/* Run fn in a child; its status word and message (the rest of its report). */
GL_FN void gl_in_child(void (*fn)(void), char *status, size_t ssize, char *msg, size_t msize)
{
	char text[4096];
	size_t got = 0;
	int fds[2], wstatus;
	pid_t pid;
	char *space;

	fflush(stdout);
	if (pipe(fds) < 0) {
		snprintf(status, ssize, "FAIL");
		snprintf(msg, msize, "internal error: pipe: %s", strerror(errno));
		return;
	}
	pid = fork();
	if (pid == 0) {
		close(fds[0]);
		gl_result_fd = fds[1];
		gl_kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
		if (gl_kvm < 0)
			gl_finish("SKIP", "kernel unavailable: [Errno %d] %s", errno, strerror(errno));
		gl_catch_faults();
		fn();
		gl_finish("PASS", " ");
	}
	close(fds[1]);
	for (;;) {
		ssize_t n = read(fds[0], text + got, sizeof(text) - 1 - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	text[got] = 0;
	close(fds[0]);
	while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
		;
	if (pid < 0 || !got) {
		snprintf(status, ssize, "FAIL");
		if (pid > 0 && WIFSIGNALED(wstatus))
			snprintf(msg, msize, "the test process died of signal %d (%s)",
				 WTERMSIG(wstatus), strsignal(WTERMSIG(wstatus)));
		else
			snprintf(msg, msize, "the test process ended without a verdict");
		return;
	}
	space = strchr(text, ' ');
	if (space)
		*space++ = 0;
	gl_copy(status, ssize, text);
	gl_copy(msg, msize, space && strcmp(space, " ") ? space : "");
}

GL_FN void gl_probe_guest(void)
{
	char status[32];

	if (gl_guest_probed)
		return;
	gl_guest_probed = 1;
#ifdef GL_HAVE_GUEST
	char text[600];

	gl_in_child(gl_probe_access_path, status, sizeof(status), text, sizeof(text));
	if (!strcmp(status, "PATH")) {
		gl_copy(gl_guest_path, sizeof(gl_guest_path), text);
		gl_guest_missing[0] = 0;
	} else if (!strcmp(status, "MISSING")) {
		gl_copy(gl_guest_missing, sizeof(gl_guest_missing), text);
	} else {
		/* the probe's process failed in a way of its own (a crash, a SKIP) */
		gl_copy(gl_guest_missing, sizeof(gl_guest_missing), "the guest-path probe failed: ");
		gl_copy(gl_guest_missing + strlen(gl_guest_missing),
			sizeof(gl_guest_missing) - strlen(gl_guest_missing), text);
	}
#else
	(void)status;
	gl_copy(gl_guest_missing, sizeof(gl_guest_missing), GL_NO_GUEST);
#endif
}

/* Steps that run guest accesses, or a guest:PATH requirement, need the probe. */
GL_FN const char *gl_guest_unsupported(void)
{
	return gl_guest_missing[0] ? gl_guest_missing : NULL;
}

GL_FN void gl_require_guest(const char *text, const char *path)
{
	if (gl_guest_unsupported())
		gl_skip("requires %s (%s)", text, gl_guest_missing);
	if (strcmp(gl_guest_path, path))
		gl_skip("requires %s (guest accesses on this kernel go through the %s)", text,
			gl_guest_path);
}

GL_FN void gl_guest_usable(int index)
{
	if (gl_guest_unsupported())
		gl_skip("step %d (guest_access): %s", index, gl_guest_missing);
}

/* Why mbind, get_mempolicy and set_mempolicy cannot run here, or NULL
 * (gmemlab.host.probe: get_mempolicy without a mask or an address). */
GL_FN const char *gl_numa_missing(char *buf, size_t size)
{
	int mode;

	if (syscall(SYS_get_mempolicy, &mode, NULL, 0UL, 0UL, 0UL) == 0)
		return NULL;
	if (errno == ENOSYS)
		snprintf(buf, size, "the kernel is built without NUMA (CONFIG_NUMA): mbind, "
			 "get_mempolicy and set_mempolicy are ENOSYS");
	else if (errno == EPERM)
		snprintf(buf, size, "the NUMA policy calls are forbidden here (EPERM, a seccomp "
			 "filter?)");
	else
		snprintf(buf, size, "get_mempolicy fails: %s", strerror(errno));
	return buf;
}

/* A NUMA policy step, before any step runs (the first one asks for all). */
GL_FN void gl_numa_usable(int index, const char *op)
{
	char why[256];

	if (gl_numa_missing(why, sizeof(why)))
		gl_skip("step %d (%s): %s", index, op, why);
}

GL_FN int gl_cap(unsigned long cap)
{
	int value = ioctl(gl_kvm, KVM_CHECK_EXTENSION, cap);

	return value < 0 ? 0 : value;
}

/* The statfs magic of the filesystem a guest_memfd lives on, or -1 if none can be made. */
GL_FN long gl_gmem_fs_magic(void)
{
	struct gl_create_guest_memfd arg = { .size = GL_PAGE };
	struct statfs sfs;
	long magic = -1;
	int vm, gmem;

	vm = ioctl(gl_kvm, KVM_CREATE_VM, KVM_X86_DEFAULT_VM);
	if (vm < 0)
		return -1;
	gmem = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &arg);
	if (gmem >= 0) {
		if (!fstatfs(gmem, &sfs))
			magic = (long)((unsigned long)sfs.f_type & 0xffffffffUL);
		close(gmem);
	}
	close(vm);
	return magic;
}

/* The model design whose guest_memfd behaves as this kernel's (gmemlab.host.probe,
 * KernelProfile.design): no mmap is 6.8's; attributes kept by the file are the in-place
 * series'; the guest_memfd pseudo-filesystem came with 6.19's NUMA policy; else 6.18. */
GL_FN const char *gl_design(void)
{
	int gmem = gl_cap(KVM_CAP_GUEST_MEMFD) != 0;

	if (gmem && !(gl_cap(KVM_CAP_GUEST_MEMFD_FLAGS) & GUEST_MEMFD_FLAG_MMAP))
		return "gmem-6.8";
	if (gl_cap(KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES) & KVM_MEMORY_ATTRIBUTE_PRIVATE)
		return "inplace";
	if (gmem && gl_gmem_fs_magic() == GUEST_MEMFD_MAGIC)
		return "gmem-6.19";
	return "gmem-6.18";
}

/* A design:NAME requirement. */
GL_FN void gl_require_design(const char *text, const char *name)
{
	const char *design = gl_design();

	if (strcmp(design, name))
		gl_skip("requires %s (this kernel's guest_memfd behaves as %s)", text, design);
}

enum { GL_NONZERO, GL_AND, GL_AND_EQ, GL_EQ, GL_GE, GL_LE };

/* A cap: requirement (stated, or inferred: then `why` names the step). */
GL_FN void gl_require_cap(const char *text, const char *why, unsigned long cap, int cmp,
			  int64_t value, int64_t mask)
{
	int got = ioctl(gl_kvm, KVM_CHECK_EXTENSION, cap), met;
	char unmet[128];

	if (got < 0) {
		snprintf(unmet, sizeof(unmet), "KVM_CHECK_EXTENSION failed: [Errno %d] %s", errno,
			 strerror(errno));
	} else {
		switch (cmp) {
		case GL_NONZERO: met = got != 0; break;
		case GL_AND: met = (got & value) == value; break;
		case GL_AND_EQ: met = (got & mask) == value; break;
		case GL_EQ: met = got == value; break;
		case GL_GE: met = got >= value; break;
		default: met = got <= value; break;
		}
		if (met)
			return;
		snprintf(unmet, sizeof(unmet), "the kernel reports 0x%x", got);
	}
	if (why)
		gl_skip("%s (%s)", why, unmet);
	gl_skip("requires %s (%s)", text, unmet);
}

GL_FN int gl_main(const struct gl_case *cases, int n)
{
	char missing_buf[256], status[32], msg[2048];
	const char *missing = gl_kvm_missing(missing_buf, sizeof(missing_buf));
	int passed = 0, failed = 0, skipped = 0;

	printf("TAP version 13\n1..%d\n", n);
	for (int i = 0; i < n; i++) {
		const struct gl_case *c = &cases[i];

		if (!c->run) {
			gl_copy(status, sizeof(status), c->status);
			gl_copy(msg, sizeof(msg), c->message);
		} else if (missing) {
			gl_copy(status, sizeof(status), "SKIP");
			snprintf(msg, sizeof(msg), "no usable /dev/kvm: %s", missing);
		} else {
			if (c->guest)
				gl_probe_guest();
			gl_in_child(c->run, status, sizeof(status), msg, sizeof(msg));
		}
		if (!strcmp(status, "PASS")) {
			passed++;
			printf("ok %d - %s\n", i + 1, c->id);
		} else if (!strcmp(status, "SKIP")) {
			skipped++;
			printf("ok %d - %s # SKIP %s\n", i + 1, c->id, msg);
		} else {
			failed++;
			printf("not ok %d - %s: %s\n", i + 1, c->id, msg);
		}
		fflush(stdout);
	}
	printf("# %d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}
