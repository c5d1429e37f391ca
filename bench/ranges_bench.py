"""Model range operations on a 2^28-page (1 TiB) file, against a naive per-page model.

Run:  python3 bench/ranges_bench.py [--pages-log2 28] [--changes 200000] [--json FILE]

Measures, side by side in one run:
  1. single-page attribute changes per second (random pages of the file),
     on the RangeMap, through the whole ModelKernel operation
     (KVM_SET_MEMORY_ATTRIBUTES on a 1 TiB sw_protected VM range), and on the
     naive model (a Python list with one entry per page);
  2. the time of one whole-range change for ranges of 2^12 .. 2^28 pages;
  3. memory per run (tracemalloc) against memory per page of the naive model.
Targets: >= 200,000 single-page changes/s; whole-range change time
independent of the range's size; < 200 bytes per run.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gmemlab.errors import script_main
from gmemlab.model import ModelKernel
from gmemlab.rangemap import RangeMap

PRIVATE = 8


def single_page_rangemap(pages: int, indices: list[int]) -> float:
    m: RangeMap[int] = RangeMap(0, pages)
    start = time.perf_counter()
    for i in indices:
        m.set(i, i + 1, PRIVATE)
    return len(indices) / (time.perf_counter() - start)


def single_page_naive(naive: list[int], indices: list[int]) -> float:
    start = time.perf_counter()
    for i in indices:
        naive[i] = PRIVATE
    return len(indices) / (time.perf_counter() - start)


def single_page_kernel(pages: int, indices: list[int]) -> float:
    k = ModelKernel()
    vm = k.create_vm(1)
    start = time.perf_counter()
    for i in indices:
        k.set_memory_attributes(vm, i << 12, 4096, PRIVATE)
    rate = len(indices) / (time.perf_counter() - start)
    k.shutdown()
    return rate


def whole_range(pages_log2: int, naive: list[int] | None) -> list[dict[str, float]]:
    rows = []
    m: RangeMap[int] = RangeMap(0, 1 << pages_log2)
    for log2 in range(12, pages_log2 + 1, 4):
        n = 1 << log2
        m.set(0, 1 << pages_log2, 0)
        m.set(5, 6, PRIVATE)  # a few runs, as a real attribute map has
        reps = 200
        start = time.perf_counter()
        for r in range(reps):
            m.set(0, n, PRIVATE if r % 2 == 0 else 0)
        rm_us = (time.perf_counter() - start) / reps * 1e6
        row = {"pages_log2": log2, "rangemap_us": rm_us}
        if naive is not None:
            start = time.perf_counter()
            naive[0:n] = [PRIVATE] * n
            row["naive_us"] = (time.perf_counter() - start) * 1e6
        rows.append(row)
    return rows


def memory_per_run(pages: int, runs: int) -> float:
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    m: RangeMap[int] = RangeMap(0, pages)
    step = pages // runs
    for i in range(0, runs // 2):
        m.set(i * 2 * step, i * 2 * step + step, PRIVATE)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (used - base) / len(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages-log2", type=int, default=28)
    ap.add_argument("--changes", type=int, default=200_000)
    ap.add_argument("--no-naive", action="store_true", help="skip the naive model (it needs 2 GiB at 2^28)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    pages = 1 << args.pages_log2
    rng = random.Random(1)
    indices = [rng.randrange(pages) for _ in range(args.changes)]

    print(f"file: 2^{args.pages_log2} pages ({pages * 4096 / 2**40:g} TiB), {args.changes} random "
          f"single-page changes; Python {platform.python_version()}")
    result: dict[str, object] = {"pages_log2": args.pages_log2, "changes": args.changes}
    # The range structures first: a 2^28-entry list makes every later
    # garbage collection walk 2^28 references, which would slow them down.
    rm_rate = single_page_rangemap(pages, indices)
    k_rate = single_page_kernel(pages, indices[: args.changes // 4])
    rates: dict[str, float] = {"rangemap": rm_rate, "model_kernel_op": k_rate}
    result["single_page_changes_per_s"] = rates
    print("\n1. single-page attribute changes per second")
    print(f"   RangeMap                          {rm_rate:12,.0f} /s   (target >= 200,000)")
    print(f"   ModelKernel.set_memory_attributes {k_rate:12,.0f} /s   (argument checks + ioctl checks)")
    naive = None
    if not args.no_naive:
        start = time.perf_counter()
        naive = [0] * pages
        gc.freeze()  # keep the collector off the 2^28 references
        naive_build_s = time.perf_counter() - start
        nv_rate = single_page_naive(naive, indices)
        rates["naive_list"] = nv_rate
        print(f"   naive list (one entry per page)   {nv_rate:12,.0f} /s   (after {naive_build_s:.2f} s "
              f"and {pages * 8 / 2**30:.1f} GiB to build it)")

    rows = whole_range(args.pages_log2, naive)
    result["whole_range_change"] = rows
    print("\n2. one whole-range change")
    print("   pages       RangeMap      naive list")
    for row in rows:
        nv = f"{row['naive_us'] / 1e3:10.1f} ms" if "naive_us" in row else "        -"
        print(f"   2^{int(row['pages_log2']):<6}  {row['rangemap_us']:8.1f} us   {nv}")
    del naive
    gc.unfreeze()
    gc.collect()

    per_run = memory_per_run(pages, 20_000)
    result["bytes_per_run"] = per_run
    result["naive_bytes_per_page"] = 8
    print("\n3. memory")
    print(f"   RangeMap: {per_run:.0f} bytes per run (target < 200); naive: 8 bytes per page "
          f"= {pages * 8 / 2**30:.1f} GiB for the file whatever its contents")
    ok = rm_rate >= 200_000 and per_run < 200
    spread = max(r["rangemap_us"] for r in rows) / min(r["rangemap_us"] for r in rows)
    result["whole_range_max_over_min"] = spread
    ok = ok and spread < 3
    print(f"\nwhole-range time, largest over smallest range: {spread:.2f}x (independent of size: < 3x)")
    print("targets met" if ok else "TARGETS MISSED")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    script_main(main, "ranges_bench")
