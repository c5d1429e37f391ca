"""What an exported case does, decided before any C is written.

`gmemlab conform --kernel host` judges a case in a fixed order: a malformed
case or one written for another kernel first, then its stated requirements,
then what its steps need (conform/needs.py), then each step's operation (a
guest access needs a guest here; a model-only or unknown operation fails the
case), then the steps one by one.  A step fails before its call when a
reference is unbound or an argument is malformed, and after it when the
outcome is not the one expected.

Everything that does not depend on the running kernel is decided here, from
the case alone, with the runner's own functions (spelling, interface
check_call, needs.infer), so the C program only has to ask the kernel what
the Python runner asks it.  A bound value enters the C program as a variable
(`Ref`); literal arguments are already checked and converted to their C type.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from .. import spelling, uapi
from ..conform.cases import Case, Requirement, Step, parse_requirement
from ..conform.needs import Need, infer
from ..conform.runner import model_only_ops
from ..errors import UsageError
from ..interface import INTERFACE_OPS, GuestAccess, Kernel, Stat, check_call, op_signature
from .clang import identifier

# --- what results look like ----------------------------------------------------------------


@functools.cache
def result_kind(op: str) -> str:
    """"int", "bytes", "stat" or "guest": what a host-runnable op returns."""
    hint = get_type_hints(getattr(Kernel, op)).get("return", int)
    return {bytes: "bytes", Stat: "stat", GuestAccess: "guest"}.get(hint, "int")


STAT_KEYS = tuple(Stat.__dataclass_fields__)
# The keys a GuestAccess table has on the host, by its exit (host/guest.py sets no errno).
GUEST_KEYS = {"none": ("exit", "data_hex"), "mmio": ("exit", "data_hex", "gpa", "size", "write"),
              "memory_fault": ("exit", "data_hex", "gpa", "size", "flags")}


@dataclass(frozen=True)
class Ref:
    """A value bound by an earlier step, plus a constant (`$a+4096`)."""

    var: str  # its C variable
    name: str  # the name as the case binds it
    delta: int = 0
    kind: str = "int"
    fd: bool = False  # bound to a new fd: a small non-negative int, whatever the C type


    def show(self) -> str:
        if not self.delta:
            return f"${self.name}"
        return f"${self.name}{'+' if self.delta > 0 else '-'}{abs(self.delta):#x}"


# --- checks after a call ---------------------------------------------------------------------


@dataclass(frozen=True)
class AllBytes:
    value: int


@dataclass(frozen=True)
class BytesEqual:
    data: bytes
    hex: str  # as written (for messages)


@dataclass(frozen=True)
class IntEqual:
    want: int | Ref


@dataclass(frozen=True)
class TableEqual:
    """One key of a table result compared: kind "int", "str", "bool" or "never"."""

    key: str
    kind: str
    want: Any


@dataclass(frozen=True)
class Fails:
    """The runner fails the step here whatever the kernel did."""

    message: str


Check = AllBytes | BytesEqual | IntEqual | TableEqual | Fails


# --- the plan ------------------------------------------------------------------------------


@dataclass
class StepPlan:
    step: Step
    args: dict[str, Any] = field(default_factory=dict)  # parameter -> value or Ref, in order
    before: str | None = None  # the step fails before its call, with this message
    bind: str | None = None  # the C variable that receives the result
    checks: list[Check] = field(default_factory=list)

    @property
    def op(self) -> str:
        return self.step.op

    @property
    def kind(self) -> str:
        return result_kind(self.step.op)


@dataclass
class CasePlan:
    case: Case
    cfile: str
    verdict: tuple[str, str] | None = None  # decided here: (SKIP or FAIL, message)
    requires: list[Requirement] = field(default_factory=list)
    needs: list[Need] = field(default_factory=list)
    # Before the steps run: (step, None) asks whether guest accesses can run here,
    # (step, message) fails the case (a model-only or unknown operation).
    op_checks: list[tuple[Step, str | None]] = field(default_factory=list)
    steps: list[StepPlan] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why it could not be exported, per step
    note: str = ""  # for a model case: which part was exported
    left_out: list[str] = field(default_factory=list)

    @property
    def guest(self) -> bool:
        """Whether the case asks who runs guest accesses here."""
        return any(r.cmp == "guest" for r in self.requires) or \
            any(msg is None for _, msg in self.op_checks)

    @property
    def static_failure(self) -> str | None:
        return next((msg for _, msg in self.op_checks if msg is not None), None)


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


def _resolve(value: Any, env: dict[str, _Binding]) -> Any:
    """spelling.resolve, with bound values as Refs."""
    if isinstance(value, str):
        if not value.startswith("$"):
            return value
        m = spelling.REF.match(value.strip())
        if m is None:
            raise _StepFails(f"bad reference {value!r} (use $name or $name+N)")
        name, sign, offset = m.groups()
        if name not in env:
            raise _StepFails(f"${name} is not bound by an earlier step")
        b = env[name]
        if offset is None:
            return Ref(b.var, name, 0, b.kind, b.fd)
        if b.kind != "int":
            raise _StepFails(f"${name} is not a number, cannot add an offset")
        delta = int(offset, 0)
        return Ref(b.var, name, delta if sign == "+" else -delta, b.kind)
    if isinstance(value, list):
        return [_resolve(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, env) for k, v in value.items()}
    return value


_PLACEHOLDER: dict[str, Any] = {"int": 0, "bytes": b"", "stat": Stat(0, 0, 0, 0, 0, 0, 0),
                                "guest": GuestAccess("none")}


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


# HostKernel's own argument checks of an operation: the message of a malformed call, or None.
HostCheck = Callable[[dict[str, Any]], "str | None"]


def _call_arguments(step: Step, env: dict[str, _Binding],
                    host_check: HostCheck | None) -> dict[str, Any]:
    """The checked arguments of the call, by parameter name (defaults filled in)."""
    resolved = _resolve(step.args, env)
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
        if _has_refs(value, "bytes") or _has_refs(value, "stat") or _has_refs(value, "guest"):
            raise Refused(f"argument {name} is a bound {value.kind if isinstance(value, Ref) else ''}"
                          " result, which the export does not pass on")
        if isinstance(value, Ref):
            checked[name] = value
        elif isinstance(value, list) and _has_refs(value):
            checked[name] = tuple(v if isinstance(v, Ref) else c
                                  for v, c in zip(value, checked[name], strict=True))
    problem = host_check(checked) if host_check is not None else None
    if problem:
        raise _StepFails(f"bad call: {problem}")
    return checked


def _want_kind(want: Any) -> tuple[str, Any]:
    """How a table value compares (runner._equal): int, str, bool or never."""
    if isinstance(want, bool):
        return "bool", want
    if isinstance(want, int):
        return "int", want
    if isinstance(want, Ref):
        return ("int", want) if want.kind == "int" else ("never", want.show())
    if isinstance(want, str):
        return "str", want
    if isinstance(want, float) and math.isfinite(want) and want.is_integer():
        return "int", int(want)
    return "never", repr(want)


def _checks(step: Step, env: dict[str, _Binding]) -> list[Check]:
    """What the runner checks after a call that succeeded as expected, in its order."""
    kind = result_kind(step.op)
    out: list[Check] = []
    if step.all_bytes is not None or step.bytes_hex is not None:
        if kind in ("int", "stat"):
            return [Fails(f"{step.op} returns no bytes to compare")]
        if step.all_bytes is not None:
            out.append(AllBytes(step.all_bytes))
        if step.bytes_hex is not None:
            out.append(BytesEqual(bytes.fromhex(step.bytes_hex), step.bytes_hex))
    if not step.has_ret:
        return out
    try:
        want = _resolve(step.ret, env)
    except _StepFails as exc:
        return [*out, Fails(exc.message)]
    if kind in ("stat", "guest"):
        if not isinstance(want, dict):
            return [*out, Fails(f"{step.op} returns a table; ret must be a table")]
        for key, expected in want.items():
            if kind == "stat" and key not in STAT_KEYS:
                out.append(Fails(f"result has no {key!r} (it has {sorted(STAT_KEYS)})"))
                break
            wkind, value = _want_kind(expected)
            out.append(TableEqual(key, wkind, value))
        return out
    if kind == "bytes":
        if not isinstance(want, str):
            return [*out, Fails(f"expected bytes {want!r}")]
        try:
            return [*out, BytesEqual(bytes.fromhex(want), want)]
        except ValueError as exc:
            return [*out, Fails(f"internal error ValueError: {exc}")]
    wkind, value = _want_kind(want)
    if wkind != "int":
        return [*out, Fails(f"expected {value if wkind == 'never' else repr(value)}")]
    return [*out, IntEqual(value)]


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
                plan.op_checks.append((step, None))
            continue
        if step.op in model_only:
            reason = f"{step.op} is a model-only operation: the case must say kernel = \"model\""
        else:
            known = ", ".join(sorted(set(INTERFACE_OPS) | model_only))
            reason = f"unknown operation {step.op!r} (known: {known})"
        plan.op_checks.append((step, f"step {step.index} ({step.op}): {reason}"))
        return plan  # the runner fails the case here, before any step runs
    env: dict[str, _Binding] = {}
    taken: set[str] = set()
    variables: dict[str, str] = {}
    for step in case.steps:
        missing = has_emitter(step.op)
        if missing:
            plan.refused.append(f"step {step.index} ({step.op}): {missing}")
            break
        sp = StepPlan(step)
        plan.steps.append(sp)
        try:
            op_signature(step.op)
            sp.args = _call_arguments(step, env, host_check(step.op))
        except _StepFails as exc:
            sp.before = exc.message
            break
        except Refused as exc:
            plan.refused.append(f"step {step.index} ({step.op}): {exc}")
            plan.steps.pop()
            break
        if not step.expects_success:
            continue
        if step.bind:
            kind = result_kind(step.op)
            var = variables.get(step.bind)
            if var is None and kind == "int":
                var = variables[step.bind] = identifier(f"v_{step.bind}", taken)
            env[step.bind] = _Binding(var or "", kind, step.op in FD_OPS)
            sp.bind = var if kind == "int" else None
        sp.checks = _checks(step, env)
        if any(isinstance(c, Fails) for c in sp.checks):
            break  # the case ends at this step
    plan.variables = list(variables.values())
    return plan


def bad_file(path: str, error: str) -> CasePlan:
    """A case file that does not load: one failing entry, as conform reports it."""
    case = Case(file=path, id="<file>", about="", kernel="any", design="", requires=(), steps=())
    return CasePlan(case=case, cfile=path, verdict=("FAIL", f"bad case file: {error}"))


def cap_number(req: Requirement) -> int:
    return uapi.parse_flags(req.cap, uapi.CAPS, "capability")
