"""Running cases on a kernel and judging each step's outcome.

A step's outcome is one of: a return value, an OSError (errno), a
MemorySignal, or a UsageError (the call was malformed for this op).  The step
passes when the outcome is the one the case expects.  Nothing a case does can
stop the run: every exception is turned into a FAIL with its reason.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import spelling, uapi
from ..errors import UsageError
from ..interface import INTERFACE_OPS, GuestAccess, Kernel
from ..outcome import ERRNO, SIGNAL, USAGE, Outcome
from .cases import Case, CaseFile, Requirement, Step, parse_requirement
from .needs import infer


@dataclass
class Result:
    case: Case
    status: str  # "PASS", "FAIL", "SKIP"
    message: str = ""
    step: int | None = None
    kernel: str = ""
    # For a SKIP: the reason without its particulars, to count skips by reason.
    reason: str = ""

    def line(self) -> str:
        text = f"{self.status} {self.case.name}"
        return f"{text}: {self.message}" if self.message else text

    def as_json(self) -> dict[str, Any]:
        out = {"file": self.case.file, "id": self.case.id, "status": self.status,
               "step": self.step, "message": self.message, "kernel": self.kernel}
        if self.status == "SKIP":
            out["reason"] = self.reason or self.message
        return out


@dataclass
class Summary:
    results: list[Result] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.status == "PASS" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == "FAIL" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "SKIP" for r in self.results)

    @property
    def malformed(self) -> int:
        """Case files or cases that do not follow the format (bad input, not a kernel's answer)."""
        return sum(r.reason == "bad input" for r in self.results)

    def line(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"


class StepFailure(Exception):
    pass


KernelFactory = Callable[[Case], Kernel]


def run_files(files: list[CaseFile], kernel_kind: str, factory: KernelFactory,
              unavailable: str | None = None) -> Iterator[Result]:
    """Run every case; `unavailable` skips them all with that reason."""
    for case_file in files:
        if case_file.error is not None:
            bad = Case(file=case_file.path, id="<file>", about="", kernel="any", design="",
                       requires=(), steps=())
            yield Result(bad, "FAIL", f"bad case file: {case_file.error}", kernel=kernel_kind,
                         reason="bad input")
            continue
        for case in case_file.cases:
            yield run_case(case, kernel_kind, factory, unavailable)


def run_case(case: Case, kernel_kind: str, factory: KernelFactory,
             unavailable: str | None = None) -> Result:
    if case.error is not None:
        return Result(case, "FAIL", f"bad case: {case.error}", kernel=kernel_kind,
                      reason="bad input")
    if case.kernel not in ("any", kernel_kind):
        return Result(case, "SKIP", f"written for the {case.kernel} kernel only", kernel=kernel_kind,
                      reason=f"written for the {case.kernel} kernel only")
    if unavailable is not None:
        return Result(case, "SKIP", unavailable, kernel=kernel_kind, reason=unavailable)
    try:
        kernel = factory(case)
    except UsageError as exc:
        return Result(case, "FAIL", f"bad case: {exc}", kernel=kernel_kind)
    except OSError as exc:
        return Result(case, "SKIP", f"kernel unavailable: {exc}", kernel=kernel_kind,
                      reason="kernel unavailable")
    try:
        return _run_on(case, kernel, kernel_kind)
    finally:
        with contextlib.suppress(Exception):
            kernel.shutdown()


def _run_on(case: Case, kernel: Kernel, kernel_kind: str) -> Result:
    for text in case.requires:
        unmet = _unmet(kernel, parse_requirement(text))
        if unmet:
            return Result(case, "SKIP", f"requires {text} ({unmet})", kernel=kernel_kind,
                          reason=f"requires {text}")
    # The model runs a case on the design it names, which is the kernel the
    # case was written for: only a real kernel can lack what a case needs.
    for need in infer(case) if kernel_kind == "host" else ():
        unmet = _unmet(kernel, need.requirement)
        if unmet:
            return Result(case, "SKIP", f"{need.describe()} ({unmet})", kernel=kernel_kind,
                          reason=f"needs {need.requirement.text}")
    for step in case.steps:
        problem = _op_problem(kernel, step.op)
        if problem:
            return Result(case, problem[0], f"step {step.index} ({step.op}): {problem[1]}",
                          step.index if problem[0] == "FAIL" else None, kernel=kernel_kind,
                          reason=f"{step.op}: {problem[1]}")
    env: dict[str, Any] = {}
    for step in case.steps:
        try:
            run_step(kernel, step, env)
        except StepFailure as exc:
            return Result(case, "FAIL", f"step {step.index} ({step.op}): {exc}", step.index,
                          kernel=kernel_kind)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return Result(case, "FAIL", f"step {step.index} ({step.op}): internal error "
                          f"{type(exc).__name__}: {exc} at {where.filename}:{where.lineno}",
                          step.index, kernel=kernel_kind)
    return Result(case, "PASS", kernel=kernel_kind)


def _unmet(kernel: Kernel, req: Requirement) -> str | None:
    if req.cmp == "guest":
        missing = kernel.unsupported("guest_access")
        if missing:
            return missing
        path = kernel.access_path()
        return None if path == req.cap else f"guest accesses on this kernel go through the {path}"
    if req.cmp == "design":
        design = kernel.behaves_as()
        return None if design == req.cap else f"this kernel's guest_memfd behaves as {design}"
    cap = uapi.parse_flags(req.cap, uapi.CAPS, "capability")
    try:
        value = kernel.check_extension(cap)
    except OSError as exc:
        return f"KVM_CHECK_EXTENSION failed: {exc}"
    return None if req.met_by(value) else f"the kernel reports {value:#x}"


def model_only_ops() -> frozenset[str]:
    from ..model import ModelKernel
    return frozenset(ModelKernel.EXTRA_OPS)


def _op_problem(kernel: Kernel, op: str) -> tuple[str, str] | None:
    """Why a step's op cannot run here: (SKIP or FAIL, reason), or None."""
    if op in INTERFACE_OPS:
        reason = kernel.unsupported(op)
        return ("SKIP", reason) if reason else None
    if op in model_only_ops():
        if op in getattr(kernel, "EXTRA_OPS", ()):
            return None
        return ("FAIL", f"{op} is a model-only operation: the case must say kernel = \"model\"")
    known = ", ".join(sorted(set(INTERFACE_OPS) | model_only_ops()))
    return ("FAIL", f"unknown operation {op!r} (known: {known})")


# --- one step ------------------------------------------------------------------------------


def resolve(value: Any, env: dict[str, Any]) -> Any:
    """Replace "$name" and "$name+N" by bound values, recursively."""
    try:
        return spelling.resolve(value, env)
    except spelling.Unbound as missing:
        raise StepFailure(f"${missing.name} is not bound by an earlier step") from None
    except UsageError as exc:
        raise StepFailure(str(exc)) from None


def step_arguments(step: Step, env: dict[str, Any]) -> dict[str, Any]:
    """The call's keyword arguments: references resolved, flag names parsed,
    data_hex decoded."""
    try:
        return spelling.call_arguments(step.op, resolve(step.args, env))
    except UsageError as exc:
        raise StepFailure(str(exc).removeprefix(f"{step.op}: ")) from None


def run_step(kernel: Kernel, step: Step, env: dict[str, Any]) -> None:
    args = step_arguments(step, env)
    method = getattr(kernel, step.op, None)
    if method is None:
        raise StepFailure(f"this kernel has no operation {step.op!r}")
    out = Outcome.of(method, **args)
    if out.kind == USAGE:
        raise StepFailure(f"bad call: {out.value}")
    if out.kind == SIGNAL:
        if step.signal == out.value:
            return
        raise StepFailure(f"expected {_expected(step)}, got {out} ({out.error})")
    if out.kind == ERRNO:
        assert isinstance(out.error, OSError)
        if step.errno is not None and out.value == step.errno:
            _check_error_offset(step, out.error, env)
            return
        got = str(out) if out.value is not None else str(out.error)
        raise StepFailure(f"expected {_expected(step)}, got {got} ({out.error.strerror})")
    result = out.value
    if not step.expects_success:
        raise StepFailure(f"expected {_expected(step)}, got success ({_show(result)})")
    if step.bind:
        env[step.bind] = result
    _check_result(step, result, env)


def _check_error_offset(step: Step, exc: OSError, env: dict[str, Any]) -> None:
    if step.error_offset is None:
        return
    want = resolve(step.error_offset, env)
    got = getattr(exc, "error_offset", None)
    if got is None:
        raise StepFailure(f"expected error_offset {want!r}, but the error reports none")
    if not _equal(got, want):
        def show(v: Any) -> str:
            return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else repr(v)
        raise StepFailure(f"expected error_offset {show(want)}, got {show(got)}")


def _expected(step: Step) -> str:
    if step.errno is not None:
        return f"errno {uapi.errno_name(step.errno)}"
    if step.signal is not None:
        return uapi.signal_name(step.signal)
    return "success"


def _show(result: Any) -> str:
    if isinstance(result, int) and not isinstance(result, bool):
        return f"{result:#x}" if result > 4096 else str(result)
    if isinstance(result, bytes):
        return result[:16].hex() + ("..." if len(result) > 16 else "")
    if hasattr(result, "as_table"):
        return str(result.as_table())
    return repr(result)


def _data_of(result: Any) -> bytes | None:
    if isinstance(result, bytes):
        return result
    if isinstance(result, GuestAccess):
        if result.exit != "none":
            raise StepFailure(f"expected the access to complete, got exit {result.exit} "
                              f"({result.as_table()})")
        return bytes.fromhex(result.data_hex)
    return None


def _check_result(step: Step, result: Any, env: dict[str, Any]) -> None:
    if step.all_bytes is not None or step.bytes_hex is not None:
        data = _data_of(result)
        if data is None:
            raise StepFailure(f"{step.op} returns no bytes to compare")
        if step.all_bytes is not None:
            bad = next((i for i, b in enumerate(data) if b != step.all_bytes), None)
            if bad is not None:
                raise StepFailure(f"expected every byte {step.all_bytes:#04x}, byte {bad} is "
                                  f"{data[bad]:#04x} ({len(data)} bytes read)")
        if step.bytes_hex is not None and data != bytes.fromhex(step.bytes_hex):
            raise StepFailure(f"expected bytes {step.bytes_hex}, got {data.hex()}")
    if step.has_differs:
        _check_differs(step, result, env)
    if not step.has_ret:
        return
    want = resolve(step.ret, env)
    if hasattr(result, "as_table"):
        if not isinstance(want, dict):
            raise StepFailure(f"{step.op} returns a table; ret must be a table")
        table = result.as_table()
        for key, expected in want.items():
            if key not in table:
                raise StepFailure(f"result has no {key!r} (it has {sorted(table)})")
            if not _equal(table[key], expected):
                raise StepFailure(f"expected {key} = {expected!r}, got {table[key]!r} "
                                  f"(result {table})")
        return
    if isinstance(result, bytes):
        if not isinstance(want, str) or bytes.fromhex(want) != result:
            raise StepFailure(f"expected bytes {want!r}, got {result.hex()}")
        return
    if not _equal(result, want):
        raise StepFailure(f"expected {want!r}, got {_show(result)}")


def _check_differs(step: Step, result: Any, env: dict[str, Any]) -> None:
    """differs = VALUE: the result differs from VALUE; for a table result,
    each key given differs from its value."""
    other = resolve(step.differs, env)
    if hasattr(result, "as_table"):
        if not isinstance(other, dict):
            raise StepFailure(f"{step.op} returns a table; differs must be a table")
        table = result.as_table()
        for key, value in other.items():
            if key not in table:
                raise StepFailure(f"result has no {key!r} (it has {sorted(table)})")
            if _equal(table[key], value):
                raise StepFailure(f"expected {key} to differ from {value!r}, it is the same "
                                  f"(result {table})")
        return
    if isinstance(result, bytes):
        try:
            same = isinstance(other, str) and bytes.fromhex(other) == result
        except ValueError:
            raise StepFailure(f"differs: {other!r} is not hex") from None
        if same:
            raise StepFailure(f"expected bytes other than {other}")
        return
    if _equal(result, other):
        raise StepFailure(f"expected a result other than {_show(other)}")


def _equal(got: Any, want: Any) -> bool:
    if isinstance(got, str) and isinstance(want, str):
        return got.lower() == want.lower()
    if isinstance(got, bool) or isinstance(want, bool):
        return got is want
    return bool(got == want)
