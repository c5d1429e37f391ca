"""Case files (docs/CASES.md): loading, validation, and writing.

A case file is TOML with an array of [[case]] tables.  Everything that can be
checked without a kernel is checked here, so a malformed case is reported as
such (with file, case and step) instead of failing somewhere inside a run.
This is the one place case files are read and written: the runner loads them,
the fuzzer's divergences and the checker's counterexamples are written with
`dumps`, and `loads(dumps(cases))` gives the same cases back.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import uapi
from ..guestaccess import GUEST_PATHS
from ..spelling import vocabulary_problem

KERNELS = ("any", "model", "host")
EXPECT_KEYS = ("errno", "error_offset", "signal", "ret", "differs", "all_bytes", "bytes_hex")
STEP_META_KEYS = ("op", "as", *EXPECT_KEYS)
CASE_KEYS = ("id", "about", "kernel", "design", "requires", "steps")
DEFAULT_DESIGN = "gmem-6.18"


class CaseError(ValueError):
    """A case file or case that does not follow CASES.md."""


@dataclass(frozen=True)
class Step:
    index: int  # 1-based, as reported
    op: str
    args: dict[str, Any]
    bind: str | None = None
    errno: int | None = None
    signal: int | None = None
    ret: Any = None
    has_ret: bool = False
    all_bytes: int | None = None
    bytes_hex: str | None = None
    differs: Any = None  # the result (or the table keys given) must differ from this
    has_differs: bool = False
    error_offset: Any = None  # with errno: the offset the error reports (EAGAIN's error_offset)
    comment: str = field(default="", compare=False)  # written before the step, never read

    @property
    def expects_success(self) -> bool:
        return self.errno is None and self.signal is None

    def table(self) -> dict[str, Any]:
        """The step as its inline table: op, arguments, as, the expectation."""
        out: dict[str, Any] = {"op": self.op, **self.args}
        if self.bind:
            out["as"] = self.bind
        if self.errno is not None:
            out["errno"] = uapi.errno_name(self.errno)
        if self.error_offset is not None:
            out["error_offset"] = self.error_offset
        if self.signal is not None:
            out["signal"] = uapi.signal_name(self.signal)
        if self.has_ret:
            out["ret"] = self.ret
        if self.has_differs:
            out["differs"] = self.differs
        if self.all_bytes is not None:
            out["all_bytes"] = self.all_bytes
        if self.bytes_hex is not None:
            out["bytes_hex"] = self.bytes_hex
        return out


@dataclass(frozen=True)
class Case:
    file: str
    id: str
    about: str
    kernel: str
    design: str
    requires: tuple[str, ...]
    steps: tuple[Step, ...]
    error: str | None = None  # set when the case is malformed
    comment: str = field(default="", compare=False)  # written before [[case]], never read

    @property
    def name(self) -> str:
        return f"{self.file}::{self.id}"


@dataclass
class CaseFile:
    path: str
    cases: list[Case] = field(default_factory=list)
    error: str | None = None


def collect(paths: list[str]) -> list[CaseFile]:
    """Every case file under the given files or folders, in a stable order."""
    files: list[Path] = []
    missing: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.toml")))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(p)
    result = [CaseFile(path=m, error="no such file or folder") for m in missing]
    result.extend(load(f) for f in files)
    return result


def step(op: str, *, bind: str | None = None, expect: dict[str, Any] | None = None,
         comment: str = "", **args: Any) -> Step:
    """A step as a writer builds it: the arguments, and the expectation spelt as in a
    case file (errno and signal by name).  It is checked as a loaded one is."""
    raw: dict[str, Any] = {"op": op, **args, **(expect or {})}
    if bind:
        raw["as"] = bind
    return replace(_parse_step(0, raw), comment=comment)


def dumps(cases: Iterable[Case], header: str = "") -> str:
    """Case files' text: the cases in order, values spelt one way (integers of 4096
    and more in hex), comments as '#' lines."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for case in cases:
        if lines:
            lines.append("")
        lines += [f"# {line}".rstrip() for line in case.comment.splitlines()]
        lines += ["[[case]]", f"id = {toml_value(case.id)}"]
        if case.about:
            lines.append(f"about = {toml_value(case.about)}")
        if case.kernel != "any":
            lines.append(f"kernel = {toml_value(case.kernel)}")
        if case.design != DEFAULT_DESIGN:
            lines.append(f"design = {toml_value(case.design)}")
        if case.requires:
            lines.append(f"requires = {toml_value(list(case.requires))}")
        lines.append("steps = [")
        for st in case.steps:
            lines += [f"  # {line}".rstrip() for line in st.comment.splitlines()]
            lines.append(f"  {toml_value(st.table())},")
        lines.append("]")
    return "\n".join(lines) + "\n"


