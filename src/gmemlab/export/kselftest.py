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

from collections.abc import Sequence
from importlib import resources

from .. import uapi
from ..host import guest as host_guest
from ..vmm import asm, modes
from .cargs import LONG, PTR, VCPU, VM, KselftestArgs, ref_number
from .clang import c_bytes, c_comment, c_int, c_string, identifier
from .emitters import EMITTERS, KCall
from .plan import (
    AllBytes,
    BytesEqual,
    CasePlan,
    Check,
    Fails,
    IntEqual,
    Ref,
    Refused,
    StepPlan,
    TableEqual,
    cap_number,
)
from .steps import describe_step

INCLUDES = ("errno.h", "fcntl.h", "setjmp.h", "signal.h", "stdbool.h", "stdint.h", "stdio.h",
            "stdlib.h", "string.h", "strings.h", "unistd.h", "linux/falloc.h", "sys/mman.h",
            "sys/stat.h")
# Names the writer uses itself, or that C or the harness reserve.
RESERVED = {"ret", "st", "ga", "gmem", "region", "region2", "attr", "enable", "sink", "kvm_fd", "i",
            "path", "mem", "_metadata", "errno", "auto", "break", "case", "char", "const",
            "continue", "default", "do", "double", "else", "enum", "extern", "float", "for", "goto",
            "if", "int", "long", "register", "return", "short", "signed", "sizeof", "static",
            "struct", "switch", "typedef", "union", "unsigned", "void", "volatile", "while",
            "bool", "true", "false"}
CMP = {"nonzero": "!{v}", "&": "({v} & {x}) != {x}", "&=": "({v} & {m}) != {x}", "=": "{v} != {x}",
       ">=": "{v} < {x}", "<=": "{v} > {x}"}
GUEST_EXITS = {"none": "GUEST_EXIT_NONE", "mmio": "GUEST_EXIT_MMIO",
               "memory_fault": "GUEST_EXIT_MEMORY_FAULT"}
STAT_FIELDS = {"size": "st_size", "mode": "st_mode", "blksize": "st_blksize", "blocks": "st_blocks",
               "nlink": "st_nlink", "ino": "st_ino", "dev": "st_dev"}

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
    if isinstance(value, (tuple, list)):
        return set().union(*(_refs(v) for v in value))
    return set()


