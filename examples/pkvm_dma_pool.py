"""pKVM's objection to the 2022 restricted memfd, made concrete on the model.

    python3 examples/pkvm_dma_pool.py [--design seed] [--quick]

1. A protected guest's memory is one memslot backed by one restricted memfd.
   The guest shares its restricted DMA pool page by page (one MEM_SHARE per
   page, as swiotlb's set_memory_decrypted does) and after every share the VMM
   tries to map the file to reach the shared bytes.
2. The workaround from the thread: one memfd and one memslot per shared unit,
   run for several pool sizes and units until it succeeds or a kernel limit
   (KVM_USER_MEM_SLOTS = 32764) refuses it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rich.console import Console
from rich.table import Table

from gmemlab import uapi
from gmemlab.errors import script_main
from gmemlab.pools.pkvm_pool import share_pool_in_one_slot, share_pool_per_unit

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def size(n: int) -> str:
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--design", default="seed")
    ap.add_argument("--quick", action="store_true", help="skip the runs that go up to the memslot limit")
    args = ap.parse_args()
    # Piped output (a log, CI) gets room for the wide tables; a terminal keeps its width.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)

    slot_pages, pool_first, pool_pages = 1024, 256, 64
    with console.status("   sharing the pool page by page..."):
        one = share_pool_in_one_slot(args.design, slot_pages, pool_first, pool_pages)
    console.print(f"[bold]1. design {args.design}: guest memory in one memslot "
                  f"({size(slot_pages * 4096)}), a {size(pool_pages * 4096)} DMA pool "
                  "shared page by page[/bold]")
    verdicts = sorted(set(one.mmap_errnos))
    if one.host_mapped_anything:
        console.print(f"   the host could map the file after {one.first_mappable_after} of {pool_pages} "
                      "pool pages were shared")
    else:
        console.print(f"   mmap after each of the {pool_pages} shares: {', '.join(verdicts)} every time: "
                      f"the host can map [bold red]nothing[/bold red] of the pool; the file becomes "
                      f"mappable only when all {slot_pages} pages of the memslot are shared")

    console.print(f"\n[bold]2. the workaround: one restricted memfd and one memslot per shared unit "
                  f"(KVM_USER_MEM_SLOTS = {uapi.KVM_USER_MEM_SLOTS})[/bold]")
    table = Table()
    for col in ("pool", "unit", "units", "memslots", "mappings", "syscalls", "outcome", "time"):
        table.add_column(col)
    runs = [(4 * MIB, 4 * KIB), (2 * GIB, 2 * MIB), (256 * MIB, 64 * KIB)]
    if not args.quick:
        runs += [(2 * GIB, 64 * KIB), (2 * GIB, 4 * KIB)]
    for n, (pool, unit) in enumerate(runs, 1):
        start = time.perf_counter()
        with console.status(f"   run {n} of {len(runs)}: a {size(pool)} pool in {size(unit)} units..."):
            r = share_pool_per_unit(args.design, pool // 4096, unit // 4096)
        outcome = "[green]all mapped[/green]" if r.completed else f"[red]{r.stopped_by}[/red]"
        table.add_row(size(pool), size(unit), str(r.units_needed), str(r.memslots), str(r.mappings),
                      str(r.syscalls), outcome, f"{time.perf_counter() - start:.1f} s")
    console.print(table)
    limit_mib = uapi.KVM_USER_MEM_SLOTS * 4096 / MIB
    console.print("   Each unit costs a memfd, a memslot, two conversions and an mmap (7 syscalls). "
                  "The guest, not the VMM, decides where its pool lies, so the VMM must split all "
                  "guest memory this way in advance; memslot 32764 is refused (EINVAL, "
                  f"KVM_USER_MEM_SLOTS), so at pKVM's 4 KiB granule at most {limit_mib:.0f} MiB of guest "
                  "memory can be shareable at all.")


if __name__ == "__main__":
    script_main(main, "pkvm_dma_pool")
