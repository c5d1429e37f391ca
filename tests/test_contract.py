"""The contract between the model and the checker is declared on the state's fields."""

from __future__ import annotations

import dataclasses

import pytest

from gmemlab.checker import load
from gmemlab.checker.declared import classes, named
from gmemlab.checker.engine import Engine
from gmemlab.checker.reduce import INVARIANT, PAGE_INDEXED, VISIBLE, klass
from gmemlab.model import state as model_state
from gmemlab.model.contract import KEY, Facts, Moves

# Bookkeeping the checker does not keep as state (codec.py): counters, events.
NOT_STATE = {"counters", "audit"}


def _records() -> list[type]:
    return [model_state.State, model_state.OpenFile, model_state.Inode, model_state.Vm,
            model_state.RestrictedState]


@pytest.mark.parametrize("cls", _records(), ids=lambda c: c.__name__)
def test_every_field_declares_what_the_checker_needs(cls: type) -> None:
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in NOT_STATE and not isinstance(f.metadata.get(KEY), Facts)]
    assert not missing, f"{cls.__name__} fields without facts(...): {missing}"


def test_the_tables_follow_the_declarations() -> None:
    table = classes()
    assert {c for c, f in table.items() if f.moves is Moves.WITH_PAGES} == PAGE_INDEXED
    assert "inodes.refs" in PAGE_INDEXED and "inodes.restricted.has_mapping" in INVARIANT
    assert "vms.attributes" in VISIBLE and "inodes.refs" not in VISIBLE
    assert table["inodes#keys"].moves is Moves.NOT


def test_a_misspelt_field_fails_at_once() -> None:
    with pytest.raises(KeyError, match=r"inodes\.refz"):
        named("inodes.refz")


@pytest.mark.parametrize("name", ["seed_default", "gmem_shared", "inplace_pin", "page_mmap_share"])
def test_every_component_of_a_real_state_is_declared(name: str) -> None:
    sc = load(name)
    e = Engine(sc)
    keys = e.t.keys
    declared = classes()
    own = ("actor:", "pending:")
    undeclared = {klass(k) for k in keys if not klass(k).startswith(own)} - set(declared)
    assert not undeclared
