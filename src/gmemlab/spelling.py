"""How case files and scenarios spell values, in one place.

A step's arguments are written with bound names ("$vm", "$a+4096"), flag
names ("READ|WRITE") and hex strings (data_hex).  The conformance runner, the
checker's scenarios and the model's case operations (actor_begin) all read
them the same way, through these two functions.
"""

from __future__ import annotations

import re
from typing import Any

from . import uapi
from .errors import UsageError

REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)\s*(?:([+-])\s*(0[xX][0-9a-fA-F]+|\d+))?$")


class Unbound(LookupError):
    """A reference to a name no earlier step bound."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def resolve(value: Any, env: dict[str, Any]) -> Any:
    """Replace "$name" and "$name+N" (or -N) by bound values, recursively."""
    if isinstance(value, str):
        if not value.startswith("$"):
            return value
        m = REF.match(value.strip())
        if m is None:
            raise UsageError(f"bad reference {value!r} (use $name or $name+N)")
        name, sign, offset = m.groups()
        if name not in env or env[name] is None:
            raise Unbound(name)
        base = env[name]
        if offset is None:
            return base
        if not isinstance(base, int) or isinstance(base, bool):
            raise UsageError(f"${name} is not a number, cannot add an offset")
        delta = int(offset, 0)
        return base + delta if sign == "+" else base - delta
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    return value


def call_arguments(call: str, args: dict[str, Any]) -> dict[str, Any]:
    """A step's spelling of arguments (flag names, data_hex) as the call takes them."""
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key == "data_hex":
            if not isinstance(value, str):
                raise UsageError(f"{call}: data_hex must be a hex string")
            try:
                out["data"] = bytes.fromhex(value)
            except ValueError:
                raise UsageError(f"{call}: data_hex is not hex") from None
            continue
        names = uapi.FLAG_ARGUMENTS.get((call, key))
        if names is not None and isinstance(value, str):
            try:
                value = uapi.parse_flags(value, names, f"{call}.{key}")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        out[key] = value
    return out
