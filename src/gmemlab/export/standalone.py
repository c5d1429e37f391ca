"""A case file as one standalone C program: libc and linux/kvm.h only, TAP output.

The program judges each case as `gmemlab conform --kernel host` does and
prints `ok N - id`, `ok N - id # SKIP reason` or `not ok N - id: reason`,
then a summary; it exits 1 when a case failed.  Build: cc -O2 -Wall.
"""

from __future__ import annotations

from importlib import resources

from .. import uapi
from ..vmm import asm
from .cargs import StandaloneArgs, delta128, s_ref
from .clang import c_bytes, c_comment, c_int, c_string, identifier
from .emitters import EMITTERS
from .plan import (
    AllBytes,
    BytesDiffer,
    BytesEqual,
    CasePlan,
    ErrorOffset,
    Fails,
    FieldCheck,
    FieldPresent,
    IntEqual,
    Ref,
    Refused,
    StepPlan,
    TableEqual,
    Want,
)
from .plan import cap_number as _cap_number
from .steps import describe_step

CMP = {"nonzero": "GL_NONZERO", "&": "GL_AND", "&=": "GL_AND_EQ", "=": "GL_EQ", ">=": "GL_GE",
       "<=": "GL_LE"}
INCLUDES = ("errno.h", "fcntl.h", "inttypes.h", "setjmp.h", "signal.h", "stdarg.h", "stdint.h",
            "stdio.h", "stdlib.h", "string.h", "strings.h", "time.h", "unistd.h", "sys/ioctl.h",
            "sys/mman.h", "sys/stat.h", "sys/syscall.h", "sys/time.h", "sys/types.h", "sys/vfs.h",
            "sys/wait.h",
            "linux/falloc.h", "linux/kvm.h")


def runtime(name: str) -> str:
    return (resources.files("gmemlab.export") / "runtime" / name).read_text()


def _want(value: int | Ref) -> str:
    if isinstance(value, Ref):
        return s_ref(value)
    if not -(1 << 63) <= value < 1 << 64:
        return f"(__int128)0{delta128(value)}"
    return f"(__int128){c_int(value)}"


def _field_val(ref: Ref) -> str:
    """A bound table field of any kind, as a gl_val (its storage lives as long as the call)."""
    return (f"gl_field_val(&{ref.var}, {c_string(ref.field or '')}, {c_string(ref.name)}, "
            "&(struct gl_cell){ 0 })")


def _val(want: Want) -> str:
    """A value to compare with, as a struct gl_val (runner._equal's terms)."""
    shown = c_string(want.shown)
    value = want.value
    if want.kind == "never":
        return f"gl_v_never({shown})"
    if isinstance(value, Ref) and value.kind != "int":
        return _field_val(value)
    if want.kind == "int":
        return f"gl_v_int({_want(value)}, {'NULL' if isinstance(value, Ref) else shown})"
    if want.kind == "str":
        return f"gl_v_str({c_string(value)}, {shown})"
    if want.kind == "bool":
        return f"gl_v_bool({int(value)}, {shown})"
    items = [_want(v) for v in value]
    if not items:
        return f"gl_v_list(NULL, 0, {shown})"
    refs = any(isinstance(v, Ref) for v in value)
    return (f"gl_v_list((const __int128[]){{ {', '.join(items)} }}, {len(items)}, "
            f"{'NULL' if refs else shown})")


def _check(check: object) -> str:
    if isinstance(check, AllBytes):
        return f"gl_all_bytes(&o, {check.value:#04x});"
    if isinstance(check, BytesEqual):
        return (f"gl_bytes_equal(&o, {c_bytes(check.data)}, {len(check.data)}, "
                f"{c_string(check.hex)});")
    if isinstance(check, BytesDiffer):
        return (f"gl_bytes_differ(&o, {c_bytes(check.data)}, {len(check.data)}, "
                f"{c_string(check.hex)});")
    if isinstance(check, IntEqual):
        return f"gl_int_check(&o, {_val(check.want)}, {int(check.differ)});"
    if isinstance(check, TableEqual):
        return f"gl_table_check(&o, {c_string(check.key)}, {_val(check.want)}, {int(check.differ)});"
    if isinstance(check, FieldPresent):
        return _present(check.check)
    if isinstance(check, ErrorOffset):
        return f"gl_error_offset(&o, {_val(check.want)});"
    assert isinstance(check, Fails)
    return f"gl_fail(\"%s\", {c_string(check.message)});"


def _present(f: FieldCheck) -> str:
    return f"gl_field_present(&{f.var}, {c_string(f.field)}, {c_string(f.name)});"


