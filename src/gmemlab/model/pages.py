"""Page contents as runs: real bytes without an object per page.

A page store is a RangeMap from page index to the page's 4 KiB image, or
None where no page is allocated (a hole: it reads as zero, and the first
fault or allocation fills it with a zeroed page).  Pages with identical
images form one run, so "fill 1 TiB with 0xaa" is one entry holding one
4 KiB image, while a page written with distinct data is a run of its own.
"""

from __future__ import annotations

from functools import lru_cache

from ..rangemap import RangeMap
from ..uapi import PAGE_SHIFT, PAGE_SIZE

Page = bytes | None
PageStore = RangeMap[Page]

ZERO_PAGE = bytes(PAGE_SIZE)
# Page indices of a 64-bit file offset.
PAGE_INDEX_LIMIT = 1 << (64 - PAGE_SHIFT)


def new_store(limit: int = PAGE_INDEX_LIMIT) -> PageStore:
    return RangeMap(None, limit)


@lru_cache(maxsize=256)
def fill_page(byte: int) -> bytes:
    return ZERO_PAGE if byte == 0 else bytes([byte]) * PAGE_SIZE


def read(store: PageStore, offset: int, length: int) -> bytes:
    """The bytes at [offset, offset+length); holes read as zero."""
    out = bytearray(length)
    end = offset + length
    first, last = offset >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT
    for start_pg, end_pg, page in store.runs(first, last):
        if page is None or page is ZERO_PAGE:
            continue
        lo = max(start_pg << PAGE_SHIFT, offset)
        hi = min(end_pg << PAGE_SHIFT, end)
        pos = lo
        while pos < hi:
            in_page = pos & (PAGE_SIZE - 1)
            n = min(PAGE_SIZE - in_page, hi - pos)
            out[pos - offset:pos - offset + n] = page[in_page:in_page + n]
            pos += n
    return bytes(out)


def _patch(store: PageStore, index: int, in_page: int, data: bytes) -> None:
    old = store[index]
    image = bytearray(old if old is not None else ZERO_PAGE)
    image[in_page:in_page + len(data)] = data
    store.set(index, index + 1, bytes(image))


def write(store: PageStore, offset: int, data: bytes) -> None:
    """Store data at offset, allocating the pages it touches."""
    pos, end = offset, offset + len(data)
    while pos < end:
        index, in_page = pos >> PAGE_SHIFT, pos & (PAGE_SIZE - 1)
        n = min(PAGE_SIZE - in_page, end - pos)
        chunk = data[pos - offset:pos - offset + n]
        if n == PAGE_SIZE:
            store.set(index, index + 1, chunk)
        else:
            _patch(store, index, in_page, chunk)
        pos += n


def fill(store: PageStore, offset: int, length: int, byte: int) -> None:
    """memset: whole pages become one run however large the range."""
    end = offset + length
    head_end = min(end, (offset + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
    if head_end > offset:
        _patch(store, offset >> PAGE_SHIFT, offset & (PAGE_SIZE - 1),
               bytes([byte]) * (head_end - offset))
    first_full, last_full = head_end >> PAGE_SHIFT, end >> PAGE_SHIFT
    if last_full > first_full:
        store.set(first_full, last_full, fill_page(byte))
    tail_start = max(last_full << PAGE_SHIFT, head_end)
    if end > tail_start:
        _patch(store, tail_start >> PAGE_SHIFT, 0, bytes([byte]) * (end - tail_start))


def allocate(store: PageStore, first: int, last: int) -> int:
    """Allocate zeroed pages in the holes of [first, last); returns how many."""
    holes = [(s, e) for s, e, page in store.runs(first, last) if page is None]
    for s, e in holes:
        store.set(s, e, ZERO_PAGE)
    return sum(e - s for s, e in holes)


def punch(store: PageStore, first: int, last: int) -> int:
    """Free the pages of [first, last); returns how many were allocated."""
    freed = present(store, first, last)
    store.set(first, last, None)
    return freed


def present(store: PageStore, first: int = 0, last: int | None = None) -> int:
    """Number of allocated pages in [first, last)."""
    return sum(e - s for s, e, page in store.runs(first, last) if page is not None)


def copy(src: PageStore, dst: PageStore, first: int, last: int) -> None:
    """Give dst the pages of src over [first, last), holes as zeroed pages
    (images are immutable, so runs are shared, not copied)."""
    for s, e, page in list(src.runs(first, last)):
        dst.set(s, e, ZERO_PAGE if page is None else page)


def first_hole(store: PageStore, first: int, last: int) -> int | None:
    return store.find(first, last, lambda page: page is None)