def loads(text: str, name: str = "<cases>") -> CaseFile:
    """Case files' text read back (the inverse of dumps)."""
    try:
        return parse(tomllib.loads(text), name)
    except tomllib.TOMLDecodeError as exc:
        return CaseFile(path=name, error=f"cannot read: {exc}")


def toml_value(v: Any) -> str:
    """A value as a case file writes it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return hex(v) if v >= 4096 else str(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (bytes, bytearray)):
        return _toml_string(bytes(v).hex())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise CaseError(f"cannot write {type(v).__name__} {v!r} in a case file")


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the
    rest (any Unicode scalar) as it is."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(k: Any) -> str:
    k = str(k)
    return k if k and k.isascii() and k.replace("_", "").replace("-", "").isalnum() \
        else _toml_string(k)


def load(path: Path) -> CaseFile:
    name = str(path)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return CaseFile(path=name, error=f"cannot read: {exc}")
    return parse(doc, name)


def parse(doc: dict[str, Any], name: str = "<cases>") -> CaseFile:
    out = CaseFile(path=name)
    unknown = set(doc) - {"case"}
    if unknown:
        out.error = f"unknown top-level keys {sorted(unknown)} (a case file holds [[case]] tables)"
        return out
    raw_cases = doc.get("case", [])
    if not isinstance(raw_cases, list):
        out.error = "'case' must be an array of tables ([[case]])"
        return out
    seen: set[str] = set()
    for n, raw in enumerate(raw_cases, 1):
        case_id = raw.get("id") if isinstance(raw, dict) else None
        label = case_id if isinstance(case_id, str) else f"#{n}"
        try:
            case = _parse_case(raw, name)
        except CaseError as exc:
            out.cases.append(Case(file=name, id=label, about="", kernel="any",
                                  design=DEFAULT_DESIGN, requires=(), steps=(), error=str(exc)))
            continue
        if case.id in seen:
            # Which of the two a result would name is ambiguous: the file is wrong.
            out.error = f"duplicate case id {case.id!r}: ids name cases, so each is used once"
            out.cases = []
            return out
        seen.add(case.id)
        out.cases.append(case)
    return out


def _parse_case(raw: Any, name: str) -> Case:
    if not isinstance(raw, dict):
        raise CaseError("a case must be a table")
    unknown = set(raw) - set(CASE_KEYS)
    if unknown:
        raise CaseError(f"unknown keys {sorted(unknown)}; a case has {', '.join(CASE_KEYS)}")
    case_id = raw.get("id")
    if not isinstance(case_id, str) or not case_id:
        raise CaseError("every case needs a non-empty string id")
    kernel = raw.get("kernel", "any")
    if kernel not in KERNELS:
        raise CaseError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    design = raw.get("design", DEFAULT_DESIGN)
    if not isinstance(design, str):
        raise CaseError("design must be a string")
    requires = raw.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise CaseError("requires must be a list of strings")
    for req in requires:
        parse_requirement(req)
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise CaseError("steps must be a non-empty array of inline tables")
    steps = tuple(_parse_step(i, s) for i, s in enumerate(steps_raw, 1))
    about = raw.get("about", "")
    return Case(file=name, id=case_id, about=str(about), kernel=kernel, design=design,
                requires=tuple(requires), steps=steps)


def _parse_step(index: int, raw: Any) -> Step:
    if not isinstance(raw, dict):
        raise CaseError(f"step {index}: a step must be an inline table")
    op = raw.get("op")
    if not isinstance(op, str) or not op:
        raise CaseError(f"step {index}: every step needs an op")
    bind = raw.get("as")
    if bind is not None and (not isinstance(bind, str) or not bind.isidentifier()):
        raise CaseError(f"step {index} ({op}): 'as' must be a name")
    err = raw.get("errno")
    errno_value = None
    if err is not None:
        try:
            errno_value = uapi.errno_number(err)
        except ValueError as exc:
            raise CaseError(f"step {index} ({op}): {exc}") from None
    sig = raw.get("signal")
    signal_value = None
    if sig is not None:
        if sig not in uapi.SIGNAL_NAMES:
            raise CaseError(f"step {index} ({op}): signal must be SIGBUS or SIGSEGV, not {sig!r}")
        signal_value = uapi.SIGNAL_NAMES[sig]
    all_bytes = raw.get("all_bytes")
    if all_bytes is not None and (isinstance(all_bytes, bool) or not isinstance(all_bytes, int)
                                  or not 0 <= all_bytes <= 255):
        raise CaseError(f"step {index} ({op}): all_bytes must be a byte value 0..255")
    bytes_hex = raw.get("bytes_hex")
    if bytes_hex is not None:
        try:
            bytes.fromhex(bytes_hex)
        except (TypeError, ValueError):
            raise CaseError(f"step {index} ({op}): bytes_hex is not hex") from None
    outcomes = sum(x is not None for x in (errno_value, signal_value)) + \
        int("ret" in raw or "differs" in raw or all_bytes is not None or bytes_hex is not None)
    if outcomes > 1:
        raise CaseError(f"step {index} ({op}): expect an errno, a signal or a result, not several")
    error_offset = raw.get("error_offset")
    if error_offset is not None:
        if errno_value is None:
            raise CaseError(f"step {index} ({op}): error_offset goes with the errno it comes with")
        if isinstance(error_offset, bool) or not isinstance(error_offset, (int, str)):
            raise CaseError(f"step {index} ({op}): error_offset must be an integer or a $reference")
    if "differs" in raw and raw["differs"] is None:
        raise CaseError(f"step {index} ({op}): differs needs a value")
    args = {k: v for k, v in raw.items() if k not in STEP_META_KEYS}
    problem = vocabulary_problem(op, args)
    if problem:
        raise CaseError(f"step {index} ({op}): {problem}")
    return Step(index=index, op=op, args=args, bind=bind, errno=errno_value, signal=signal_value,
                ret=raw.get("ret"), has_ret="ret" in raw, all_bytes=all_bytes, bytes_hex=bytes_hex,
                differs=raw.get("differs"), has_differs="differs" in raw,
                error_offset=error_offset)


@dataclass(frozen=True)
class Requirement:
    text: str
    cap: str
    # "nonzero", "&", "&=", "=", ">=", "<=", or "guest" / "design" (then cap holds
    # the guest path / the design name)
    cmp: str
    value: int
    mask: int = 0  # for "&=": the bits compared

    def met_by(self, got: int) -> bool:
        """Whether a capability whose KVM_CHECK_EXTENSION value is `got` meets this."""
        if self.cmp == "&=":
            return got & self.mask == self.value
        return {"nonzero": got != 0, "&": got & self.value == self.value,
                "=": got == self.value, ">=": got >= self.value, "<=": got <= self.value}[self.cmp]


def parse_requirement(text: str) -> Requirement:
    """cap:NAME, cap:NAME&MASK, cap:NAME&MASK=VALUE, cap:NAME=VALUE, cap:NAME>=VALUE,
    cap:NAME<=VALUE, guest:PATH, or design:NAME."""
    if text.startswith("guest:"):
        path = text[6:].strip()
        if path not in GUEST_PATHS:
            raise CaseError(f"requirement {text!r}: the guest path is one of "
                            f"{', '.join(GUEST_PATHS)}")
        return Requirement(text=text, cap=path, cmp="guest", value=0)
    if text.startswith("design:"):
        from ..model.designs import DESIGNS

        name = text[7:].strip()
        if name not in DESIGNS:
            raise CaseError(f"requirement {text!r}: no design {name!r} "
                            f"(known: {', '.join(sorted(DESIGNS))})")
        return Requirement(text=text, cap=name, cmp="design", value=0)
    if not text.startswith("cap:"):
        raise CaseError(f"unknown requirement {text!r} (known forms: cap:NAME[&MASK|&MASK=N|=N|>=N|<=N], "
                        f"guest:{'|'.join(GUEST_PATHS)}, design:NAME)")
    body = text[4:]
    if "&" in body and "=" in body.partition("&")[2]:
        cap, _, rest = body.partition("&")
        mask_text, _, value = rest.partition("=")
        try:
            uapi.parse_flags(cap.strip(), uapi.CAPS, "capability")
            mask, number = int(mask_text.strip(), 0), int(value.strip(), 0)
        except ValueError as exc:
            raise CaseError(f"requirement {text!r}: {exc}") from None
        return Requirement(text=text, cap=cap.strip(), cmp="&=", value=number, mask=mask)
    for cmp in (">=", "<=", "&", "="):
        if cmp in body:
            cap, _, value = body.partition(cmp)
            break
    else:
        cap, cmp, value = body, "nonzero", "0"
    try:
        uapi.parse_flags(cap.strip(), uapi.CAPS, "capability")
        number = int(value.strip(), 0)
    except ValueError as exc:
        raise CaseError(f"requirement {text!r}: {exc}") from None
    return Requirement(text=text, cap=cap.strip(), cmp=cmp, value=number)


def guest_path_of(case: Case) -> str | None:
    """The guest path a case requires, if it names one."""
    for text in case.requires:
        req = parse_requirement(text)
        if req.cmp == "guest":
            return req.cap
    return None
