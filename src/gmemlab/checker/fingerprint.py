"""128-bit state fingerprints, stable across processes and updated per step.

A fingerprint is the sum, modulo 2^128, of one 128-bit hash per present
component, h(component key, value), where h is BLAKE2b of both (so it does
not depend on the process's interning order or Python's hash seed).  A step
changes a few components, so the fingerprint of a successor is its parent's
plus the differences of those few terms.  Keeping fingerprints instead of
states in the visited set costs 16 bytes per state; two distinct states
collide with probability 2^-128 per pair (for 10^8 states, below 10^-22).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Iterable
from typing import Any

from .codec import Tables

MASK = (1 << 128) - 1


def _digest(obj: Any) -> int:
    # No pickle memo: equal values must give equal bytes however their parts
    # happen to be shared in this process (a page image referenced twice, or
    # two equal images).
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=5)
    pickler.fast = True
    pickler.dump(obj)
    return int.from_bytes(hashlib.blake2b(buf.getvalue(), digest_size=16).digest(), "little")


class Fingerprints:
    def __init__(self, tables: Tables) -> None:
        self.t = tables
        self._terms: dict[tuple[int, int], int] = {}
        self._slot_hash: list[int] = []

    def term(self, slot: int, vid: int) -> int:
        if not vid:
            return 0
        key = (slot, vid)
        h = self._terms.get(key)
        if h is None:
            while len(self._slot_hash) <= slot:
                self._slot_hash.append(_digest(self.t.keys[len(self._slot_hash)]))
            h = self._terms[key] = _digest((self._slot_hash[slot], _stable(self.t.values[vid])))
        return h

    def of(self, state: tuple[int, ...]) -> int:
        term = self.term
        return sum(term(s, v) for s, v in enumerate(state) if v) & MASK

    def update(self, fp: int, changes: Iterable[tuple[int, int, int]]) -> int:
        """fp after the components (slot, old id, new id) changed."""
        term = self.term
        for slot, old, new in changes:
            fp += term(slot, new) - term(slot, old)
        return fp & MASK


def _stable(value: Any) -> Any:
    # Classes (record presence components) pickle by name; everything else the
    # codec packs is made of ints, strings, bytes, tuples and frozen dataclasses,
    # whose pickles do not depend on the process.
    return value
