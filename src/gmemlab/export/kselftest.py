"""A case file as a KVM selftest: tools/testing/selftests/kvm/, kselftest_harness.h, kvm_util.

One TEST per case, named after its id, with its `about` as the comment
above it.  The checks are those of the kernel's own tests: kvm_util's
asserting helpers where a step expects success (vm_create_guest_memfd,
vm_set_user_memory_region2, ...), `TEST_ASSERT(r == -1 && errno == E, ...)`
where it expects an errno, the sigsetjmp pattern of guest_memfd_test.c's
test_fault_overflow where it expects SIGBUS or SIGSEGV, and SKIP where the
kernel lacks what the case requires or needs, with gmemlab's words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources

from .. import uapi
from ..host import guest as host_guest
from ..vmm import asm, modes
from .cargs import LONG, POLICY, PTR, VCPU, VM, KselftestArgs, Table, ref_number
from .clang import c_bytes, c_comment, c_int, c_string, identifier, spell_flags
from .emitters import EMITTERS, KCall
from .plan import (
    AllBytes,
    BytesDiffer,
    BytesEqual,
    CasePlan,
    Check,
    ErrorOffset,
    Fails,
    FieldPresent,
    IntEqual,
    Ref,
    Refused,
    StepPlan,
    TableEqual,
    Want,
    cap_number,
)
from .steps import describe_step

INCLUDES = ("errno.h", "fcntl.h", "setjmp.h", "signal.h", "stdbool.h", "stdint.h", "stdio.h",
            "stdlib.h", "string.h", "strings.h", "unistd.h", "linux/falloc.h", "sys/mman.h",
            "sys/stat.h")
# Names the writer uses itself, or that C or the harness reserve.
RESERVED = {"ret", "st", "ga", "gmem", "region", "region2", "attr", "attr2", "enable", "sink", "kvm_fd",
            "i", "path", "mem", "_metadata", "mode", "error_offset", "design", "why", "errno", "auto",
            "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
            "extern", "float", "for", "goto", "if", "int", "long", "register", "return", "short", "signed",
            "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void", "volatile",
            "while", "bool", "true", "false"}
# Functions the tests call: a TEST() of the same name would clash with them.
LIBC = {"mmap", "munmap", "mprotect", "madvise", "mremap", "read", "write", "pread", "pwrite",
        "lseek", "close", "dup", "fstat", "ftruncate", "fallocate", "fsync", "fchmod", "ioctl",
        "open", "memfd_create", "mbind", "get_mempolicy", "set_mempolicy", "memcmp", "memcpy",
        "memset", "strcmp", "strerror", "main", "guest_access", "guest_access_path",
        "gmem_design", "numa_unavailable", "read_range", "align_up", "align_ptr_up",
        "kvm_check_cap", "kvm_has_cap", "vm_check_cap", "vm_create_barebones",
        "vm_create_barebones_type", "vm_create_guest_memfd", "vm_set_user_memory_region",
        "vm_set_user_memory_region2", "vm_set_memory_attributes", "vm_enable_cap",
        "gmem_set_private", "gmem_set_shared", "kvm_mbind", "kvm_get_mempolicy",
        "kvm_set_mempolicy", "kvm_vm_free", "open_kvm_dev_path_or_exit", "runner_init",
        "runner_place", "runner_map", "guest_phys_bits", "expect_signal_handler"}
CMP = {"nonzero": "!{v}", "&": "({v} & {x}) != {x}", "&=": "({v} & {m}) != {x}", "=": "{v} != {x}",
       ">=": "{v} < {x}", "<=": "{v} > {x}"}
GUEST_EXITS = {"none": "GUEST_EXIT_NONE", "mmio": "GUEST_EXIT_MMIO",
               "memory_fault": "GUEST_EXIT_MEMORY_FAULT"}
# When a guest access's table has each key (GuestAccess.as_table).
GUEST_PRESENT = {"exit": None, "data_hex": None, "gpa": "ga.exit != GUEST_EXIT_NONE",
                 "size": "ga.exit != GUEST_EXIT_NONE", "write": "ga.exit == GUEST_EXIT_MMIO",
                 "flags": "ga.exit == GUEST_EXIT_MEMORY_FAULT",
                 "errno": "ga.exit == GUEST_EXIT_MEMORY_FAULT"}

EXPECT_SIGNAL = r"""static sigjmp_buf expect_signal_jmpbuf;

