"""Sizes and small arithmetic in workload files: "64K", "1G", "$pool_at+$pool".

A workload's values are integers, sizes with a binary unit (K, M, G, T, with
or without "iB"), or expressions over them and over the workload's
parameters ($name).  Expressions are evaluated by walking Python's own
syntax tree, allowing only numbers, names of parameters and + - * / // ( ),
so a workload file can compute offsets but can never run code.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

from ..errors import UsageError

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"(?i)^\s*(\d+)\s*([kmgtp]?)(?:i?b)?\s*$")
_SIZE_TOKEN = re.compile(r"(?i)\b(\d+)([kmgtp])(?:i?b)?\b")
_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
Value = int | float | str | bool


def parse_size(text: str | int, what: str = "size") -> int:
    """An integer from 4096, "4096", "4K", "64 KiB", "1G"."""
    if isinstance(text, bool):
        raise UsageError(f"{what}: expected a size, got {text!r}")
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if m is None:
        raise UsageError(f"{what}: {text!r} is not a size (a number with an optional unit "
                         "K, M, G, T: 4K, 64M, 1G)")
    return int(m.group(1)) * UNITS[m.group(2).upper()]


def show_size(n: int) -> str:
    """4096 -> "4K", 1 << 30 -> "1G", 12288 -> "12K"; other values as they are."""
    for unit in ("P", "T", "G", "M", "K"):
        if n and n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]}{unit}"
    return str(n)


def evaluate(value: Value, params: Mapping[str, Value], what: str) -> Value:
    """A step's value with $references and sizes resolved.

    A string that is exactly one reference gives the parameter itself (so a
    pattern name stays a string); any other string containing a reference, a
    size or an operator is evaluated as integer arithmetic.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    whole = _REF.fullmatch(text)
    if whole is not None:
        return _param(whole.group(1), params, what)
    if not _REF.search(text) and not _SIZE_TOKEN.search(text) and not re.search(r"[-+*/()]", text):
        if _SIZE.match(text):
            return parse_size(text, what)
        return value

    def substitute(m: re.Match[str]) -> str:
        got = _param(m.group(1), params, what)
        if isinstance(got, bool) or not isinstance(got, int):
            raise UsageError(f"{what}: ${m.group(1)} is {got!r}, not a number, in {value!r}")
        return str(got)

    expr = _SIZE_TOKEN.sub(lambda m: str(int(m.group(1)) * UNITS[m.group(2).upper()]),
                           _REF.sub(substitute, text))
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise UsageError(f"{what}: cannot read {value!r} as a size or an expression") from None
    return _arith(tree.body, value, what)


def _param(name: str, params: Mapping[str, Value], what: str) -> Value:
    if name not in params:
        raise UsageError(f"{what}: unknown parameter ${name} (parameters: "
                         f"{', '.join(sorted(params)) or 'none'})")
    return params[name]


def _arith(node: ast.expr, source: str, what: str) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arith(node.operand, source, what)
    if isinstance(node, ast.BinOp):
        left, right = _arith(node.left, source, what), _arith(node.right, source, what)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, (ast.Div, ast.FloorDiv)):
            if right == 0:
                raise UsageError(f"{what}: division by zero in {source!r}")
            return left // right
    raise UsageError(f"{what}: {source!r} is not integer arithmetic over sizes and parameters")
