"""One entry per operation of the case vocabulary: how it is written in C.

Each `Emitter` has one function per flavour:

* `standalone(args)` returns the call of gmemlab's C runtime (runtime/
  standalone.c), which performs the operation exactly as HostKernel does and
  returns a `struct gl_out`; the outcome is judged by code shared by every
  operation.
* `kselftest(args, step, writer)` returns a `KCall` (the system call or
  kvm_util helper, which the writer wraps in the asserts the kernel's tests
  use) or a list of statements for operations whose checks are their own
  (loads, stores, fstat, guest accesses).

`host_check` holds HostKernel's own argument checks that need no kernel.

An operation of the vocabulary without an entry here, or without a function
for a flavour, is refused case by case with "no C export for OP yet"; the
tests list those that are missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import uapi
from ..guestaccess import guest_chooses_private
from .cargs import (
    INT,
    LONG,
    POLICY,
    PTR,
    STAT,
    STAT_FIELDS,
    VCPU,
    VM,
    KselftestArgs,
    StandaloneArgs,
    Table,
)
from .plan import (
    AllBytes,
    BytesEqual,
    Check,
    Fails,
    HostCheck,
    IntEqual,
    Refused,
    StepPlan,
    mask_words,
)
from .uapi_c import VM_TYPE_NAMES


@dataclass(frozen=True)
class KCall:
    """One call in a kernel selftest."""

    expr: str  # performs the call (errno set when it fails)
    ctype: str = INT  # the type of its value
    failed: str = "{r} == -1"  # how the caller tells that it failed
    ok_form: str | None = None  # the asserting kvm_util form, when success is expected
    ok_ctype: str | None = None  # the type of ok_form's value (None: it has none)
    pre: tuple[str, ...] = ()  # statements that set up its arguments
    error_offset: str | None = None  # where a failed call leaves the error's offset
    raw_decls: tuple[str, ...] = ()  # declarations the call needs when it is expr, not ok_form


class KWriter(Protocol):
    """What the kselftest writer offers the emitters (kselftest.py)."""

    tag: str  # "step 3 (read_mem)"

    def need(self, declaration: str) -> None: ...

    def kvm_fd(self) -> str: ...

    def scratch(self, ctype: str) -> str: ...

    def bytes_checks(self, buf: str, length: str, checks: Sequence[Check],
                     index: tuple[str, int] | None = None) -> list[str]: ...

    def table_checks(self, table: Table, checks: Sequence[Check]) -> list[str]: ...

    def int_checks(self, value: str, checks: Sequence[Check], what: str) -> list[str]: ...

    def fail(self, message: str) -> str: ...

    def guest_slots(self) -> tuple[str, int]: ...

    def bind(self, var: str, ctype: str) -> str: ...

    def vm_type(self, value: object) -> int | None: ...

    used: set[str]
    words: dict[str, int]
    step_index: int

    def node_mask(self, words: int, values: list[str] | None, base: str = "nodes") -> str: ...


StandaloneEmit = Callable[[StandaloneArgs], str]
KselftestEmit = Callable[[KselftestArgs, StepPlan, KWriter], "KCall | list[str]"]


@dataclass(frozen=True)
class Emitter:
    standalone: StandaloneEmit | None
    kselftest: KselftestEmit | None
    host_check: HostCheck | None = None


def call(fn: str, *params: str) -> StandaloneEmit:
    """The runtime function fn with the parameters in this order."""
    def emit(a: StandaloneArgs) -> str:
        return f"{fn}({', '.join(a.c(p) for p in params)})"
    return emit


# --- standalone: the operations whose arguments are not plain integers --------------------------


def _s_check_extension(a: StandaloneArgs) -> str:
    if a.value("vm") is None:
        return f"gl_check_extension({a.c('cap')}, 0, 0)"
    return f"gl_check_extension({a.c('cap')}, 1, {a.c('vm')})"


def _s_create_guest_memfd(a: StandaloneArgs) -> str:
    arr, n = a.seq("reserved")
    return f"gl_create_guest_memfd({a.c('vm')}, {a.c('size')}, {a.c('flags')}, {arr}, {n})"


def _s_write(a: StandaloneArgs) -> str:
    lit, n = a.data()
    return f"gl_write({a.c('fd')}, (const unsigned char *){lit}, {n})"


def _s_pwrite(a: StandaloneArgs) -> str:
    lit, n = a.data()
    return f"gl_pwrite({a.c('fd')}, (const unsigned char *){lit}, {n}, {a.c('offset')})"


def _s_write_mem(a: StandaloneArgs) -> str:
    if a.value("fill") is not None:
        return f"gl_write_mem_fill({a.c('addr')}, {a.c('fill')}, {a.c('length')})"
    lit, n = a.data()
    return f"gl_write_mem({a.c('addr')}, (const unsigned char *){lit}, {n})"


def _s_enable_cap(a: StandaloneArgs) -> str:
    arr, n = a.seq("args")
    return f"gl_enable_cap({a.c('vm')}, {a.c('cap')}, {arr}, {n}, {a.c('flags')})"


def _s_guest_access(a: StandaloneArgs) -> str:
    lit, n = a.data()
    private = "-1" if a.value("private") is None else a.c("private")
    return (f"gl_guest_access({a.c('vcpu')}, {a.c('gpa')}, {a.c('length')}, {a.c('write')}, "
            f"{private}, (const unsigned char *){lit}, {n})")


def _s_mbind(a: StandaloneArgs) -> str:
    arr, n = a.seq("nodemask")
    return (f"gl_mbind({a.c('addr')}, {a.c('len')}, {a.c('mode')}, {arr}, {n}, {a.c('maxnode')}, "
            f"{a.c('flags')})")


def _s_set_mempolicy(a: StandaloneArgs) -> str:
    arr, n = a.seq("nodemask")
    return f"gl_set_mempolicy({a.c('mode')}, {arr}, {n}, {a.c('maxnode')})"


# --- HostKernel's checks of its own ----------------------------------------------------------------


def _reserved_check(args: dict[str, Any]) -> str | None:
    return "create_guest_memfd: reserved has 6 entries" if len(args["reserved"]) > 6 else None


def _name_check(args: dict[str, Any]) -> str | None:
    return "memfd_create: name must not contain NUL" if "\0" in args["name"] else None


def _cap_args_check(args: dict[str, Any]) -> str | None:
    return "enable_cap: at most 4 args" if len(args["args"]) > 4 else None


# --- kselftest -------------------------------------------------------------------------------------

def _k_plain(template: str, ctype: str = INT) -> KselftestEmit:
    """A system call whose arguments are integers, named {name} in template."""
    def emit(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
        return KCall(template.format_map({name: a.num(name) for name in sp.args}), ctype)
    return emit


def _k_open_kvm(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    return KCall("open(KVM_DEV_PATH, O_RDWR)")


def _k_create_vm(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    value = a.value("type")
    vm_type = VM_TYPE_NAMES.get(value, a.num("type")) if isinstance(value, int) else a.num("type")
    return KCall(f"ioctl({w.kvm_fd()}, KVM_CREATE_VM, {vm_type})",
                 ok_form=f"vm_create_barebones_type({vm_type})", ok_ctype=VM)


def _k_check_extension(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    cap = a.num("cap")
    if a.value("vm") is None:
        return KCall(f"ioctl({w.kvm_fd()}, KVM_CHECK_EXTENSION, {cap})",
                     ok_form=f"kvm_check_cap({cap})", ok_ctype=LONG)
    vm = a.obj("vm", VM)
    return KCall(f"ioctl({a.num('vm')}, KVM_CHECK_EXTENSION, {cap})",
                 ok_form=f"vm_check_cap({vm}, {cap})" if vm else None, ok_ctype=LONG)


def _k_create_guest_memfd(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    vm = a.obj("vm", VM)
    size, flags = a.num("size"), a.num("flags")
    reserved = a.seq("reserved")
    if vm and not any(r != "0" for r in reserved):
        return KCall(f"__vm_create_guest_memfd({vm}, {size}, {flags})",
                     ok_form=f"vm_create_guest_memfd({vm}, {size}, {flags})", ok_ctype=INT)
    w.need("struct kvm_create_guest_memfd gmem;")
    pre = ("gmem = (struct kvm_create_guest_memfd){", f"\t.size = {size},", f"\t.flags = {flags},",
           f"\t.reserved = {{ {', '.join(reserved) or '0'} }},", "};")
    return KCall(f"ioctl({a.num('vm')}, KVM_CREATE_GUEST_MEMFD, &gmem)", pre=pre)


def _k_memfd_create(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    return KCall(f"memfd_create({a.string('name')}, {a.num('flags')})")


def _k_memfd_restricted(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    raise Refused("memfd_restricted was never merged into Linux: no kernel has a system call "
                  "number for it")


def _k_fchmod(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    mode = a.value("mode")
    spelled = f"0{mode:o}" if isinstance(mode, int) else a.num("mode")
    return KCall(f"fchmod({a.num('fd')}, {spelled})")


def _k_write(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    lit, n = a.data()
    return KCall(f"write({a.num('fd')}, {lit}, {n})", LONG)


def _k_pwrite(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    lit, n = a.data()
    return KCall(f"pwrite({a.num('fd')}, {lit}, {n}, {a.num('offset')})", LONG)


def _k_mmap(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    flags = a.value("flags")
    fixed = isinstance(flags, int) and flags & (uapi.MAP_FIXED | uapi.MAP_FIXED_NOREPLACE)
    # gmemlab drops an address that is only a hint, as its host kernel does.
    addr = a.ptr("addr") if fixed or not isinstance(flags, int) else "NULL"
    return KCall(f"mmap({addr}, {a.num('length')}, {a.num('prot')}, {a.num('flags')}, "
                 f"{a.num('fd')}, {a.num('offset')})", PTR, "{r} == MAP_FAILED")


def _k_mremap(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    return KCall(f"mremap({a.ptr('addr')}, {a.num('old_length')}, {a.num('new_length')}, "
                 f"{a.num('flags')}, {a.ptr('new_address')})", PTR, "{r} == MAP_FAILED")


def _k_addr_call(fn: str, third: str) -> KselftestEmit:
    def emit(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
        return KCall(f"{fn}({a.ptr('addr')}, {a.num('length')}, {a.num(third)})")
    return emit


def _k_munmap(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    return KCall(f"munmap({a.ptr('addr')}, {a.num('length')})")


def _gmem_fd(a: KselftestArgs) -> str:
    value = a.value("guest_memfd")
    return "-1" if value == 0xFFFFFFFF else a.num("guest_memfd")


def _k_memslot(version: int) -> KselftestEmit:
    def emit(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
        vm = a.obj("vm", VM)
        fields = [a.num("slot"), a.num("flags"), a.num("guest_phys_addr"), a.num("memory_size")]
        suffix = "2" if version == 2 else ""
        if vm:
            args = [vm, *fields, a.ptr("userspace_addr")]
            if version == 2:
                args += [_gmem_fd(a), a.num("guest_memfd_offset")]
            text = ", ".join(args)
            return KCall(f"__vm_set_user_memory_region{suffix}({text})",
                         ok_form=f"vm_set_user_memory_region{suffix}({text})")
        struct = f"kvm_userspace_memory_region{suffix}"
        w.need(f"struct {struct} region{suffix};")
        pre = [f"region{suffix} = (struct {struct}){{", f"\t.slot = {fields[0]},",
               f"\t.flags = {fields[1]},", f"\t.guest_phys_addr = {fields[2]},",
               f"\t.memory_size = {fields[3]},",
               f"\t.userspace_addr = (uint64_t)(uintptr_t){a.ptr('userspace_addr')},"]
        if version == 2:
            pre += [f"\t.guest_memfd = {_gmem_fd(a)},",
                    f"\t.guest_memfd_offset = {a.num('guest_memfd_offset')},"]
        pre.append("};")
        ioctl = "KVM_SET_USER_MEMORY_REGION2" if version == 2 else "KVM_SET_USER_MEMORY_REGION"
        return KCall(f"ioctl({a.num('vm')}, {ioctl}, &region{suffix})", pre=tuple(pre))
    return emit


def _k_set_memory_attributes(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    vm = a.obj("vm", VM)
    fields = (a.num("address"), a.num("size"), a.num("attributes"), a.num("flags"))
    if vm and a.value("flags") == 0 and sp.step.expects_success and not sp.checks and not sp.bind:
        return KCall("", ok_form=f"vm_set_memory_attributes({vm}, {', '.join(fields[:3])})")
    w.need("struct kvm_memory_attributes attr;")
    pre = ("attr = (struct kvm_memory_attributes){", f"\t.address = {fields[0]},",
           f"\t.size = {fields[1]},", f"\t.attributes = {fields[2]},", f"\t.flags = {fields[3]},",
           "};")
    expr = f"__vm_ioctl({vm}, KVM_SET_MEMORY_ATTRIBUTES, &attr)" if vm else \
        f"ioctl({a.num('vm')}, KVM_SET_MEMORY_ATTRIBUTES, &attr)"
    return KCall(expr, pre=pre)


def _k_enable_cap(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    vm = a.obj("vm", VM)
    cap, args = a.num("cap"), a.seq("args")
    if vm and a.value("flags") == 0 and len(args) <= 1:
        arg0 = args[0] if args else "0"
        return KCall(f"__vm_enable_cap({vm}, {cap}, {arg0})",
                     ok_form=f"vm_enable_cap({vm}, {cap}, {arg0})")
    w.need("struct kvm_enable_cap enable;")
    pre = ("enable = (struct kvm_enable_cap){", f"\t.cap = {cap},", f"\t.flags = {a.num('flags')},",
           f"\t.args = {{ {', '.join(args) or '0'} }},", "};")
    return KCall(f"ioctl({a.num('vm')}, KVM_ENABLE_CAP, &enable)", pre=pre)


def _k_create_vcpu(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    vm = a.obj("vm", VM)
    return KCall(f"ioctl({a.num('vm')}, KVM_CREATE_VCPU, {a.num('id')})",
                 ok_form=f"__vm_vcpu_add({vm}, {a.num('id')})" if vm else None, ok_ctype=VCPU)


# Operations whose checks are their own: they return statements.


def _expect_errno(w: KWriter, sp: StepPlan, call: str, failed: str, show: str) -> list[str]:
    name = uapi.errno_name(sp.step.errno or 0)
    return [f"ret = {call};",
            f'TEST_ASSERT({failed} && errno == {name}, "{w.tag}: expected {name}, got %ld (%s)", '
            f"ret, strerror(errno));"]


def _k_read(with_offset: bool) -> KselftestEmit:
    def emit(a: KselftestArgs, sp: StepPlan, w: KWriter) -> list[str]:
        length = a.value("length")
        if not isinstance(length, int):
            raise Refused("a read of a length bound at run time")
        w.need("long ret;")
        buf = w.scratch(f"char [{max(length, 1)}]")
        args = f"{a.num('fd')}, {buf}, {length}" + (f", {a.num('offset')}" if with_offset else "")
        fn = "pread" if with_offset else "read"
        if sp.step.errno is not None:
            return _expect_errno(w, sp, f"{fn}({args})", "ret == -1", "%ld")
        if sp.step.signal is not None:
            return [w.fail(f"expected {uapi.signal_name(sp.step.signal)}: {fn} never signals")]
        return [f"ret = {fn}({args});",
                f'TEST_ASSERT(ret >= 0, "{w.tag} failed: %s", strerror(errno));',
                *w.bytes_checks(buf, "ret", sp.checks)]
    return emit


def _k_fstat(a: KselftestArgs, sp: StepPlan, w: KWriter) -> list[str]:
    if sp.bind and sp.bind in w.used:
        st = w.bind(sp.bind, STAT)
    else:
        st = "st"
        w.need("struct stat st;")
    if sp.step.errno is not None:
        w.need("long ret;")
        return _expect_errno(w, sp, f"fstat({a.num('fd')}, &{st})", "ret == -1", "%ld")
    if sp.step.signal is not None:
        return [w.fail(f"expected {uapi.signal_name(sp.step.signal)}: fstat never signals")]
    table = Table("stat", lvalues={k: f"{st}.{f}" for k, f in STAT_FIELDS.items()})
    return [f'TEST_ASSERT(!fstat({a.num("fd")}, &{st}), "{w.tag} failed: %s", strerror(errno));',
            *w.table_checks(table, sp.checks)]


def _k_read_mem(a: KselftestArgs, sp: StepPlan, w: KWriter) -> list[str]:
    length = a.value("length")
    if not isinstance(length, int):
        raise Refused("a load of a length bound at run time")
    mem = a.ptr("addr")
    if sp.step.signal is not None:
        sig = uapi.signal_name(sp.step.signal)
        if length == 1:
            return [f"EXPECT_SIGNAL({sig}, (void)READ_ONCE({a.byte('addr')}));"]
        w.need("char sink[4096];")
        return [f"EXPECT_SIGNAL({sig}, read_range(sink, {mem}, {length}));"]
    if sp.step.errno is not None:
        return [w.fail(f"expected {uapi.errno_name(sp.step.errno)}: a load never fails with "
                       "an errno")]
    if length == 0:
        return []
    if not sp.checks:
        w.need("char sink[4096];")
        return [f"read_range(sink, {mem}, {length});"]
    return w.bytes_checks(mem, str(length), sp.checks, a.indexed("addr"))


def _k_write_mem(a: KselftestArgs, sp: StepPlan, w: KWriter) -> list[str]:
    if a.value("fill") is not None:
        length = a.value("length")
        fill = a.value("fill")
        spelled = f"{fill:#04x}" if isinstance(fill, int) else a.num("fill")
        store = f"memset({a.ptr('addr')}, {spelled}, {a.num('length')})"
    else:
        lit, length = a.data()
        store = f"memcpy({a.ptr('addr')}, {lit}, {length})"
    if sp.step.signal is not None:
        return [f"EXPECT_SIGNAL({uapi.signal_name(sp.step.signal)}, {store});"]
    if sp.step.errno is not None:
        return [w.fail(f"expected {uapi.errno_name(sp.step.errno)}: a store never fails with "
                       "an errno")]
    out = [f"{store};"] if length != 0 else []
    for check in sp.checks:
        if isinstance(check, IntEqual) and check.want.kind != "int":
            if not check.differ:
                out.append(w.fail(f"expected {check.want.shown}, got {length}"))
        elif isinstance(check, IntEqual) and isinstance(check.want.value, int):
            if (check.want.value == length) == check.differ:
                out.append(w.fail(f"expected {'a result other than ' if check.differ else ''}"
                                  f"{check.want.shown}, got {length}"))
        elif isinstance(check, Fails):
            out.append(w.fail(check.message))
        else:
            raise Refused("a store's result compared with a bound value")
    return out


def _k_guest_access(a: KselftestArgs, sp: StepPlan, w: KWriter) -> list[str]:
    vcpu = a.obj("vcpu", VCPU)
    if vcpu is None:
        raise Refused("a guest access on a vCPU that kvm_util did not create")
    private = a.value("private")
    if private is not None:
        # Where KVM decides from the memory attributes, `private` only restates them and the
        # access is the same instruction; SNP and TDX guests would set a bit of their own.
        vm_type = w.vm_type(sp.args["vcpu"])
        if vm_type is None:
            raise Refused("private = ... on a vCPU whose VM type is not known when exporting")
        if private and vm_type == uapi.KVM_X86_DEFAULT_VM:
            raise Refused(f"a VM of type {vm_type} has no private memory, so no private access "
                          "(a test that can only fail)")
        if private and guest_chooses_private(vm_type):
            raise Refused("a private access of an SNP or TDX guest: gmemlab's access program "
                          "sets no C-bit or shared bit")
    length = a.value("length")
    if not isinstance(length, int):
        raise Refused("a guest access of a length bound at run time")
    slots, slot = w.guest_slots()
    w.need("struct guest_access ga;")
    w.need("long ret;")
    if a.value("write"):
        lit, _ = a.data()
        data = lit
    else:
        data = "NULL"
    call = (f"guest_access({vcpu}, {slot}, {slots}, {a.num('gpa')}, {length}, "
            f"{'true' if a.value('write') else 'false'}, {data}, &ga)")
    if sp.step.errno is not None:
        return _expect_errno(w, sp, call, "ret == -1", "%ld")
    if sp.step.signal is not None:
        return [w.fail(f"expected {uapi.signal_name(sp.step.signal)}: a guest access never "
                       "signals the host")]
    out = [f"ret = {call};", f'TEST_ASSERT(!ret, "{w.tag} failed: %s", strerror(errno));']
    data_checks = [c for c in sp.checks if isinstance(c, (AllBytes, BytesEqual))]
    if data_checks:
        out.append("TEST_ASSERT_EQ(ga.exit, GUEST_EXIT_NONE);")
        out += w.bytes_checks("ga.data", str(length), data_checks)
    return out + w.table_checks(Table("guest", length=length),
                                [c for c in sp.checks if c not in data_checks])


def _nodes(a: KselftestArgs, w: KWriter) -> tuple[str, tuple[str, ...]]:
    """A node mask argument: NULL, or an array of the words the kernel may read (and the
    statements that fill it, when words are bound values)."""
    items = a.seq("nodemask")
    if not items:
        return "NULL", ()
    maxnode = a.value("maxnode")
    if not isinstance(maxnode, int):
        raise Refused("a node mask whose maxnode is bound at run time")
    words = max(1, mask_words(maxnode))
    values = (items + ["0"] * words)[:words]
    if not a.literal("nodemask"):
        name = w.node_mask(words, None)
        return name, tuple(f"{name}[{i}] = {v};" for i, v in enumerate(values))
    while len(values) > 1 and values[-1] == "0":
        values.pop()
    return w.node_mask(words, values), ()


def _k_mbind(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    nodes, pre = _nodes(a, w)
    args = (f"{a.ptr('addr')}, {a.num('len')}, {a.num('mode')}, {nodes}, {a.num('maxnode')}, "
            f"{a.num('flags')}")
    return KCall(f"mbind({args})", LONG, ok_form=f"kvm_mbind({args})", pre=pre)


def _k_set_mempolicy(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    nodes, pre = _nodes(a, w)
    args = f"{a.num('mode')}, {nodes}, {a.num('maxnode')}"
    return KCall(f"set_mempolicy({args})", LONG, ok_form=f"kvm_set_mempolicy({args})", pre=pre)


def _k_get_mempolicy(a: KselftestArgs, sp: StepPlan, w: KWriter) -> list[str]:
    maxnode = a.value("maxnode")
    if not isinstance(maxnode, int):
        raise Refused("a get_mempolicy whose maxnode is bound at run time")
    words = 0 if maxnode == 0 else mask_words(maxnode)
    if sp.bind and sp.bind in w.used:
        name = w.bind(sp.bind, POLICY)
        mode, nodes = f"{name}_mode", f"{name}_nodes"
        w.words[sp.bind] = words
    else:
        mode, nodes = "mode", w.node_mask(max(words, 1), None, "got_nodes")
    w.need(f"int {mode};")
    if maxnode and sp.bind and sp.bind in w.used:
        w.need(f"unsigned long {nodes}[{max(words, 1)}];")
    args = (f"&{mode}, {nodes if maxnode else 'NULL'}, {a.num('maxnode')}, {a.ptr('addr')}, "
            f"{a.num('flags')}")
    if sp.step.errno is not None:
        w.need("long ret;")
        return _expect_errno(w, sp, f"get_mempolicy({args})", "ret == -1", "%ld")
    if sp.step.signal is not None:
        return [w.fail(f"expected {uapi.signal_name(sp.step.signal)}: get_mempolicy never "
                       "signals")]
    table = Table("mempolicy", lvalues={"mode": mode, "nodemask": nodes}, words=words)
    return [f"kvm_get_mempolicy({args});", *w.table_checks(table, sp.checks)]


def _k_set_memory_attributes2(a: KselftestArgs, sp: StepPlan, w: KWriter) -> KCall:
    fd, offset, size = a.num("fd"), a.num("offset"), a.num("size")
    attributes, flags = a.value("attributes"), a.value("flags")
    if flags == 0 and attributes in (0, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE):
        which = "private" if attributes else "shared"
        return KCall(f"__gmem_set_{which}({fd}, {offset}, {size}, &error_offset)",
                     ok_form=f"gmem_set_{which}({fd}, {offset}, {size})",
                     error_offset="error_offset", raw_decls=("loff_t error_offset;",))
    w.need("struct kvm_memory_attributes2 attr2;")
    pre = ("attr2 = (struct kvm_memory_attributes2){", f"\t.offset = {offset},",
           f"\t.size = {size},", f"\t.attributes = {a.num('attributes')},",
           f"\t.flags = {a.num('flags')},", "};")
    return KCall(f"ioctl({fd}, KVM_SET_MEMORY_ATTRIBUTES2, &attr2)", pre=pre,
                 error_offset="attr2.error_offset")


# --- the table ------------------------------------------------------------------------------------

EMITTERS: dict[str, Emitter] = {
    "open_kvm": Emitter(call("gl_open_kvm"), _k_open_kvm),
    "create_vm": Emitter(call("gl_create_vm", "type"), _k_create_vm),
    "check_extension": Emitter(_s_check_extension, _k_check_extension),
    "create_guest_memfd": Emitter(_s_create_guest_memfd, _k_create_guest_memfd, _reserved_check),
    "memfd_create": Emitter(call("gl_memfd_create", "name", "flags"), _k_memfd_create, _name_check),
    "memfd_restricted": Emitter(call("gl_memfd_restricted", "flags"), _k_memfd_restricted),
    "close": Emitter(call("gl_close", "fd"), _k_plain("close({fd})")),
    "dup": Emitter(call("gl_dup", "fd"), _k_plain("dup({fd})")),
    "fstat": Emitter(call("gl_fstat", "fd"), _k_fstat),
    "read": Emitter(call("gl_read", "fd", "length"), _k_read(False)),
    "write": Emitter(_s_write, _k_write),
    "pread": Emitter(call("gl_pread", "fd", "length", "offset"), _k_read(True)),
    "pwrite": Emitter(_s_pwrite, _k_pwrite),
    "lseek": Emitter(call("gl_lseek", "fd", "offset", "whence"),
                     _k_plain("lseek({fd}, {offset}, {whence})", LONG)),
    "ftruncate": Emitter(call("gl_ftruncate", "fd", "length"), _k_plain("ftruncate({fd}, {length})")),
    "fallocate": Emitter(call("gl_fallocate", "fd", "mode", "offset", "length"),
                         _k_plain("fallocate({fd}, {mode}, {offset}, {length})")),
    "fsync": Emitter(call("gl_fsync", "fd"), _k_plain("fsync({fd})")),
    "fchmod": Emitter(call("gl_fchmod", "fd", "mode"), _k_fchmod),
    "mmap": Emitter(call("gl_mmap", "fd", "length", "prot", "flags", "offset", "addr"), _k_mmap),
    "munmap": Emitter(call("gl_munmap", "addr", "length"), _k_munmap),
    "mprotect": Emitter(call("gl_mprotect", "addr", "length", "prot"),
                        _k_addr_call("mprotect", "prot")),
    "madvise": Emitter(call("gl_madvise", "addr", "length", "advice"),
                       _k_addr_call("madvise", "advice")),
    "mremap": Emitter(call("gl_mremap", "addr", "old_length", "new_length", "flags", "new_address"),
                      _k_mremap),
    "read_mem": Emitter(call("gl_read_mem", "addr", "length"), _k_read_mem),
    "write_mem": Emitter(_s_write_mem, _k_write_mem),
    "set_user_memory_region": Emitter(
        call("gl_set_user_memory_region", "vm", "slot", "flags", "guest_phys_addr", "memory_size",
             "userspace_addr"), _k_memslot(1)),
    "set_user_memory_region2": Emitter(
        call("gl_set_user_memory_region2", "vm", "slot", "flags", "guest_phys_addr", "memory_size",
             "userspace_addr", "guest_memfd", "guest_memfd_offset"), _k_memslot(2)),
    "set_memory_attributes": Emitter(
        call("gl_set_memory_attributes", "vm", "address", "size", "attributes", "flags"),
        _k_set_memory_attributes),
    "enable_cap": Emitter(_s_enable_cap, _k_enable_cap, _cap_args_check),
    "create_vcpu": Emitter(call("gl_create_vcpu", "vm", "id"), _k_create_vcpu),
    "guest_access": Emitter(_s_guest_access, _k_guest_access),
    "mbind": Emitter(_s_mbind, _k_mbind),
    "get_mempolicy": Emitter(call("gl_get_mempolicy", "maxnode", "addr", "flags"), _k_get_mempolicy),
    "set_mempolicy": Emitter(_s_set_mempolicy, _k_set_mempolicy),
    "set_memory_attributes2": Emitter(
        call("gl_set_memory_attributes2", "fd", "offset", "size", "attributes", "flags"),
        _k_set_memory_attributes2),
}


def missing(op: str, flavour: str) -> str | None:
    """Why op cannot be exported in this flavour, or None."""
    entry = EMITTERS.get(op)
    if entry is None or getattr(entry, flavour) is None:
        return f"no C export for {op} yet"
    return None


def host_check(op: str) -> HostCheck | None:
    entry = EMITTERS.get(op)
    return entry.host_check if entry is not None else None
