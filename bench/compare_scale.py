"""Counting costs operations, not pages: every bundled workload at 1 GiB and 1 TiB.

Run:  python3 bench/compare_scale.py [--workloads a,b] [--json FILE]

For each bundled workload (workloads/*.toml) at its default parameters, with
guest memory set to 1 GiB and then to 1 TiB, counts the workload under every
design of the model (gmemlab.compare.counting.count, one process, the
designs one after the other) and prints the wall time, the requests and the
model calls made.  The two sizes must cost the same: nothing in counting is
per page of guest memory.  fragment runs until vm.max_map_count stops
page-mmap and kvm-map, so its cost is set by that limit (about 70,000
requests), at either size.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gmemlab.compare import counting, workloads
from gmemlab.model.designs import DESIGNS

SIZES = ("1G", "1T")


def measure(name: str, memory: str) -> dict[str, Any]:
    w = workloads.load(name)
    resolved = w.resolve({"memory": memory})
    per_design = {}
    start = time.perf_counter()
    for design in DESIGNS:
        t = time.perf_counter()
        run = counting.count(resolved, design)
        per_design[design] = {"seconds": time.perf_counter() - t, "ran": run.ran,
                              "requests": len(run.requests), "events": dict(run.total())}
    total = time.perf_counter() - start
    return {"workload": name, "memory": memory, "seconds": total, "designs": per_design,
            "requests": sum(d["requests"] for d in per_design.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workloads", help="comma-separated (default: every bundled one)")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    names = args.workloads.split(",") if args.workloads else workloads.bundled_names()
    print(f"machine: {platform.node()}, Python {platform.python_version()}; "
          f"{len(DESIGNS)} designs each")
    print(f"{'workload':12} {'memory':>6} {'seconds':>8} {'requests':>9} {'µs/request':>10}  "
          "same counts at both sizes")
    results = []
    for name in names:
        pair = [measure(name, size) for size in SIZES]
        same = all(pair[0]["designs"][d]["events"] == pair[1]["designs"][d]["events"]
                   for d in DESIGNS) if name not in ("balloon", "snapshot") else "n/a (sizes differ)"
        for r in pair:
            per = r["seconds"] / r["requests"] * 1e6 if r["requests"] else 0.0
            print(f"{name:12} {r['memory']:>6} {r['seconds']:8.2f} {r['requests']:9,} "
                  f"{per:10.0f}  {same if r is pair[1] else ''}", flush=True)
        results.extend(pair)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
