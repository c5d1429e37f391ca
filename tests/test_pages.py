"""Page contents as runs, against a plain bytearray."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from gmemlab.model import pages

SIZE = 6 * 4096

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.binary(min_size=1, max_size=9000)),
    st.tuples(st.just("fill"), st.integers(0, SIZE - 1), st.integers(1, 3 * 4096), st.integers(0, 255)),
    st.tuples(st.just("punch"), st.integers(0, 5), st.integers(1, 6)),
    st.tuples(st.just("allocate"), st.integers(0, 5), st.integers(1, 6)),
)


@given(st.lists(op, max_size=30))
@settings(max_examples=200, deadline=None)
def test_store_matches_bytearray(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    store = pages.new_store()
    ref = bytearray(SIZE)
    allocated = [False] * 6
    for o in ops:
        if o[0] == "write":
            _, off, data = o
            data = data[:SIZE - off]
            pages.write(store, off, data)
            ref[off:off + len(data)] = data
            for p in range(off // 4096, (off + len(data) + 4095) // 4096):
                allocated[p] = True
        elif o[0] == "fill":
            _, off, n, byte = o
            n = min(n, SIZE - off)
            pages.fill(store, off, n, byte)
            ref[off:off + n] = bytes([byte]) * n
            for p in range(off // 4096, (off + n + 4095) // 4096):
                allocated[p] = True
        elif o[0] == "punch":
            _, first, n = o
            last = min(6, first + n)
            pages.punch(store, first, last)
            ref[first * 4096:last * 4096] = bytes((last - first) * 4096)
            allocated[first:last] = [False] * (last - first)
        else:
            _, first, n = o
            last = min(6, first + n)
            pages.allocate(store, first, last)
            allocated[first:last] = [True] * (last - first)
        assert pages.read(store, 0, SIZE) == bytes(ref)
        assert pages.present(store, 0, 6) == sum(allocated)


def test_fill_terabyte_is_one_run() -> None:
    store = pages.new_store()
    pages.fill(store, 0, 1 << 40, 0xAA)
    assert len(store) == 2  # the filled run and the hole after it
    assert pages.read(store, (1 << 40) - 2, 4) == b"\xaa\xaa\x00\x00"
    pages.fill(store, 100, 1 << 39, 0xAA)  # same bytes: nothing changes
    assert len(store) == 2


def test_copy_shares_images() -> None:
    src, dst = pages.new_store(), pages.new_store()
    pages.write(src, 4096, b"x" * 4096)
    pages.copy(src, dst, 0, 3)
    assert pages.read(dst, 4096, 1) == b"x"
    assert dst[0] == pages.ZERO_PAGE and dst[2] == pages.ZERO_PAGE
