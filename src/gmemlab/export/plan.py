"""What an exported case does, decided before any C is written.

`gmemlab conform --kernel host` judges a case in a fixed order: a malformed
case or one written for another kernel first, then its stated requirements,
then what its steps need (conform/needs.py), then each step's operation (a
guest access needs a guest here, a NUMA policy call a kernel with NUMA; a
model-only or unknown operation fails the case), then the steps one by one.
A step fails before its call when a reference is unbound or an argument is
malformed, and after it when the outcome is not the one expected.

Everything that does not depend on the running kernel is decided here, from
the case alone, with the runner's own functions (spelling, interface
check_call, needs.infer), so the C program only has to ask the kernel what
the Python runner asks it.  A bound value enters the C program as a variable
(`Ref`: a whole result, one field of a table result, plus an offset, rounded
up by align_up); literal arguments are already checked and converted to their
C type.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, get_type_hints

from .. import spelling, uapi
from ..conform.cases import Case, Requirement, Step, parse_requirement
from ..conform.needs import Need, infer
from ..conform.runner import model_only_ops
from ..errors import UsageError
from ..interface import (
    INTERFACE_OPS,
    GuestAccess,
    Kernel,
    Mempolicy,
    Stat,
    check_call,
    op_signature,
)
from .clang import identifier

# --- what results look like ----------------------------------------------------------------


@functools.cache
def result_kind(op: str) -> str:
    """"int", "bytes", "stat", "mempolicy" or "guest": what a host-runnable op returns."""
    hint = get_type_hints(getattr(Kernel, op)).get("return", int)
    return {bytes: "bytes", Stat: "stat", GuestAccess: "guest", Mempolicy: "mempolicy"}.get(hint, "int")


TABLE_KINDS = ("stat", "mempolicy", "guest")
STAT_KEYS = tuple(Stat.__dataclass_fields__)
# The kind of each field of the table results whose keys do not depend on the outcome.
TABLE_FIELDS: dict[str, dict[str, str]] = {
    "stat": {key: "int" for key in STAT_KEYS},
    "mempolicy": {"mode": "int", "nodemask": "list"},
}
# A guest access's table: which keys it has depends on its exit (GuestAccess.as_table):
# exit and data_hex always; gpa and size for an exit; write for MMIO; flags and errno
# (KVM_RUN's) for a memory fault.
GUEST_FIELDS = {"exit": "str", "data_hex": "str", "gpa": "int", "size": "int", "flags": "int",
                "write": "bool", "errno": "str"}


@dataclass(frozen=True)
class Ref:
    """A value bound by an earlier step: the whole result or one field of a table
    result (`$st.ino`), plus a constant (`$a+4096`), rounded up (`align_up($r, N)`)."""

    var: str  # the C variable of the binding
    name: str  # the name as the case binds it
    delta: int = 0
    kind: str = "int"  # of the value: int, bytes, stat, mempolicy, guest; for a field int, list, str, bool
    fd: bool = False  # bound to a new fd: a small non-negative int, whatever the C type
    field: str | None = None  # one field of a table binding
    table: str | None = None  # with field: the binding's kind
    align: int | None = None  # align_up(..., align)

    def show(self) -> str:
        text = f"${self.name}" + (f".{self.field}" if self.field else "")
        if self.delta:
            text += f"{'+' if self.delta > 0 else '-'}{abs(self.delta):#x}"
        if self.align is not None:
            text = f"align_up({text}, {self.align:#x})"
        return text


@dataclass(frozen=True)
class FieldCheck:
    """A guest access's field read by a later step: whether the table has it is known
    only when the access has run (a missing one fails the step as the runner does)."""

    var: str
    field: str
    name: str


@dataclass(frozen=True)
class Want:
    """A value a result is compared with, as runner._equal compares: "int", "str" (any
    case), "bool", "list" (of ints), or "never" (no result can equal it)."""

    kind: str
    value: Any  # int | str | bool | Ref | tuple of (int | Ref) | None
    shown: str  # as the runner shows it


# --- checks after a call ---------------------------------------------------------------------


@dataclass(frozen=True)
class AllBytes:
    value: int


@dataclass(frozen=True)
class BytesEqual:
    data: bytes
    hex: str  # as written (for messages)


@dataclass(frozen=True)
class BytesDiffer:
    data: bytes
    hex: str


@dataclass(frozen=True)
class IntEqual:
    """An int result equals want (differ: differs from it)."""

    want: Want
    differ: bool = False


@dataclass(frozen=True)
class TableEqual:
    """One key of a table result compared with want (differ: must differ from it)."""

    key: str
    want: Want
    differ: bool = False


@dataclass(frozen=True)
class FieldPresent:
    """A guest access's field that a later value names must exist (FieldCheck)."""

    check: FieldCheck


