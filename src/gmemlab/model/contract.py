"""What the checker needs to know about each field of the model's state.

The checker keeps a state as components, one per field of State and of the
records in it (checker/codec.py), and reduces its search with three questions
about each: which operations touch it (partial-order reduction), whether a
promise reads it (a step writing it is never explored alone), and what a
permutation of interchangeable file pages does to it (symmetry).  Each field
answers them where it is declared, in model/state.py, with `facts(...)` in
its metadata; the checker derives its tables from these declarations
(checker/declared.py) and checks every step against them, so a field added
without them stops a reduced search rather than mislead it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

KEY = "gmemlab"  # the dataclass field metadata key


class Space(Enum):
    """What a field is indexed by, if anything."""

    NONE = "a fact of the object as a whole"
    FILE_PAGE = "page of the file"
    GFN = "guest frame"
    VIRTUAL_PAGE = "host virtual page"
    PFN = "physical frame"
    ACTOR = "actor (the checker's stepwise operations)"


class Moves(Enum):
    """What a permutation of interchangeable pages of a file does to the field."""

    NOT = "left as it is"
    WITH_PAGES = "each page's value moves with the page"
    BY_RULE = "the checker's symmetry rule for it (reduce.Symmetries) carries it"
    NEVER = "it cannot be carried: a state holding it is its own representative"


class Touch(Enum):
    """The groups the partial-order reduction's footprints are written in."""

    COMMON = "what any step may read: its fds, files, VMs and the locks"
    PAGES = "page contents, references and frames"
    HOST_MAPPING = "host page tables, VMA cover and GUP pins per page"
    RESTRICTED = "the restricted memfd's per-file state"
    KVM = "KVM's per-VM memory state"
    HOST = "the host address space a guest's shared access goes through"
    FAULT = "what a host fault changes"
    MAP = "what an mmap or munmap of a file reads"
    MAP_WRITES = "what an mmap or munmap of a file changes"


@dataclass(frozen=True)
class Facts:
    space: Space = Space.NONE
    moves: Moves = Moves.NEVER
    visible: bool = False  # a promise's hook (model/observe.py) reads it
    touch: frozenset[Touch] = frozenset()
    # A dict field's key set, when it differs from the entries' own answers.
    keys_move: Moves | None = None
    keys_touch: frozenset[Touch] | None = None


def facts(space: Space = Space.NONE, moves: Moves = Moves.NEVER, *, visible: bool = False,
          touch: tuple[Touch, ...] = (), keys_move: Moves | None = None,
          keys_touch: tuple[Touch, ...] | None = None) -> dict[str, Any]:
    """Field metadata declaring what the checker needs to know."""
    return {KEY: Facts(space, moves, visible, frozenset(touch), keys_move,
                       None if keys_touch is None else frozenset(keys_touch))}
