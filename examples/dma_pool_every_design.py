"""A pKVM guest shares its restricted DMA pool page by page, under every design.

    python3 examples/dma_pool_every_design.py [--pages 64] [--scale]

1. For each design of the model, a protected guest (its memory private and
   owned by it at EL2) shares a DMA pool one page at a time, as swiotlb's
   set_memory_decrypted does, exchanges a message with the host through each
   page, then takes every other page back.  The table says whether the host
   reached every shared page in place and lost every page given back, and
   what the VMM and the hypervisor spent on it (the model's cost counters,
   ModelKernel.costs()).
2. page-mmap pays for sharing with VMAs: every page given back in the middle
   of the pool splits a mapping.  With vm.max_map_count lowered to 300 the
   limit shows on a 4 MiB pool; --scale runs the real limit (65530) on a
   512 MiB pool (about 35 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rich.console import Console
from rich.table import Table

from gmemlab.errors import script_main
from gmemlab.model.designs import DESIGNS
from gmemlab.pools.dma_pool import PoolResult, share_pool

ORDER = ["seed", "seed-as-written", "gmem-6.8", "gmem-6.18", "page-mmap", "kvm-map", "inplace",
         "pkvm-inplace"]


def size(pages: int) -> str:
    kib = pages * 4
    return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"


def per_page(n: int, pages: int) -> str:
    return f"{n / pages:.2g}" if pages else "-"


def outcome(results: list[PoolResult], pool: int) -> Table:
    t = Table(title=f"what the host got ({pool} pages shared, {pool // 2} given back)",
              title_justify="left")
    for col in ("design", "works", "host reached", "in place", "withdrawn", "kept", "why not"):
        t.add_column(col, justify="left" if col in ("design", "why not") else "right")
    for r in results:
        t.add_row(r.design, "[green]yes[/green]" if r.works else "[red]no[/red]",
                  f"{r.host_reached}/{r.pool_pages}", f"{r.in_place}/{r.pool_pages}",
                  f"{r.withdrawn}/{r.given_back}", f"{r.contents_kept}/{r.given_back}",
                  "" if r.works else r.verdict)
    return t


def costs(results: list[PoolResult]) -> Table:
    t = Table(title="what it cost, per page (ModelKernel.costs())", title_justify="left")
    for col in ("design", "phase", "syscalls", "hypercalls", "exits", "VMA splits", "VMA merges",
                "VMAs after", "host PTE zaps", "KVM zaps", "TLB flushes", "deferred"):
        t.add_column(col, justify="left" if col in ("design", "phase") else "right")
    for r in results:
        for phase, c, n, vmas in (("share", r.share_cost, r.pool_pages, r.vmas_shared),
                                  ("give back", r.unshare_cost, r.given_back, r.vmas_after)):
            t.add_row(r.design if phase == "share" else "", phase, per_page(c.syscalls, n),
                      per_page(c.hypercalls, n), per_page(c.exits, n), per_page(c.vma_splits, n),
                      per_page(c.vma_merges, n), str(vmas), per_page(c.host_pte_zaps, n),
                      per_page(c.kvm_zaps, n), per_page(c.tlb_flushes, n), per_page(c.deferred, n),
                      end_section=phase != "share")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=64, help="pool size in 4 KiB pages (default 64)")
    ap.add_argument("--scale", action="store_true",
                    help="also run page-mmap against the real vm.max_map_count (512 MiB pool)")
    args = ap.parse_args()
    # Piped output (a log, CI) gets room for the wide tables; a terminal keeps its width.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)

    pool = max(args.pages, 2)
    console.print(f"[bold]1. a pKVM guest shares a {size(pool)} DMA pool page by page, then gives "
                  "every other page back[/bold]\n")
    start = time.perf_counter()
    results = []
    designs = [d for d in ORDER if d in DESIGNS]
    for n, d in enumerate(designs, 1):
        with console.status(f"   design {n} of {len(designs)}: {d}..."):
            results.append(share_pool(d, pool_pages=pool, slot_pages=pool + 128))
    console.print(outcome(results, pool))
    console.print(costs(results))
    console.print(f"   ({len(results)} designs in {time.perf_counter() - start:.1f} s.  Hypercalls "
                  "and exits include the guest's MEM_SHARE / MEM_UNSHARE; exits also its accesses "
                  "to the shared pages.  'kept': the guest still has its bytes, privately.)")

    console.print("\n[bold]2. page-mmap's VMAs: one per run of pages still shared[/bold]")
    with console.status("   page-mmap on a 4 MiB pool..."):
        small = share_pool("page-mmap", pool_pages=1024, slot_pages=1024 + 64, max_map_count=300)
    console.print(f"   a 4 MiB pool, vm.max_map_count = 300: {small.verdict}; "
                  f"refusals: {dict(small.failures)}")
    console.print("   Each page given back inside the pool splits a VMA, so at the default "
                  "vm.max_map_count of 65530 a pool fragmented this way stops at 65530 runs "
                  "(a 512 MiB pool at 4 KiB); the other designs keep one VMA.")
    if args.scale:
        start = time.perf_counter()
        with console.status("   page-mmap on a 512 MiB pool up to vm.max_map_count (about 40 s)..."):
            big = share_pool("page-mmap", pool_pages=131072, slot_pages=131072 + 64)
        console.print(f"   512 MiB pool, vm.max_map_count = 65530: {big.verdict}; VMAs "
                      f"{big.vmas_after}; refusals {dict(big.failures)} "
                      f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    script_main(main, "dma_pool_every_design")