static void expect_signal_handler(int signum)
{
	siglongjmp(expect_signal_jmpbuf, signum);
}

/* guest_memfd_test.c's test_fault_overflow pattern, for SIGBUS and SIGSEGV. */
#define EXPECT_SIGNAL(sig, action)						\
do {										\
	struct sigaction sa_old, sa_new = {					\
		.sa_handler = expect_signal_handler,				\
	};									\
										\
	sigaction(sig, &sa_new, &sa_old);					\
	if (sigsetjmp(expect_signal_jmpbuf, 1) == 0) {				\
		action;								\
		TEST_FAIL("'%s' should have triggered %s", #action, #sig);	\
	}									\
	sigaction(sig, &sa_old, NULL);						\
} while (0)
"""

NUMA_UNAVAILABLE = """/*
 * Why mbind, get_mempolicy and set_mempolicy cannot run here, or NULL: a kernel
 * built without CONFIG_NUMA answers ENOSYS.
 */
static const char *numa_unavailable(void)
{
	static char why[128];
	int mode;

	if (!get_mempolicy(&mode, NULL, 0, NULL, 0))
		return NULL;
	if (errno == ENOSYS)
		return "the kernel is built without NUMA (CONFIG_NUMA): "
			"mbind, get_mempolicy and set_mempolicy are ENOSYS";
	if (errno == EPERM)
		return "the NUMA policy calls are forbidden here (EPERM, a seccomp filter?)";
	snprintf(why, sizeof(why), "get_mempolicy fails: %s", strerror(errno));
	return why;
}
"""

GMEM_DESIGN = """#ifndef KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES
#define KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES """ + str(uapi.KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES) + """
#endif
#ifndef GUEST_MEMFD_MAGIC
#define GUEST_MEMFD_MAGIC """ + f"{uapi.GUEST_MEMFD_MAGIC:#x}" + """
#endif

/*
 * Which generation of guest_memfd this kernel has, by what it shows: one that
 * cannot be mapped is 6.8's (to 6.17), one that keeps memory attributes itself
 * the in-place conversion series', one on its own pseudo-filesystem 6.19's
 * (which brought the per-file NUMA policy), else 6.18's.  (gmemlab calls them
 * designs gmem-6.8, inplace, gmem-6.19 and gmem-6.18.)
 */
static const char *gmem_design(void)
{
	bool has_gmem = kvm_has_cap(KVM_CAP_GUEST_MEMFD);
	bool own_fs = false;

	if (has_gmem && !(kvm_check_cap(KVM_CAP_GUEST_MEMFD_FLAGS) & GUEST_MEMFD_FLAG_MMAP))
		return "gmem-6.8";
	if (kvm_check_cap(KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES) & KVM_MEMORY_ATTRIBUTE_PRIVATE)
		return "inplace";
	if (has_gmem) {
		struct kvm_vm *vm = vm_create_barebones();
		int fd = __vm_create_guest_memfd(vm, getpagesize(), 0);
		struct statfs sfs;

		own_fs = fd >= 0 && !fstatfs(fd, &sfs) && (uint32_t)sfs.f_type == GUEST_MEMFD_MAGIC;
		if (fd >= 0)
			close(fd);
		kvm_vm_free(vm);
	}
	return own_fs ? "gmem-6.19" : "gmem-6.18";
}
"""

READ_RANGE = """/* Load every byte of [mem, mem + len), in ascending order. */
static void read_range(char *sink, const char *mem, size_t len)
{
	for (size_t i = 0; i < len; i++)
		sink[i % 4096] = READ_ONCE(mem[i]);
}
"""


def _message(text: str, fmt: str = "") -> str:
    """A printf format: text as it is (% doubled), then fmt's conversions."""
    return c_string(text.replace("%", "%%") + fmt)


def _negate(condition: str) -> str:
    for op, neg in ((" == ", " != "), (" < ", " >= ")):
        left, sep, right = condition.partition(op)
        if sep and op not in right:
            return f"{left}{neg}{right}"
    return f"!({condition})"


def _refs(value: object) -> set[str]:
    if isinstance(value, Ref):
        return {value.var}
    if isinstance(value, Want):
        return _refs(value.value)
    if isinstance(value, (tuple, list)):
        return set().union(*(_refs(v) for v in value))
    return set()


def _referenced(plan: CasePlan) -> set[str]:
    """The variables some step reads."""
    out: set[str] = set()
    for sp in plan.steps:
        for value in sp.args.values():
            out |= _refs(value)
        for check in sp.checks + sp.on_errno:
            out |= _refs(getattr(check, "want", None))
    return out


def _hex_digits(text: str) -> bool:
    return re.fullmatch(r"[0-9a-fA-F]*", text) is not None and len(text) % 2 == 0


class TestWriter:
    """One TEST: its declarations, its SKIP conditions and its steps."""

    def __init__(self, plan: CasePlan, uses: set[str]) -> None:
        self.plan = plan
        self.uses = uses
        self.decls: dict[str, None] = {}
        self.ctypes: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.taken = set(RESERVED)
        self.tag = ""
        self.used = _referenced(plan)
        self._slots: tuple[str, int] | None = None
        self.step_index = 0
        self.types: dict[str, int] = {}  # VM and vCPU variables -> the VM's type
        self.words: dict[str, int] = {}  # NUMA policy variables -> their node mask's words
        self.masks: dict[tuple[str, int, tuple[str, ...] | None], str] = {}

    # --- KWriter --------------------------------------------------------------------------------

    def need(self, declaration: str) -> None:
        self.decls[declaration] = None

    def kvm_fd(self) -> str:
        return "kvm_fd"

    def scratch(self, ctype: str) -> str:
        base, _, dims = ctype.partition(" ")
        name = f"buf{self.step_index}"
        self.need(f"{base} {name}{dims};")
        return name

    def node_mask(self, words: int, values: list[str] | None, base: str = "nodes") -> str:
        """An array of node mask words: a constant one per content (values), else one
        per size to fill or to be filled."""
        key = (base, words, tuple(values) if values is not None else None)
        if key not in self.masks:
            name = identifier(base if values is not None or words == 1 else f"{base}{words}",
                              self.taken)
            self.masks[key] = name
            self.need(f"const unsigned long {name}[{words}] = {{ {', '.join(values)} }};"
                      if values is not None else f"unsigned long {name}[{words}];")
        return self.masks[key]

    def fail(self, message: str) -> str:
        return f"TEST_FAIL({_message(f'{self.tag}: {message}')});"

    def bytes_checks(self, buf: str, length: str, checks: Sequence[Check],
                     index: tuple[str, int] | None = None) -> list[str]:
        out = []
        for check in checks:
            if isinstance(check, AllBytes):
                if index is not None:
                    at = f"{index[0]}[{f'{index[1]:#x} + ' if index[1] else ''}i]"
                else:
                    at = f"{buf}[i]" if buf.replace("_", "").replace(".", "").isalnum() \
                        else f"({buf})[i]"
                if length == "1":
                    first = at.replace(" + i]", "]").replace("[i]", "[0]")
                    out.append(f"TEST_ASSERT_EQ(READ_ONCE({first}), (char){check.value:#04x});")
                    continue
                self.need("size_t i;")
                bound = length if length.isdigit() else f"(size_t){length}"
                out += [f"for (i = 0; i < {bound}; i++)",
                        f"\tTEST_ASSERT_EQ(READ_ONCE({at}), (char){check.value:#04x});"]
            elif isinstance(check, BytesEqual):
                n = len(check.data)
                same_length = f"(size_t){length} == {n} && " if not length.isdigit() else ""
                if length.isdigit() and int(length) != n:
                    out.append(self.fail(f"expected bytes {check.hex}, got {length} bytes"))
                    continue
                out.append(f"TEST_ASSERT({same_length}!memcmp({buf}, {c_bytes(check.data)}, {n}), "
                           f"{_message(f'{self.tag}: expected bytes {check.hex}')});")
            elif isinstance(check, BytesDiffer):
                n = len(check.data)
                out.append(f"TEST_ASSERT((size_t){length} != {n} || memcmp({buf}, "
                           f"{c_bytes(check.data)}, {n}), "
                           f"{_message(f'{self.tag}: expected bytes other than {check.hex}')});")
            elif isinstance(check, Fails):
                out.append(self.fail(check.message))
            elif isinstance(check, FieldPresent):
                raise Refused(f"a value that names ${check.check.name}.{check.check.field}, a "
                              "guest access's field")
            else:
                raise Refused(f"a check of kind {type(check).__name__} on bytes")
        return out

    def table_checks(self, table: Table, checks: Sequence[Check]) -> list[str]:
        out = []
        for check in checks:
            if isinstance(check, Fails):
                out.append(self.fail(check.message))
            elif isinstance(check, TableEqual):
                out += self._table_check(table, check)
            elif isinstance(check, FieldPresent):
                raise Refused(f"a value that names ${check.check.name}.{check.check.field}, a "
                              "guest access's field")
            else:
                raise Refused(f"a check of kind {type(check).__name__} on a table")
        return out

    def _want(self, value: int | Ref) -> str:
        if isinstance(value, Ref):
            return ref_number(value, self.ctypes, self.names)
        return c_int(value)

    def _terms(self, table: Table, key: str, want: Want) -> tuple[str | None, tuple[str, str] | str | None]:
        """When the table has key (None: always), and when its value equals want: a pair
        (lhs, rhs) compared with ==, a condition, or None when it never does."""
        if isinstance(want.value, Ref) and want.kind in ("str", "bool"):
            raise Refused(f"a comparison with {want.value.show()}, a guest access's field")
        if table.kind == "stat":
            if want.kind != "int":
                return None, None
            return None, (table.lvalues[key], self._want(want.value))
        if table.kind == "mempolicy":
            if key == "mode":
                if want.kind != "int":
                    return None, None
                value = want.value
                spelled = spell_flags("mbind", "mode", value, 32, True) if isinstance(value, int) \
                    and -(1 << 31) <= value < 1 << 31 else self._want(value)
                return None, (table.lvalues["mode"], spelled)
            nodes = table.lvalues["nodemask"]
            if want.kind != "list":
                return None, None
            if isinstance(want.value, Ref):
                other = want.value
                if self.words.get(other.var) != table.words:
                    return None, None
                theirs = f"{self.names[other.var]}_nodes"
                return None, f"!memcmp({nodes}, {theirs}, sizeof({nodes}))" if table.words else "1"
            if len(want.value) != table.words:
                return None, None
            if table.words == 1:
                return None, (f"{nodes}[0]", self._want(want.value[0]))
            return None, " && ".join(f"{nodes}[{i}] == {self._want(v)}"
                                     for i, v in enumerate(want.value)) or "1"
        present = GUEST_PRESENT.get(key, "0")
        value = want.value
        if key == "exit":
            if want.kind != "str" or value.lower() not in GUEST_EXITS:
                return present, None
            return present, ("ga.exit", GUEST_EXITS[value.lower()])
        if key == "data_hex":
            if want.kind != "str" or not _hex_digits(value):
                return present, None
            data = bytes.fromhex(value)
            if not data:
                return present, "ga.exit != GUEST_EXIT_NONE || !ga.data"
            if len(data) != table.length:
                return present, None
            return present, (f"ga.exit == GUEST_EXIT_NONE && ga.data && "
                             f"!memcmp(ga.data, {c_bytes(data)}, {len(data)})")
        if key == "write":
            return present, None if want.kind != "bool" else "ga.write" if value else "!ga.write"
        if key == "errno":
            if want.kind != "str":
                return present, None
            try:
                number = uapi.errno_number(value.upper())
            except ValueError:
                return present, None
            return present, ("ga.err", uapi.errno_name(number))
        if want.kind != "int" or key not in GUEST_PRESENT:
            return present, None
        return present, (f"ga.{key}", self._want(value))

    def _table_check(self, table: Table, check: TableEqual) -> list[str]:
        key, want = check.key, check.want
        shown = f"{self.tag}: expected {key} {'to differ from' if check.differ else '='} {want.shown}"
        present, equal = self._terms(table, key, want)
        if present == "0":
            return [self.fail(f"the result has no {key!r}")]
        if equal is None:  # no value of the result equals want
            if not check.differ:
                return [self.fail(shown)]
            return [] if present is None else [f"TEST_ASSERT({present}, {_message(shown)});"]
        if isinstance(equal, tuple):
            lhs, rhs = equal
            if present is None and not check.differ:
                return [f"TEST_ASSERT_EQ({lhs}, {rhs});"]
            cond = f"{lhs} {'!=' if check.differ else '=='} {rhs}"
        else:
            cond = f"!({equal})" if check.differ else equal
            if present is not None and "||" in cond and not cond.startswith("!("):
                cond = f"({cond})"
        if present is not None:
            cond = f"{present} && {cond}"
        return [f"TEST_ASSERT({cond}, {_message(shown)});"]

    def int_checks(self, value: str, checks: Sequence[Check], what: str) -> list[str]:
        """ret / differs on a number held in value."""
        out = []
        for check in checks:
            if isinstance(check, Fails):
                out.append(self.fail(check.message))
            elif isinstance(check, IntEqual):
                want = check.want
                if want.kind != "int":  # no number equals it
                    out += [] if check.differ else [self.fail(f"expected {want.shown}")]
                elif check.differ:
                    out.append(f"TEST_ASSERT({value} != {self._want(want.value)}, "
                               f"{_message(f'{self.tag}: expected a result other than {want.shown}')});")
                else:
                    out.append(f"TEST_ASSERT_EQ({value}, {self._want(want.value)});")
            else:
                raise Refused(f"a check of kind {type(check).__name__} on {what}")
        return out

    def errno_checks(self, sp: StepPlan, error_offset: str | None) -> list[str]:
        """After the expected errno: the offset the error reports (error_offset: where the
        call leaves it, None when the error carries none)."""
        out = []
        for check in sp.on_errno:
            if isinstance(check, Fails):
                out.append(self.fail(check.message))
            elif isinstance(check, ErrorOffset):
                want = check.want
                if error_offset is None:
                    out.append(self.fail(f"expected error_offset {want.shown}, but the error "
                                         "reports none"))
                elif want.kind != "int":
                    out.append(self.fail(f"expected error_offset {want.shown}"))
                else:
                    out.append(f"TEST_ASSERT_EQ({error_offset}, {self._want(want.value)});")
            else:
                raise Refused(f"a check of kind {type(check).__name__} after an errno")
        return out

    def guest_slots(self) -> tuple[str, int]:
        """The case's memslots (for placing gmemlab's access program) and a free slot id."""
        if self._slots is None:
            ranges, ids = [], set()
            for sp in self.plan.steps:
                if sp.op not in ("set_user_memory_region", "set_user_memory_region2"):
                    continue
                slot, gpa, size = (sp.args.get(k) for k in ("slot", "guest_phys_addr",
                                                            "memory_size"))
                if not (isinstance(slot, int) and isinstance(gpa, int) and isinstance(size, int)):
                    raise Refused("a guest access in a case whose memslots are bound at run time")
                if slot >> 16 == 0:
                    ids.add(slot & 0xFFFF)
                if size and (gpa, size) not in ranges:
                    ranges.append((gpa, size))
            for sp in self.plan.steps:
                # KVM's private gfns too (the Python host keeps the runner away from them).
                if sp.op != "set_memory_attributes":
                    continue
                gpa, size, attrs = (sp.args.get(k) for k in ("address", "size", "attributes"))
                if not (isinstance(gpa, int) and isinstance(size, int) and isinstance(attrs, int)):
                    raise Refused("a guest access in a case whose memory attributes are bound "
                                  "at run time")
                if size and attrs & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE and (gpa, size) not in ranges:
                    ranges.append((gpa, size))
            free = next(i for i in range(uapi.KVM_USER_MEM_SLOTS - 1, -1, -1) if i not in ids)
            if ranges:
                items = ", ".join(f"{{ {c_int(g, 64, False)}, {c_int(s, 64, False)} }}"
                                  for g, s in ranges)
                self.need(f"const struct gpa_range slots[] = {{ {items} }};")
                self._slots = (f"slots, {len(ranges)}", free)
            else:
                self._slots = ("NULL, 0", free)
        return self._slots

    # --- the test ----------------------------------------------------------------------------

    def bind(self, var: str, ctype: str) -> str:
        if var not in self.names:
            self.names[var] = identifier(var.removeprefix("v_").removeprefix("t_"), self.taken)
        if self.ctypes.setdefault(var, ctype) != ctype:
            raise Refused(f"${var[2:]} is bound to values of two C types")
        name = self.names[var]
        if ctype != POLICY:  # a NUMA policy's two variables are the emitter's
            self.need(f"{ctype}{'' if ctype.endswith('*') else ' '}{name};")
        return name

    def vm_type(self, value: object) -> int | None:
        """The type of the VM a bound VM or vCPU belongs to, when the case creates it
        with a literal type."""
        return self.types.get(value.var) if isinstance(value, Ref) and not value.delta \
            and value.field is None else None

    def _kcall(self, sp: StepPlan, k: KCall, a: KselftestArgs) -> list[str]:
        step = sp.step
        pre = list(k.pre)
        if step.errno is not None:
            for decl in k.raw_decls:
                self.need(decl)
            name = uapi.errno_name(step.errno)
            offset = k.error_offset if name in ("EAGAIN", "ENOMEM") else None
            if k.ctype == PTR:
                self.need("char *mem;")
                return [*pre, f"mem = {k.expr};",
                        f"TEST_ASSERT({k.failed.format(r='mem')} && errno == {name}, "
                        f"{_message(f'{self.tag}: expected {name}, got ', '%p (%s)')}, mem, "
                        "strerror(errno));", *self.errno_checks(sp, offset)]
            self.need("long ret;")
            return [*pre, f"ret = {k.expr};",
                    f"TEST_ASSERT({k.failed.format(r='ret')} && errno == {name}, "
                    f"{_message(f'{self.tag}: expected {name}, got ', '%ld (%s)')}, ret, "
                    "strerror(errno));", *self.errno_checks(sp, offset)]
        if step.signal is not None:
            return [self.fail(f"expected {uapi.signal_name(step.signal)}: only loads and stores "
                              "signal")]
        int_checks = [c for c in sp.checks if isinstance(c, IntEqual)]
        use_ok = k.ok_form is not None and (k.ok_ctype is not None or not (sp.bind or int_checks))
        ctype = (k.ok_ctype or LONG) if use_ok else k.ctype
        if sp.bind and sp.bind in self.used:
            target = self.bind(sp.bind, ctype)
        elif int_checks or not use_ok:
            target = "mem" if ctype == PTR else "ret"
            self.need("char *mem;" if ctype == PTR else "long ret;")
        else:
            target = ""
        if use_ok:
            out = [*pre, f"{target} = {k.ok_form};" if target else f"{k.ok_form};"]
        else:
            for decl in k.raw_decls:
                self.need(decl)
            out = [*pre, f"{target} = {k.expr};",
                   f"TEST_ASSERT({_negate(k.failed.format(r=target))}, "
                   f"{_message(f'{self.tag} failed: ', '%s')}, strerror(errno));"]
        value = {VM: f"{target}->fd", VCPU: f"{target}->fd",
                 PTR: f"(uintptr_t){target}"}.get(ctype, target)
        return out + self.int_checks(value, sp.checks, sp.op)

    def step_lines(self, sp: StepPlan) -> list[str]:
        step = sp.step
        self.step_index = step.index
        self.tag = f"step {step.index} ({step.op})"
        out = ["", *c_comment(describe_step(step), "\t")]
        if sp.fields:
            raise Refused(f"an argument that names ${sp.fields[0].name}.{sp.fields[0].field}, a "
                          "guest access's field")
        if sp.before is not None:
            return [*out, "\t" + self.fail(sp.before)]
        emitter = EMITTERS[step.op].kselftest
        assert emitter is not None
        a = KselftestArgs(sp, self.ctypes, self.names)
        result = emitter(a, sp, self)
        if isinstance(result, KCall):
            lines = self._kcall(sp, result, a)
        else:
            lines = result
            if step.op in ("read_mem", "write_mem") and step.signal is not None:
                self.uses.add("signal")
            if step.op == "read_mem":
                self.uses.add("read_range")
            if step.op == "guest_access":
                self.uses.add("guest")
            if step.op == "guest_access" and sp.bind in self.used:
                raise Refused("a later step reads this guest access's result")
        if step.op in ("mbind", "get_mempolicy", "set_mempolicy"):
            self.uses.add("numa")
        self._remember_type(sp)
        return out + ["\t" + line if line else "" for line in "\n".join(lines).split("\n")]

    def _remember_type(self, sp: StepPlan) -> None:
        """The VM type of what the step binds, for private guest accesses."""
        if not sp.bind or not sp.step.expects_success:
            return
        vm_type = sp.args.get("type") if sp.op == "create_vm" else \
            self.vm_type(sp.args.get("vm")) if sp.op == "create_vcpu" else \
            self.vm_type(sp.args.get("fd")) if sp.op == "dup" else None
        if isinstance(vm_type, int):
            self.types[sp.bind] = vm_type
        else:
            self.types.pop(sp.bind, None)

    def skip_lines(self) -> list[str]:
        plan = self.plan
        out = []
        for req in plan.requires:
            if req.cmp == "guest":
                if asm.missing_reason():
                    raise Refused(f"{req.text} needs gmemlab's guest program: "
                                  f"{asm.missing_reason()}")
                self.need("const char *path;")
                self.uses.add("guest")
                out += ["\tpath = guest_access_path();", "\tif (!path)",
                        "\t\tSKIP(return, "
                        f"{_message(f'requires {req.text} (the guest-path probe failed)')});",
                        f"\tif (strcmp(path, {c_string(req.cap)}))",
                        "\t\tSKIP(return, " + _message(
                            f"requires {req.text} (guest accesses on this kernel go through the ",
                            "%s)") + ", path);"]
            elif req.cmp == "design":
                self.need("const char *design;")
                self.uses.add("design")
                out += ["\tdesign = gmem_design();", f"\tif (strcmp(design, {c_string(req.cap)}))",
                        "\t\tSKIP(return, " + _message(
                            f"requires {req.text} (this kernel's guest_memfd behaves as ", "%s)")
                        + ", design);"]
            else:
                out += self._cap_skip(req, f"requires {req.text}")
        for need in plan.needs:
            out += self._cap_skip(need.requirement, need.describe())
        asked = {"guest"} if any(req.cmp == "guest" for req in plan.requires) else set()
        for check in plan.op_checks:
            step = check.step
            if check.message is not None:
                out.append(f"\tTEST_FAIL({_message(check.message)});")
            elif check.need in asked:
                continue  # one probe answers them all: the first asks
            elif check.need == "guest":
                asked.add("guest")
                self.uses.add("guest")
                out += ["\tif (!guest_access_path())",
                        "\t\tSKIP(return, " + _message(
                            f"step {step.index} (guest_access): guest accesses cannot run here")
                        + ");"]
            else:
                asked.add("numa")
                self.uses.add("numa")
                self.need("const char *why;")
                out += ["\twhy = numa_unavailable();", "\tif (why)",
                        "\t\tSKIP(return, " + _message(f"step {step.index} ({step.op}): ", "%s")
                        + ", why);"]
        return out

    def _cap_skip(self, req: object, why: str) -> list[str]:
        from ..conform.cases import Requirement

        assert isinstance(req, Requirement)
        cap = f"KVM_CAP_{req.cap.upper().removeprefix('KVM_CAP_')}"
        if cap_number(req) not in uapi.CAPS.values():
            cap = str(cap_number(req))
        cond = CMP[req.cmp].format(v=f"kvm_check_cap({cap})", x=c_int(req.value), m=c_int(req.mask))
        return [f"\tif ({cond})", f"\t\tSKIP(return, {_message(why)});"]

    def body(self) -> list[str]:
        skips = self.skip_lines()
        steps: list[str] = []
        if self.plan.static_failure is None:
            for sp in self.plan.steps:
                steps += self.step_lines(sp)
        decls = [f"\t{d}" for d in self.decls]
        if any("kvm_fd" in line for line in steps):
            decls.insert(0, "\tint kvm_fd = open_kvm_dev_path_or_exit();")
        if not (decls or skips) and steps and not steps[0]:
            steps = steps[1:]
        return decls + ([""] if decls and skips else []) + skips + steps


def _guest_helper() -> str:
    program = asm.load("access")
    g = host_guest
    cr0 = (modes.CR0_PE | modes.CR0_MP | modes.CR0_ET | modes.CR0_NE | modes.CR0_WP | modes.CR0_AM
           | modes.CR0_PG)
    defines = {
        "RUNNER_SIZE": f"{g.RUNNER_SIZE:#x}ull", "RUNNER_PT": f"{g.TABLES:#x}",
        "RUNNER_TABLES": "8", "RUNNER_GDT": f"{g.GDT:#x}", "RUNNER_IDT": f"{g.IDT:#x}",
        "RUNNER_STACK_TOP": f"{g.STACK_TOP:#x}", "RUNNER_CODE": f"{g.CODE:#x}",
        "RUNNER_BUFFER": f"{g.BUFFER:#x}", "RUNNER_VA": f"{g.VA_RUNNER:#x}ull",
        "WINDOW_VA": f"{g.VA_WINDOW:#x}ull", "LARGE_PAGE": f"{modes.LARGE_PAGE:#x}ull",
        "RUNNER_SEL_CODE": f"{modes.SEL_CODE:#x}", "RUNNER_SEL_DATA": f"{modes.SEL_DATA:#x}",
        "RUNNER_CR0": f"{cr0:#x}ull", "RUNNER_CR4": f"{modes.CR4_PAE:#x}ull",
        "RUNNER_EFER": f"{modes.EFER_LME | modes.EFER_LMA:#x}ull",
        "RUNNER_PROBE_SLOT": str(uapi.KVM_USER_MEM_SLOTS - 1),
        "ACCESS_ENTRY": f"{program['access']:#x}", "ACCESS_VECTORS": f"{program['vectors']:#x}",
        "ACCESS_VECTOR_SIZE": f"{program['VECTOR_STUB_SIZE']:#x}",
        "ACCESS_DONE_PORT": f"{program['DONE_PORT']:#x}",
    }
    lines = ["/* The access program's memory (gmemlab.host.guest) and its symbols. */"]
    lines += [f"#define {k} {v}" for k, v in defines.items()]
    lines.append("static const uint8_t runner_gdt[] = { "
                 + ", ".join(f"{b:#04x}" for b in modes.GDT_LONG) + " };")
    lines.append("static const uint8_t access_code[] = {")
    for at in range(0, len(program.code), 12):
        lines.append("\t" + ", ".join(f"{b:#04x}" for b in program.code[at:at + 12]) + ",")
    lines.append("};")
    helper = (resources.files("gmemlab.export") / "runtime" / "kselftest_guest.c").read_text()
    return "\n".join(lines) + "\n\n" + helper


def test_name(case_id: str, taken: set[str]) -> str:
    """The TEST()'s name: the case's id, unless it could be a C library function's
    (a one-word id such as "truncate", or one the tests call)."""
    name = identifier(case_id)
    if "_" not in name.strip("_") or name in LIBC:
        name += "_test"
    return identifier(name, taken)


def render(source: str, plans: list[CasePlan], command: str) -> str | None:
    """The selftest for one case file, or None when none of its cases is exported.

    Only exported cases become tests: a case the model alone runs, a malformed
    one or one that cannot be exported is reported by `gmemlab export-c`, not
    written as a test that can only skip or fail.
    """
    uses: set[str] = set()
    tests: list[str] = []
    taken: set[str] = set(LIBC)
    for plan in plans:
        if plan.verdict is not None or plan.refused:
            continue
        if plan.static_failure is not None:
            plan.refused.append(f"{plan.static_failure} (a test that can only fail)")
            continue
        writer = TestWriter(plan, set())
        try:
            body = writer.body()
        except Refused as exc:
            plan.refused.append(f"{writer.tag}: {exc}" if writer.tag else str(exc))
            continue
        uses |= writer.uses
        case = plan.case
        head = f"{case.id}" + (f": {case.about}" if case.about else "")
        if plan.note:
            head += f"\n\n{plan.note}"
        tests += [*c_comment(head), f"TEST({test_name(case.id, taken)})", "{", *body, "}", ""]
    if not tests:
        return None
    header = [
        "// SPDX-License-Identifier: GPL-2.0",
        *c_comment(f"Cases of {source}, exported by gmemlab as a KVM selftest.\n\n"
                   f"Regenerate: {command}\n"
                   "Build: copy into tools/testing/selftests/kvm/ and add it to TEST_GEN_PROGS_x86 "
                   "in Makefile.kvm.\n\n"
                   "One TEST per case.  A case that needs what the kernel lacks is skipped with "
                   "the reason, as `gmemlab conform --kernel host` skips it."),
        *[f"#include <{h}>" for h in INCLUDES], *(["#include <sys/vfs.h>"] if "design" in uses else []),
        "", '#include "kvm_util.h"', *(['#include "numaif.h"'] if "numa" in uses else []),
        *(['#include "processor.h"'] if "guest" in uses else []),
        '#include "test_util.h"', '#include "kselftest_harness.h"', ""]
    helpers = []
    if "numa" in uses:
        helpers.append(NUMA_UNAVAILABLE)
    if "design" in uses:
        helpers.append(GMEM_DESIGN)
    if "signal" in uses:
        helpers.append(EXPECT_SIGNAL)
    if "read_range" in uses:
        helpers.append(READ_RANGE)
    if "guest" in uses:
        helpers.append(_guest_helper())
    return "\n".join(header + helpers + tests + ["TEST_HARNESS_MAIN"]) + "\n"
