"""The checker's tables, derived from what the model's state declares.

Every field of State and of the records in it declares, in its metadata
(model/contract.py), the facts the reductions need.  This module walks the
state's types the way the codec decomposes a state (codec.py) and names each
component class as the codec keys it: "vmas" for a field of State,
"inodes#keys" for a dict's key set, "inodes.refs" for a field of the records
in a dict, "inodes.restricted.has_mapping" for a nested record's field.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from functools import cache
from types import UnionType

from ..model import state as model_state
from ..model.contract import KEY, Facts, Moves, Space, Touch

DEFAULT = Facts()
# Components the checker adds to the model's own: the notifier protocol's
# monitor per file (engine.py) is a whole-file fact no permutation moves.
CHECKER_OWN = {"monitor": Facts(moves=Moves.NOT, touch=frozenset({Touch.MAP_WRITES}))}


def _records_in(hint: object) -> type | None:
    """The mutable dataclass a field holds (directly or as `X | None`), if any."""
    args = typing.get_args(hint) if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for a in args:
        if isinstance(a, type) and dataclasses.is_dataclass(a) and \
                not a.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            return a
    return None


def _facts(f: dataclasses.Field[object]) -> Facts:
    found = f.metadata.get(KEY, DEFAULT)
    assert isinstance(found, Facts)
    return found


def _record_classes(prefix: str, cls: type) -> Iterator[tuple[str, Facts]]:
    hints = typing.get_type_hints(cls, vars(model_state))
    for f in dataclasses.fields(cls):
        name = f"{prefix}.{f.name}"
        yield name, _facts(f)
        nested = _records_in(hints[f.name])
        if nested is not None:
            yield from _record_classes(name, nested)


@cache
def classes() -> dict[str, Facts]:
    """Every component class of a model state, with its declared facts."""
    from .codec import state_fields

    hints = typing.get_type_hints(model_state.State, vars(model_state))
    by_name = {f.name: f for f in dataclasses.fields(model_state.State)}
    out: dict[str, Facts] = dict(CHECKER_OWN)
    for name in state_fields():
        f = by_name[name]
        facts = _facts(f)
        out[name] = facts
        hint = hints[name]
        if typing.get_origin(hint) is dict:
            keys = dataclasses.replace(
                facts, moves=facts.keys_move or facts.moves,
                touch=facts.touch if facts.keys_touch is None else facts.keys_touch)
            out[f"{name}#keys"] = keys
            record = _records_in(typing.get_args(hint)[1])
            if record is not None:
                out.update(_record_classes(name, record))
    return out


def where(moves: Moves | None = None, *, visible: bool | None = None,
          touch: Touch | None = None, space: Space | None = None) -> frozenset[str]:
    """The component classes whose declaration says so."""
    return frozenset(c for c, f in classes().items()
                     if (moves is None or f.moves is moves)
                     and (visible is None or f.visible is visible)
                     and (touch is None or touch in f.touch)
                     and (space is None or f.space is space))


def named(*names: str) -> frozenset[str]:
    """Component classes named one by one (an operation's own footprint): each
    must be a class the state declares, so a renamed field fails at import."""
    unknown = [n for n in names if n not in classes()]
    if unknown:
        raise KeyError(f"no field of the model's state is named {', '.join(unknown)}")
    return frozenset(names)
