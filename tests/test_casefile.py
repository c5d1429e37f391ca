"""One case-file module: what it writes, it reads back as the same cases."""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import hypothesis.strategies as st
from hypothesis import given, reject, settings

from gmemlab.conform import bundled_cases, cases
from gmemlab.interface import INTERFACE_OPS, MODEL_ONLY_OPS, op_signature

OPS = sorted(INTERFACE_OPS + MODEL_ONLY_OPS)
scalars = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.booleans(),
                    st.text(max_size=12), st.from_regex(r"\$[a-z]{1,6}(\+0x[0-9a-f]{1,4})?",
                                                        fullmatch=True))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                                                 inner, max_size=3)), max_leaves=6)
errnos = st.sampled_from(["EINVAL", "ENOTTY", "EBADF", "EAGAIN", "ENODEV", "EFAULT"])


@st.composite
def steps(draw: st.DrawFn) -> cases.Step:
    op = draw(st.sampled_from(OPS))
    params = op_signature(op).parameters
    args: dict[str, Any] = {}
    for name, p in params.items():
        if p.default is inspect.Parameter.empty or draw(st.booleans()):
            key = "data_hex" if name == "data" else name
            args[key] = draw(st.binary(max_size=8)).hex() if key == "data_hex" else draw(values)
    expect = draw(st.one_of(
        st.just({}), errnos.map(lambda e: {"errno": e}),
        st.sampled_from(["SIGBUS", "SIGSEGV"]).map(lambda s: {"signal": s}),
        values.map(lambda v: {"ret": v}), st.integers(0, 255).map(lambda b: {"all_bytes": b}),
        st.binary(max_size=6).map(lambda b: {"bytes_hex": b.hex()})))
    bind = draw(st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)))
    try:
        return cases.step(op, bind=bind, expect=expect, **args)
    except cases.CaseError:
        reject()  # a malformed step (a flag argument's text, say): not a case to write


@st.composite
def case_lists(draw: st.DrawFn) -> list[cases.Case]:
    out = []
    for n in range(draw(st.integers(1, 3))):
        out.append(cases.Case(
            file="<cases>", id=f"c{n}-{draw(st.from_regex(r'[a-z0-9-]{1,8}', fullmatch=True))}",
            about=draw(st.text(max_size=30)), kernel=draw(st.sampled_from(cases.KERNELS)),
            design=draw(st.sampled_from(["gmem-6.18", "seed", "inplace"])),
            requires=tuple(draw(st.lists(st.sampled_from(
                ["cap:GUEST_MEMFD", "cap:VM_TYPES&0x3c=0", "guest:mmu", "design:gmem-6.19"]),
                max_size=2, unique=True))),
            steps=tuple(draw(st.lists(steps(), min_size=1, max_size=4)))))
    return out


def _normal(c: cases.Case) -> cases.Case:
    return replace(c, file="<cases>",
                   steps=tuple(replace(s, index=i) for i, s in enumerate(c.steps, 1)))


@settings(max_examples=300, deadline=None)
@given(case_lists())
def test_dump_then_load_gives_the_same_cases(written: list[cases.Case]) -> None:
    text = cases.dumps(written, header="a header\nof two lines")
    back = cases.loads(text)
    assert back.error is None, (back.error, text)
    assert [_normal(c) for c in back.cases] == [_normal(c) for c in written], text


def test_every_bundled_case_file_round_trips() -> None:
    for case_file in cases.collect([str(bundled_cases())]):
        assert case_file.error is None
        back = cases.loads(cases.dumps(case_file.cases), case_file.path)
        assert [_normal(c) for c in back.cases] == [_normal(c) for c in case_file.cases], \
            case_file.path