def _referenced(plan: CasePlan) -> set[str]:
    """The variables some step reads."""
    out: set[str] = set()
    for sp in plan.steps:
        for value in sp.args.values():
            out |= _refs(value)
        for check in sp.checks:
            out |= _refs(getattr(check, "want", None))
    return out


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
            elif isinstance(check, Fails):
                out.append(self.fail(check.message))
            else:
                raise Refused(f"a check of kind {type(check).__name__} on bytes")
        return out

    def table_checks(self, table: str, checks: Sequence[Check]) -> list[str]:
        out = []
        for check in checks:
            if isinstance(check, Fails):
                out.append(self.fail(check.message))
                continue
            if not isinstance(check, TableEqual):
                raise Refused(f"a check of kind {type(check).__name__} on a table")
            out += self._table_check(table, check)
        return out

    def _want(self, value: int | Ref) -> str:
        if isinstance(value, Ref):
            return ref_number(value, self.ctypes, self.names)
        return c_int(value)

    def _table_check(self, table: str, check: TableEqual) -> list[str]:
        key, kind, want = check.key, check.kind, check.want
        text = want.show() if isinstance(want, Ref) else \
            hex(want) if kind == "int" and want >= 4096 else repr(want)
        shown = f"{self.tag}: expected {key} = {text}"
        if table == "st":
            if kind != "int":
                return [self.fail(f"{shown}: fstat gives numbers")]
            return [f"TEST_ASSERT_EQ(st.{STAT_FIELDS[key]}, {self._want(want)});"]
        present = {"gpa": "ga.exit != GUEST_EXIT_NONE", "size": "ga.exit != GUEST_EXIT_NONE",
                   "flags": "ga.exit == GUEST_EXIT_MEMORY_FAULT", "write": "ga.exit == GUEST_EXIT_MMIO"}
        if key == "exit":
            if kind != "str" or want.lower() not in GUEST_EXITS:
                return [self.fail(f"{shown}: no exit has that name")]
            return [f"TEST_ASSERT_EQ(ga.exit, {GUEST_EXITS[want.lower()]});"]
        if key == "data_hex":
            try:
                data = bytes.fromhex(want) if kind == "str" else None
            except ValueError:
                data = None
            if data is None:
                return [self.fail(f"{shown}: data_hex is a hex string")]
            if not data:
                return [f"TEST_ASSERT(ga.exit != GUEST_EXIT_NONE || !ga.data, {_message(shown)});"]
            return [f"TEST_ASSERT(ga.exit == GUEST_EXIT_NONE && ga.data && "
                    f"!memcmp(ga.data, {c_bytes(data)}, {len(data)}), {_message(shown)});"]
        if key not in present:
            return [self.fail(f"the result has no {key!r}")]
        if key == "write":
            if kind != "bool":
                return [self.fail(f"{shown}: write is true or false")]
            return [f"TEST_ASSERT({present[key]} && {'' if want else '!'}ga.write, {_message(shown)});"]
        if kind != "int":
            return [self.fail(f"{shown}: {key} is a number")]
        return [f"TEST_ASSERT({present[key]} && ga.{key} == {self._want(want)}, "
                f"{_message(shown)});"]

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
            self.names[var] = identifier(var.removeprefix("v_"), self.taken)
        if self.ctypes.setdefault(var, ctype) != ctype:
            raise Refused(f"${var.removeprefix('v_')} is bound to values of two C types")
        self.need(f"{ctype}{'' if ctype.endswith('*') else ' '}{self.names[var]};")
        return self.names[var]

    def _kcall(self, sp: StepPlan, k: KCall, a: KselftestArgs) -> list[str]:
        step = sp.step
        pre = list(k.pre)
        if step.errno is not None:
            name = uapi.errno_name(step.errno)
            if k.ctype == PTR:
                self.need("char *mem;")
                return [*pre, f"mem = {k.expr};",
                        f"TEST_ASSERT({k.failed.format(r='mem')} && errno == {name}, "
                        f"{_message(f'{self.tag}: expected {name}, got ', '%p (%s)')}, mem, "
                        "strerror(errno));"]
            self.need("long ret;")
            return [*pre, f"ret = {k.expr};",
                    f"TEST_ASSERT({k.failed.format(r='ret')} && errno == {name}, "
                    f"{_message(f'{self.tag}: expected {name}, got ', '%ld (%s)')}, ret, "
                    "strerror(errno));"]
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
            out = [f"{target} = {k.ok_form};" if target else f"{k.ok_form};"]
        else:
            out = [*pre, f"{target} = {k.expr};",
                   f"TEST_ASSERT({_negate(k.failed.format(r=target))}, "
                   f"{_message(f'{self.tag} failed: ', '%s')}, strerror(errno));"]
        value = {VM: f"{target}->fd", VCPU: f"{target}->fd",
                 PTR: f"(uintptr_t){target}"}.get(ctype, target)
        for check in sp.checks:
            if isinstance(check, IntEqual):
                out.append(f"TEST_ASSERT_EQ({value}, {self._want(check.want)});")
            elif isinstance(check, Fails):
                out.append(self.fail(check.message))
            else:
                raise Refused(f"a check of kind {type(check).__name__} on {sp.op}")
        return out

    def step_lines(self, sp: StepPlan) -> list[str]:
        step = sp.step
        self.step_index = step.index
        self.tag = f"step {step.index} ({step.op})"
        out = ["", *c_comment(describe_step(step), "\t")]
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
            if sp.bind:
                raise Refused(f"binding the result of {step.op}")
        return out + ["\t" + line if line else "" for line in "\n".join(lines).split("\n")]

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
            else:
                out += self._cap_skip(req, f"requires {req.text}")
        for need in plan.needs:
            out += self._cap_skip(need.requirement, need.describe())
        guest_asked = any(req.cmp == "guest" for req in plan.requires)
        for step, message in plan.op_checks:
            if message is None:
                if guest_asked:
                    continue  # one probe answers them all: the first asks
                guest_asked = True
                self.uses.add("guest")
                out += ["\tif (!guest_access_path())",
                        "\t\tSKIP(return, " + _message(
                            f"step {step.index} (guest_access): guest accesses cannot run here")
                        + ");"]
            else:
                out.append(f"\tTEST_FAIL({_message(message)});")
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


def render(source: str, plans: list[CasePlan], command: str) -> str | None:
    """The selftest for one case file, or None when none of its cases is exported.

    Only exported cases become tests: a case the model alone runs, a malformed
    one or one that cannot be exported is reported by `gmemlab export-c`, not
    written as a test that can only skip or fail.
    """
    uses: set[str] = set()
    tests: list[str] = []
    taken: set[str] = set()
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
        tests += [*c_comment(head), f"TEST({identifier(case.id, taken)})", "{", *body, "}", ""]
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
        *[f"#include <{h}>" for h in INCLUDES], "",
        '#include "kvm_util.h"', *(['#include "processor.h"'] if "guest" in uses else []),
        '#include "test_util.h"', '#include "kselftest_harness.h"', ""]
    helpers = []
    if "signal" in uses:
        helpers.append(EXPECT_SIGNAL)
    if "read_range" in uses:
        helpers.append(READ_RANGE)
    if "guest" in uses:
        helpers.append(_guest_helper())
    return "\n".join(header + helpers + tests + ["TEST_HARNESS_MAIN"]) + "\n"