@dataclass(frozen=True)
class ErrorOffset:
    """After the expected errno: the offset the error reports (KVM_SET_MEMORY_ATTRIBUTES2)."""

    want: Want


@dataclass(frozen=True)
class Fails:
    """The runner fails the step here whatever the kernel did."""

    message: str


Check = AllBytes | BytesEqual | BytesDiffer | IntEqual | TableEqual | FieldPresent | ErrorOffset | Fails


# --- the plan ------------------------------------------------------------------------------


@dataclass
class StepPlan:
    step: Step
    args: dict[str, Any] = field(default_factory=dict)  # parameter -> value or Ref, in order
    fields: list[FieldCheck] = field(default_factory=list)  # guest fields the arguments read
    before: str | None = None  # the step fails before its call, with this message
    bind: str | None = None  # the C variable that receives the result
    bind_kind: str = "int"  # what it holds: an int, or a whole table result
    checks: list[Check] = field(default_factory=list)  # after a call that succeeded as expected
    on_errno: list[Check] = field(default_factory=list)  # after the expected errno

    @property
    def op(self) -> str:
        return self.step.op

    @property
    def kind(self) -> str:
        return result_kind(self.step.op)


@dataclass(frozen=True)
class OpCheck:
    """What the runner asks of each step's operation before any step runs."""

    step: Step
    need: str | None  # "guest" (who runs guest accesses here) or "numa" (NUMA policy calls)
    message: str | None = None  # else: the case fails here (a model-only or unknown operation)


# The operations the host kernel cannot run on a kernel without NUMA.
NUMA_OPS = ("mbind", "get_mempolicy", "set_mempolicy")
# A node mask the kernel reads or fills is at most a page of bits.
MASK_WORDS_MAX = uapi.PAGE_SIZE // 8 + 1


def mask_words(maxnode: int) -> int:
    """The unsigned longs the host passes for a maxnode-bit mask (the kernel drops one bit)."""
    return min((((maxnode - 1) & ((1 << 64) - 1)) + 63) // 64, MASK_WORDS_MAX)


@dataclass
class CasePlan:
    case: Case
    cfile: str
    verdict: tuple[str, str] | None = None  # decided here: (SKIP or FAIL, message)
    requires: list[Requirement] = field(default_factory=list)
    needs: list[Need] = field(default_factory=list)
    op_checks: list[OpCheck] = field(default_factory=list)
    steps: list[StepPlan] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)  # int bindings
    tables: list[str] = field(default_factory=list)  # table bindings
    refused: list[str] = field(default_factory=list)  # why it could not be exported, per step
    note: str = ""  # for a model case: which part was exported
    left_out: list[str] = field(default_factory=list)

    @property
    def guest(self) -> bool:
        """Whether the case asks who runs guest accesses here."""
        return any(r.cmp == "guest" for r in self.requires) or \
            any(c.need == "guest" for c in self.op_checks)

    @property
    def static_failure(self) -> str | None:
        return next((c.message for c in self.op_checks if c.message is not None), None)


