"""Runs of pages: the model's one state structure for anything indexed by page.

The kernel keeps per-page facts of a guest_memfd in an xarray (page cache,
bindings) or a maple tree (attributes), both of which store one entry for a
whole range of indices.  RangeMap does the same: it maps every index in
[0, limit) to a value and stores only the points where the value changes, so a
1 TiB file whose pages fall into a few thousand runs costs a few thousand
entries, and assigning a value to a whole range costs O(runs it replaces), not
O(pages).

Values must be immutable and compared with ==; adjacent runs with equal values
are always merged, so two maps holding the same function compare equal and
freeze alike whatever history built them.

Storage is a chunked sorted list (the layout of sortedcontainers' SortedList,
written out here because the run operations need positional access to keys and
values together, which SortedDict only offers through a slow index tree): run
starts live in chunks of at most 2*_LOAD, values in parallel chunks, and the
first start of every chunk in a top-level list, so a lookup is two C bisects.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

INDEX_LIMIT = 1 << 64
_LOAD = 256


class RangeMap(Generic[V]):
    """A total map [0, limit) -> V stored as runs of equal values."""

    __slots__ = ("_firsts", "_keys", "_vals", "limit")

    def __init__(self, default: V, limit: int = INDEX_LIMIT) -> None:
        if limit <= 0:
            raise ValueError("RangeMap limit must be positive")
        self.limit = limit
        # Key 0 is always present, so every index lies in some run.
        self._firsts: list[int] = [0]
        self._keys: list[list[int]] = [[0]]
        self._vals: list[list[V]] = [[default]]

    # --- positions -----------------------------------------------------------

    def _locate(self, index: int) -> tuple[int, int]:
        """(chunk, slot) of the run containing index."""
        c = bisect_right(self._firsts, index) - 1
        return c, bisect_right(self._keys[c], index) - 1

    def _next_start(self, c: int, j: int) -> int:
        keys = self._keys[c]
        if j + 1 < len(keys):
            return keys[j + 1]
        if c + 1 < len(self._firsts):
            return self._firsts[c + 1]
        return self.limit

    def _prev(self, c: int, j: int) -> tuple[int, int] | None:
        if j > 0:
            return c, j - 1
        if c > 0:
            return c - 1, len(self._keys[c - 1]) - 1
        return None

    def _insert(self, c: int, j: int, key: int, value: V) -> None:
        """Insert a run start at slot j of chunk c (keys stay sorted)."""
        keys, vals = self._keys[c], self._vals[c]
        keys.insert(j, key)
        vals.insert(j, value)
        if j == 0:
            self._firsts[c] = key
        if len(keys) > 2 * _LOAD:
            self._keys[c + 1:c + 1] = [keys[_LOAD:]]
            self._vals[c + 1:c + 1] = [vals[_LOAD:]]
            del keys[_LOAD:]
            del vals[_LOAD:]
            self._firsts.insert(c + 1, self._keys[c + 1][0])

    def _delete(self, c: int, j: int) -> None:
        keys, vals = self._keys[c], self._vals[c]
        del keys[j]
        del vals[j]
        if not keys:
            del self._keys[c]
            del self._vals[c]
            del self._firsts[c]
        elif j == 0:
            self._firsts[c] = keys[0]

    def _delete_keys(self, start: int, end: int) -> None:
        """Remove every run start in [start, end)."""
        c = max(bisect_right(self._firsts, start) - 1, 0)
        while c < len(self._keys):
            keys = self._keys[c]
            if keys[0] >= end:
                break
            lo = bisect_left(keys, start)
            hi = bisect_left(keys, end)
            if lo == 0 and hi == len(keys):
                del self._keys[c]
                del self._vals[c]
                del self._firsts[c]
                continue
            if lo < hi:
                del keys[lo:hi]
                del self._vals[c][lo:hi]
                self._firsts[c] = keys[0]
            c += 1

    def _merge_at(self, key: int) -> None:
        """Drop the run start at key if the run before it has the same value."""
        if key <= 0 or key >= self.limit:
            return
        c, j = self._locate(key)
        if self._keys[c][j] != key:
            return
        p = self._prev(c, j)
        if p is not None and self._vals[p[0]][p[1]] == self._vals[c][j]:
            self._delete(c, j)

    # --- queries -------------------------------------------------------------

    def __getitem__(self, index: int) -> V:
        c = bisect_right(self._firsts, index) - 1
        return self._vals[c][bisect_right(self._keys[c], index) - 1]

    def run_at(self, index: int) -> tuple[int, int, V]:
        """The run containing index, as (start, end, value)."""
        c, j = self._locate(index)
        return self._keys[c][j], self._next_start(c, j), self._vals[c][j]

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, V]]:
        """Runs overlapping [start, end), clipped to it, in order."""
        if end is None:
            end = self.limit
        if start >= end:
            return
        c, j = self._locate(max(start, 0))
        nchunks = len(self._keys)
        while c < nchunks:
            keys, vals = self._keys[c], self._vals[c]
            while j < len(keys):
                run_start = keys[j]
                if run_start >= end:
                    return
                run_end = self._next_start(c, j)
                yield max(run_start, start), min(run_end, end), vals[j]
                j += 1
            c += 1
            j = 0

    def runs_reversed(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, V]]:
        """Runs overlapping [start, end), clipped to it, last first."""
        if end is None:
            end = self.limit
        if start >= end:
            return
        c, j = self._locate(end - 1)
        while c >= 0:
            keys, vals = self._keys[c], self._vals[c]
            while j >= 0:
                run_start = keys[j]
                run_end = self._next_start(c, j)
                yield max(run_start, start), min(run_end, end), vals[j]
                if run_start <= start:
                    return
                j -= 1
            c -= 1
            j = len(self._keys[c]) - 1 if c >= 0 else -1

    def all_equal(self, start: int, end: int, value: V) -> bool:
        """True when every index in [start, end) maps to value."""
        return all(v == value for _, _, v in self.runs(start, end))

    def find(self, start: int, end: int, pred: Callable[[V], bool]) -> int | None:
        """The first index in [start, end) whose value satisfies pred."""
        for run_start, _, value in self.runs(start, end):
            if pred(value):
                return run_start
        return None

    def __len__(self) -> int:
        """Number of runs."""
        return sum(len(k) for k in self._keys)

    # --- updates -------------------------------------------------------------

    def set(self, start: int, end: int, value: V) -> None:
        """Map every index in [start, end) to value."""
        if start >= end:
            return
        if start < 0 or end > self.limit:
            raise IndexError(f"range [{start}, {end}) outside [0, {self.limit})")
        c, j = self._locate(start)
        old = self._vals[c][j]
        next_start = self._next_start(c, j)
        if end <= next_start:
            # The range lies inside one run: the common single-page case.
            if old == value:
                return
            at_start = self._keys[c][j] == start
            if at_start:
                self._vals[c][j] = value
            else:
                self._insert(c, j + 1, start, value)
            if end < next_start:
                c, j = self._locate(end)
                self._insert(c, j + 1, end, old)
            else:
                self._merge_at(end)
            if at_start:
                self._merge_at(start)
            # Strictly inside the old run, both neighbours hold `old`: no merge.
            return
        else:
            tail = self[end] if end < self.limit else value
            # Key 0 is never deleted here, so the map never becomes empty.
            self._delete_keys(start + 1, end + 1)
            c, j = self._locate(start)
            if self._keys[c][j] == start:
                self._vals[c][j] = value
            else:
                self._insert(c, j + 1, start, value)
            if end < self.limit:
                c, j = self._locate(end)
                self._insert(c, j + 1, end, tail)
        self._merge_at(end)
        self._merge_at(start)

    def update(self, start: int, end: int, fn: Callable[[V], V]) -> None:
        """Replace each value v in [start, end) with fn(v), run by run."""
        pieces = [(s, e, fn(v)) for s, e, v in self.runs(start, end)]
        for s, e, v in pieces:
            self.set(s, e, v)

    # --- snapshots -----------------------------------------------------------

    def copy(self) -> RangeMap[V]:
        clone: RangeMap[V] = RangeMap.__new__(RangeMap)
        clone.limit = self.limit
        clone._firsts = self._firsts.copy()
        clone._keys = [k.copy() for k in self._keys]
        clone._vals = [v.copy() for v in self._vals]
        return clone

    def __copy__(self) -> RangeMap[V]:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, object]) -> RangeMap[V]:
        # Values are immutable, so sharing them is a deep copy.
        return self.copy()

    def freeze(self) -> tuple[tuple[int, V], ...]:
        """A hashable form: the (start, value) change points, in order."""
        return tuple((k, v) for ks, vs in zip(self._keys, self._vals, strict=True)
                     for k, v in zip(ks, vs, strict=True))

    @classmethod
    def thaw(cls, frozen: tuple[tuple[int, V], ...], limit: int = INDEX_LIMIT) -> RangeMap[V]:
        if not frozen or frozen[0][0] != 0:
            raise ValueError("a frozen RangeMap starts with a run at index 0")
        clone: RangeMap[V] = cls.__new__(cls)
        clone.limit = limit
        clone._keys = [[k for k, _ in frozen[i:i + _LOAD]] for i in range(0, len(frozen), _LOAD)]
        clone._vals = [[v for _, v in frozen[i:i + _LOAD]] for i in range(0, len(frozen), _LOAD)]
        clone._firsts = [k[0] for k in clone._keys]
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeMap):
            return NotImplemented
        return self.limit == other.limit and self.freeze() == other.freeze()

    def __hash__(self) -> int:
        return hash((self.limit, self.freeze()))

    def __repr__(self) -> str:
        shown = ", ".join(f"[{s:#x},{e:#x}):{v!r}" for s, e, v in _take(self.runs(), 8))
        more = "" if len(self) <= 8 else f", ... {len(self)} runs"
        return f"RangeMap({shown}{more})"


def _take(it: Iterator[tuple[int, int, V]], n: int) -> list[tuple[int, int, V]]:
    out: list[tuple[int, int, V]] = []
    for item in it:
        if len(out) == n:
            break
        out.append(item)
    return out
