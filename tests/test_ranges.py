"""RangeMap against a naive per-page reference, and its snapshot forms."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gmemlab.rangemap import RangeMap

LIMIT = 64


class RangeMapVsList(RuleBasedStateMachine):
    """Random set/update sequences; the map must equal a list of per-page values."""

    def __init__(self) -> None:
        super().__init__()
        self.map: RangeMap[int] = RangeMap(0, LIMIT)
        self.ref = [0] * LIMIT

    @rule(start=st.integers(0, LIMIT - 1), length=st.integers(1, LIMIT), value=st.integers(0, 3))
    def set(self, start: int, length: int, value: int) -> None:
        end = min(LIMIT, start + length)
        self.map.set(start, end, value)
        self.ref[start:end] = [value] * (end - start)

    @rule(start=st.integers(0, LIMIT - 1), length=st.integers(1, LIMIT), delta=st.integers(1, 2))
    def update(self, start: int, length: int, delta: int) -> None:
        end = min(LIMIT, start + length)
        self.map.update(start, end, lambda v: (v + delta) % 4)
        for i in range(start, end):
            self.ref[i] = (self.ref[i] + delta) % 4

    @rule()
    def snapshot_roundtrip(self) -> None:
        frozen = self.map.freeze()
        assert RangeMap.thaw(frozen, LIMIT) == self.map
        clone = self.map.copy()
        clone.set(0, LIMIT, 9)
        assert self.map[0] != 9  # the copy is independent

    @invariant()
    def same_function(self) -> None:
        assert [self.map[i] for i in range(LIMIT)] == self.ref

    @invariant()
    def runs_are_maximal(self) -> None:
        runs = list(self.map.runs())
        assert runs[0][0] == 0 and runs[-1][1] == LIMIT
        for (_, e1, v1), (s2, _, v2) in itertools.pairwise(runs):
            assert e1 == s2 and v1 != v2  # contiguous, and adjacent runs differ
        expected_runs = 1 + sum(self.ref[i] != self.ref[i - 1] for i in range(1, LIMIT))
        assert len(self.map) == expected_runs

    @invariant()
    def clipped_runs(self) -> None:
        for start, end in ((0, LIMIT), (3, 17), (10, 11)):
            pages = [i for s, e, _ in self.map.runs(start, end) for i in range(s, e)]
            assert pages == list(range(start, end))


TestRangeMapVsList = RangeMapVsList.TestCase
TestRangeMapVsList.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 300), st.integers(0, 2)), max_size=200))
@settings(max_examples=100, deadline=None)
def test_many_chunks(ops: list[tuple[int, int, int]]) -> None:
    """Enough runs to span several internal chunks."""
    limit = 5500
    m: RangeMap[int] = RangeMap(0, limit)
    ref = [0] * limit
    for i, (start, length, value) in enumerate(ops):
        end = min(limit, start + length)
        m.set(start, end, value)
        ref[start:end] = [value] * (end - start)
        if i % 50 == 0:
            for j in range(0, limit, 7):
                m.set(j, j + 1, (j // 7) % 3)
                ref[j] = (j // 7) % 3
    assert [m[i] for i in range(limit)] == ref
    assert sum(e - s for s, e, _ in m.runs()) == limit


def test_whole_range_is_one_run() -> None:
    m: RangeMap[int] = RangeMap(0, 1 << 28)
    for i in range(0, 1 << 28, 1 << 16):
        m.set(i, i + 1, 1)
    assert len(m) == 2 * (1 << 12)
    m.set(0, 1 << 28, 0)
    assert len(m) == 1 and m[12345] == 0


def test_find_and_all_equal() -> None:
    m: RangeMap[int] = RangeMap(0, 100)
    m.set(40, 50, 7)
    assert m.find(0, 100, lambda v: v == 7) == 40
    assert m.find(45, 100, lambda v: v == 7) == 45
    assert m.find(50, 100, lambda v: v == 7) is None
    assert m.all_equal(40, 50, 7) and not m.all_equal(39, 50, 7)
    assert m.run_at(45) == (40, 50, 7)