class Refused(Exception):
    """The step cannot be exported; the case is then reported as not exported."""


# Operations whose result is a new fd.
FD_OPS = frozenset({"open_kvm", "create_vm", "create_guest_memfd", "memfd_create", "dup",
                    "create_vcpu"})


@dataclass
class _Binding:
    var: str
    kind: str
    fd: bool = False


class _StepFails(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _field_kind(name: str, b: _Binding, key: str, pending: list[FieldCheck]) -> str:
    """The kind of one field of a bound result (spelling._field), or why it has none."""
    if b.kind in TABLE_FIELDS:
        fields = TABLE_FIELDS[b.kind]
        if key not in fields:
            raise _StepFails(f"${name} has no field {key!r} (it has {', '.join(sorted(fields))})")
        return fields[key]
    if b.kind == "guest":
        pending.append(FieldCheck(b.var, key, name))
        if key not in GUEST_FIELDS:  # the check above fails whatever the exit
            raise _StepFails(f"${name} has no field {key!r}")
        return GUEST_FIELDS[key]
    raise _StepFails(f"${name} is not a table result, so it has no field {key!r}")


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError as exc:  # "0755": the runner stops on it as on any internal error
        raise _StepFails(f"internal error ValueError: {exc}") from None


def _align_up(text: str, env: dict[str, _Binding], pending: list[FieldCheck]) -> Any:
    m = spelling.ALIGN_UP.match(text.strip())
    if m is None:
        raise _StepFails(f"bad expression {text!r} (use align_up($name, N) or "
                         "align_up($name+N, N))")
    base = _resolve(m.group(1), env, pending)
    align = _number(m.group(2))
    number = base.kind == "int" if isinstance(base, Ref) else \
        isinstance(base, int) and not isinstance(base, bool)
    if not number or align <= 0:
        raise _StepFails(f"{text}: align_up needs a number and a positive alignment")
    if isinstance(base, Ref):
        return replace(base, align=align, fd=False)
    return -(-base // align) * align


def _resolve(value: Any, env: dict[str, _Binding], pending: list[FieldCheck]) -> Any:
    """spelling.resolve, with bound values as Refs; the guest fields read go to pending."""
    if isinstance(value, str):
        if value.startswith("align_up("):
            return _align_up(value, env, pending)
        if not value.startswith("$"):
            return value
        m = spelling.REF.match(value.strip())
        if m is None:
            raise _StepFails(f"bad reference {value!r} (use $name, $name.field or $name+N)")
        name, key, sign, offset = m.group("name", "field", "sign", "offset")
        if name not in env:
            raise _StepFails(f"${name} is not bound by an earlier step")
        b = env[name]
        if key is None:
            ref = Ref(b.var, name, 0, b.kind, b.fd)
        else:
            ref = Ref(b.var, name, 0, _field_kind(name, b, key, pending), False, key, b.kind)
        if offset is None:
            return ref
        if ref.kind != "int":
            raise _StepFails(f"${name} is not a number, cannot add an offset")
        delta = _number(offset)
        return replace(ref, delta=delta if sign == "+" else -delta, fd=False)
    if isinstance(value, list):
        return [_resolve(v, env, pending) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, env, pending) for k, v in value.items()}
    return value


_PLACEHOLDER: dict[str, Any] = {"int": 0, "bytes": b"", "stat": Stat(0, 0, 0, 0, 0, 0, 0),
                                "guest": GuestAccess("none"), "mempolicy": Mempolicy(0, ()),
                                "list": [], "str": "x", "bool": False}


def _placeholders(value: Any, number: int = 0) -> Any:
    if isinstance(value, Ref):
        return number if value.kind == "int" else _PLACEHOLDER[value.kind]
    if isinstance(value, list):
        return [_placeholders(v, number) for v in value]
    return value


def _has_refs(value: Any, kind: str | None = None) -> bool:
    if isinstance(value, Ref):
        return kind is None or value.kind == kind
    if isinstance(value, (list, tuple)):
        return any(_has_refs(v, kind) for v in value)
    if isinstance(value, dict):
        return any(_has_refs(v, kind) for v in value.values())
    return False


def _refs_in(value: Any) -> list[Ref]:
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs_in(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs_in(v)]
    return []


# HostKernel's own argument checks of an operation: the message of a malformed call, or None.
HostCheck = Callable[[dict[str, Any]], "str | None"]

# What the export passes on of a bound value, by the kind of the parameter's value.
_PASSED = {"int", "list"}


def _call_arguments(sp: StepPlan, env: dict[str, _Binding],
                    host_check: HostCheck | None) -> dict[str, Any]:
    """The checked arguments of the call, by parameter name (defaults filled in)."""
    step = sp.step
    resolved = _resolve(step.args, env, sp.fields)
    try:
        kwargs = spelling.call_arguments(step.op, resolved)
    except UsageError as exc:
        raise _StepFails(str(exc).removeprefix(f"{step.op}: ")) from None
    try:
        checked = check_call(step.op, (), {k: _placeholders(v) for k, v in kwargs.items()})
    except UsageError as exc:
        if _has_refs(kwargs, "int"):
            # A bound value stands in as 0 above: the call is malformed whatever it is
            # only if it is with another value too, for the same reason.
            try:
                check_call(step.op, (), {k: _placeholders(v, 4096) for k, v in kwargs.items()})
            except UsageError as again:
                if str(again) == str(exc):
                    raise _StepFails(f"bad call: {exc}") from None
            raise Refused(f"whether the call is well-formed depends on a bound value "
                          f"({exc})") from None
        raise _StepFails(f"bad call: {exc}") from None
    for name, value in kwargs.items():
        odd = next((r for r in _refs_in(value) if r.kind not in _PASSED), None)
        if odd is not None:
            what = f"field {odd.field!r} of a bound {odd.table} result" if odd.field else \
                f"a bound {odd.kind} result"
            raise Refused(f"argument {name} is {what}, which the export does not pass on")
        if isinstance(value, Ref):
            checked[name] = value
        elif isinstance(value, list) and _has_refs(value):
            checked[name] = tuple(v if isinstance(v, Ref) else c
                                  for v, c in zip(value, checked[name], strict=True))
    problem = host_check(checked) if host_check is not None else None
    if problem:
        raise _StepFails(f"bad call: {problem}")
    return checked


def want_of(value: Any) -> Want:
    """How the runner's _equal compares a result with value."""
    if isinstance(value, bool):
        return Want("bool", value, repr(value))
    if isinstance(value, int):
        return Want("int", value, repr(value))
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return Want("int", int(value), repr(value))
    if isinstance(value, str):
        return Want("str", value, repr(value))
    if isinstance(value, Ref):
        kind = value.kind if value.kind in ("int", "str", "bool", "list") else "never"
        return Want(kind, value if kind != "never" else None, value.show())
    if isinstance(value, list):
        # Lists compare element by element with ==: True is 1, 2.0 is 2.
        items: list[int | Ref] = []
        for v in value:
            if isinstance(v, Ref) and v.kind == "int":
                items.append(v)
            elif isinstance(v, (bool, int)) or (isinstance(v, float) and math.isfinite(v) and v.is_integer()):
                items.append(int(v))
            else:
                return Want("never", None, _show_list(value))
        return Want("list", tuple(items), _show_list(value))
    return Want("never", None, repr(value))


def _show_list(value: list[Any]) -> str:
    return "[" + ", ".join(v.show() if isinstance(v, Ref) else repr(v) for v in value) + "]"


def _presence(pending: list[FieldCheck]) -> list[Check]:
    return [FieldPresent(c) for c in pending]


def _table_keys(kind: str, keys: Any) -> str | None:
    """The first key a table result of this kind never has, as the runner reports it."""
    fields = TABLE_FIELDS.get(kind)
    for key in keys:
        if fields is not None and key not in fields:
            return f"result has no {key!r} (it has {sorted(fields)})"
    return None


def _bytes_want(step: Step, want: Any, what: str) -> None:
    if isinstance(want, Ref) and want.kind == "str":
        raise Refused(f"{what} compares the bytes read with {want.show()}, a hex string "
                      "known only when the guest access has run")


def _differs_checks(step: Step, env: dict[str, _Binding]) -> list[Check]:
    kind = result_kind(step.op)
    pending: list[FieldCheck] = []
    try:
        other = _resolve(step.differs, env, pending)
    except _StepFails as exc:
        return [*_presence(pending), Fails(exc.message)]
    out = _presence(pending)
    if kind in TABLE_KINDS:
        if not isinstance(other, dict):
            return [*out, Fails(f"{step.op} returns a table; differs must be a table")]
        missing = _table_keys(kind, other)
        for key, value in other.items():
            if missing is not None and key not in TABLE_FIELDS[kind]:
                return [*out, Fails(missing)]
            out.append(TableEqual(key, want_of(value), differ=True))
        return out
    if kind == "bytes":
        _bytes_want(step, other, "differs")
        if isinstance(other, str):
            try:
                out.append(BytesDiffer(bytes.fromhex(other), other))
            except ValueError:
                out.append(Fails(f"differs: {other!r} is not hex"))
        return out
    want = want_of(other)
    if want.kind == "int":
        out.append(IntEqual(want, differ=True))
    return out  # a value of another kind: no int result is equal to it


def _ret_checks(step: Step, env: dict[str, _Binding]) -> list[Check]:
    kind = result_kind(step.op)
    pending: list[FieldCheck] = []
    try:
        want = _resolve(step.ret, env, pending)
    except _StepFails as exc:
        return [*_presence(pending), Fails(exc.message)]
    out = _presence(pending)
    if kind in TABLE_KINDS:
        if not isinstance(want, dict):
            return [*out, Fails(f"{step.op} returns a table; ret must be a table")]
        missing = _table_keys(kind, want)
        for key, expected in want.items():
            if missing is not None and key not in TABLE_FIELDS[kind]:
                return [*out, Fails(missing)]
            out.append(TableEqual(key, want_of(expected)))
        return out
    if kind == "bytes":
        _bytes_want(step, want, "ret")
        if not isinstance(want, str):
            return [*out, Fails(f"expected bytes {want_of(want).shown}")]
        try:
            return [*out, BytesEqual(bytes.fromhex(want), want)]
        except ValueError as exc:
            return [*out, Fails(f"internal error ValueError: {exc}")]
    w = want_of(want)
    if w.kind != "int":
        return [*out, Fails(f"expected {w.shown}")]
    return [*out, IntEqual(w)]


def _checks(step: Step, env: dict[str, _Binding]) -> list[Check]:
    """What the runner checks after a call that succeeded as expected, in its order:
    the bytes, then differs, then ret."""
    kind = result_kind(step.op)
    out: list[Check] = []
    if step.all_bytes is not None or step.bytes_hex is not None:
        if kind not in ("bytes", "guest"):
            return [Fails(f"{step.op} returns no bytes to compare")]
        if step.all_bytes is not None:
            out.append(AllBytes(step.all_bytes))
        if step.bytes_hex is not None:
            out.append(BytesEqual(bytes.fromhex(step.bytes_hex), step.bytes_hex))
    if step.has_differs:
        out += _differs_checks(step, env)
        if any(isinstance(c, Fails) for c in out):
            return out
    if step.has_ret:
        out += _ret_checks(step, env)
    return out


def _errno_checks(step: Step, env: dict[str, _Binding]) -> list[Check]:
    """What the runner checks after the expected errno: the error's offset, if given."""
    if step.error_offset is None:
        return []
    pending: list[FieldCheck] = []
    try:
        want = _resolve(step.error_offset, env, pending)
    except _StepFails as exc:
        return [*_presence(pending), Fails(exc.message)]
    return [*_presence(pending), ErrorOffset(want_of(want))]


# --- a case ------------------------------------------------------------------------------------


def plan_case(case: Case, cfile: str, has_emitter: Callable[[str], str | None],
              host_check: Callable[[str], HostCheck | None]) -> CasePlan:
    """The plan of one case for a flavour whose emitter table answers has_emitter(op)
    (None when it has one, else why not) and host_check(op) (HostKernel's own
    argument checks for op, or None)."""
    plan = CasePlan(case=case, cfile=cfile)
    if case.error is not None:
        plan.verdict = ("FAIL", f"bad case: {case.error}")
        return plan
    if case.kernel not in ("any", "host"):
        plan.verdict = ("SKIP", f"written for the {case.kernel} kernel only")
        return plan
    plan.requires = [parse_requirement(text) for text in case.requires]
    plan.needs = infer(case)
    model_only = model_only_ops()
    for step in case.steps:
        if step.op in INTERFACE_OPS:
            if step.op == "guest_access":
                plan.op_checks.append(OpCheck(step, "guest"))
            elif step.op in NUMA_OPS:
                plan.op_checks.append(OpCheck(step, "numa"))
            continue
        if step.op in model_only:
            reason = f"{step.op} is a model-only operation: the case must say kernel = \"model\""
        else:
            known = ", ".join(sorted(set(INTERFACE_OPS) | model_only))
            reason = f"unknown operation {step.op!r} (known: {known})"
        plan.op_checks.append(OpCheck(step, None, f"step {step.index} ({step.op}): {reason}"))
        return plan  # the runner fails the case here, before any step runs
    env: dict[str, _Binding] = {}
    taken: set[str] = set()
    variables: dict[str, str] = {}
    tables: dict[str, str] = {}
    for step in case.steps:
        missing = has_emitter(step.op)
        if missing:
            plan.refused.append(f"step {step.index} ({step.op}): {missing}")
            break
        sp = StepPlan(step)
        plan.steps.append(sp)
        try:
            op_signature(step.op)
            sp.args = _call_arguments(sp, env, host_check(step.op))
            if step.errno is not None:
                sp.on_errno = _errno_checks(step, env)
            if step.expects_success:
                if step.bind:
                    kind = result_kind(step.op)
                    names = variables if kind == "int" else tables if kind in TABLE_KINDS else None
                    var = ""
                    if names is not None:
                        var = names.get(step.bind) or identifier(
                            f"{'v' if kind == 'int' else 't'}_{step.bind}", taken)
                        names[step.bind] = var
                    env[step.bind] = _Binding(var, kind, step.op in FD_OPS)
                    sp.bind = var or None
                    sp.bind_kind = kind
                sp.checks = _checks(step, env)
        except _StepFails as exc:
            sp.before = exc.message
            break
        except Refused as exc:
            plan.refused.append(f"step {step.index} ({step.op}): {exc}")
            plan.steps.pop()
            break
        if any(isinstance(c, Fails) for c in sp.checks + sp.on_errno):
            break  # the case ends at this step
    plan.variables = list(variables.values())
    plan.tables = list(tables.values())
    return plan


def bad_file(path: str, error: str) -> CasePlan:
    """A case file that does not load: one failing entry, as conform reports it."""
    case = Case(file=path, id="<file>", about="", kernel="any", design="", requires=(), steps=())
    return CasePlan(case=case, cfile=path, verdict=("FAIL", f"bad case file: {error}"))


def cap_number(req: Requirement) -> int:
    return uapi.parse_flags(req.cap, uapi.CAPS, "capability")
