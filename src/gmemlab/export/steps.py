"""A case step in one line, as its case file spells it (for comments and reports)."""

from __future__ import annotations

import json
from typing import Any

from .. import uapi
from ..conform.cases import Step


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return hex(value) if value >= 0x10000 else str(value)
    if isinstance(value, str):
        return value if value.startswith(("$", "align_up(")) else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def describe_step(step: Step) -> str:
    """"step 3: create_guest_memfd vm=$vm size=4096 flags="MMAP" -> f; expect EINVAL"."""
    args = " ".join(f"{k}={_value(v)}" for k, v in step.args.items())
    text = f"step {step.index}: {step.op}" + (f" {args}" if args else "")
    if step.bind:
        text += f" -> ${step.bind}"
    expect = []
    if step.errno is not None:
        expect.append(uapi.errno_name(step.errno))
    if step.error_offset is not None:
        expect.append(f"error_offset {_value(step.error_offset)}")
    if step.signal is not None:
        expect.append(uapi.signal_name(step.signal))
    if step.has_differs:
        expect.append(f"differs {_value(step.differs)}")
    if step.has_ret:
        expect.append(f"ret {_value(step.ret)}")
    if step.all_bytes is not None:
        expect.append(f"every byte {step.all_bytes:#04x}")
    if step.bytes_hex is not None:
        expect.append(f"bytes {step.bytes_hex or '(none)'}")
    return text + (f"; expect {', '.join(expect)}" if expect else "")