def _step_lines(sp: StepPlan) -> list[str]:
    step = sp.step
    out = c_comment(describe_step(step), "\t")
    out.append(f"\tgl_step({step.index}, {c_string(step.op)});")
    out += [f"\t{_present(f)}" for f in sp.fields]
    if sp.before is not None:
        return [*out, f"\tgl_fail(\"%s\", {c_string(sp.before)});"]
    emitter = EMITTERS[step.op].standalone
    assert emitter is not None
    out.append(f"\to = {emitter(StandaloneArgs(sp))};")
    if step.errno is not None:
        name = uapi.errno_name(step.errno)
        out.append(f"\tgl_expect_errno(&o, {step.errno}, {c_string(name)});")
        return out + [f"\t{_check(c)}" for c in sp.on_errno]
    if step.signal is not None:
        return [*out, f"\tgl_expect_signal(&o, {step.signal});"]
    out.append("\tgl_expect_success(&o);")
    if sp.bind:
        out.append(f"\t{sp.bind} = {'o.value' if sp.bind_kind == 'int' else 'o'};")
    out += [f"\t{_check(c)}" for c in sp.checks]
    return out


def case_function(plan: CasePlan, name: str, number: int) -> list[str]:
    """The C function that runs one case in its child process."""
    case = plan.case
    head = f"{number}. {case.id} ({case.file})" + (f"\n\n{case.about}" if case.about else "")
    if plan.note:
        head += f"\n\n{plan.note}"
    out = [*c_comment(head), f"static void {name}(void)", "{"]
    if plan.steps:
        out.append("\tstruct gl_out o __attribute__((unused));")
    out += [f"\tint64_t {var} __attribute__((unused)) = 0;" for var in plan.variables]
    out += [f"\tstruct gl_out {var} __attribute__((unused)) = {{ 0 }};" for var in plan.tables]
    if len(out) > 3:
        out.append("")
    for req in plan.requires:
        if req.cmp == "guest":
            out.append(f"\tgl_require_guest({c_string(req.text)}, {c_string(req.cap)});")
        elif req.cmp == "design":
            out.append(f"\tgl_require_design({c_string(req.text)}, {c_string(req.cap)});")
        else:
            out.append(f"\tgl_require_cap({c_string(req.text)}, NULL, {_cap_number(req)}, "
                       f"{CMP[req.cmp]}, {c_int(req.value)}, {c_int(req.mask)});")
    for need in plan.needs:
        req = need.requirement
        out.append(f"\tgl_require_cap({c_string(req.text)}, {c_string(need.describe())}, "
                   f"{_cap_number(req)}, {CMP[req.cmp]}, {c_int(req.value)}, {c_int(req.mask)});")
    asked: set[str] = set()
    for check in plan.op_checks:
        if check.message is not None:
            out.append(f"\tgl_fail(\"%s\", {c_string(check.message)});")
        elif check.need not in asked:  # one probe answers them all: the first asks
            asked.add(check.need or "")
            step = check.step
            if check.need == "guest":
                out.append(f"\tgl_guest_usable({step.index});")
            else:
                out.append(f"\tgl_numa_usable({step.index}, {c_string(step.op)});")
    for sp in plan.steps:
        out += _step_lines(sp)
    out.append("}")
    return out


def render(source: str, plans: list[CasePlan], guest: bool, command: str) -> str:
    """The whole program for one case file."""
    from . import uapi_c

    lines = [*c_comment(
        f"Cases of {source}, exported by gmemlab as a standalone test program.\n\n"
        f"Regenerate: {command}\n"
        "Build and run: cc -O2 -Wall -o PROG PROG.c && ./PROG\n\n"
        "Each case runs in a child process and is judged as `gmemlab conform --kernel host` "
        "judges it: the same steps, the same expected errno, signal or result, and SKIP exactly "
        "when the running kernel lacks what the case requires or needs.  Output is TAP; the exit "
        "status is 1 when a case failed."), "", "#define _GNU_SOURCE"]
    lines += [f"#include <{h}>" for h in INCLUDES]
    lines += ["", uapi_c.constants_block()]
    if guest:
        lines.append(uapi_c.guest_block())
    else:
        why = asm.missing_reason() or "no case of this file runs a guest"
        lines.append(f"#define GL_NO_GUEST {c_string(why)}\n")
    lines.append(runtime("standalone.c"))
    if guest:
        lines.append(runtime("standalone_guest.c"))
    lines.append(runtime("standalone_main.c"))
    table = []
    taken: set[str] = set()
    for number, plan in enumerate(plans, 1):
        case = plan.case
        if plan.verdict is not None or plan.refused:
            status, message = plan.verdict or ("SKIP", "not exported: " + "; ".join(plan.refused))
            table.append(f"\t{{ {c_string(case.id)}, NULL, {c_string(status)}, "
                         f"{c_string(message)}, 0 }},")
            continue
        name = identifier(f"case_{case.id}", taken)
        lines += case_function(plan, name, number)
        lines.append("")
        table.append(f"\t{{ {c_string(case.id)}, {name}, NULL, NULL, {int(plan.guest)} }},")
    lines += ["static const struct gl_case gl_cases[] = {", *table, "};", "",
              "int main(void)", "{",
              "\treturn gl_main(gl_cases, (int)(sizeof(gl_cases) / sizeof(gl_cases[0])));", "}"]
    return "\n".join(lines) + "\n"


def exportable(plan: CasePlan) -> None:
    """Render every step once, so that a step no emitter can write is refused here."""
    if plan.refused:
        return
    for sp in plan.steps:
        try:
            _step_lines(sp)
        except Refused as exc:
            plan.refused.append(f"step {sp.step.index} ({sp.op}): {exc}")
            return
