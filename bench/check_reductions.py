"""The checker's reductions and processes, side by side on the same scenarios.

    python3 bench/check_reductions.py [--large]

For each scenario and design: the full search (no reduction), each reduction
alone, all of them (the default; the compiled core explores), the same on the
Python engine, and the default with 2 processes (Python workers): states,
transitions, seconds, states/s and the verdict (which must not change).
--large adds bench/seed_large.toml (about 100,000 states; a minute or two).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gmemlab.checker import Options, check, load
from gmemlab.errors import script_main

HERE = Path(__file__).resolve().parent
MODES = {
    "none": Options(fingerprints=False, symmetry=False, por=False),
    "fingerprints": Options(fingerprints=True, symmetry=False, por=False),
    "symmetry": Options(fingerprints=False, symmetry=True, por=False),
    "partial-order": Options(fingerprints=False, symmetry=False, por=True),
    "all (default)": Options(),
    "all, Python engine": Options(engine="python"),
    "all, --jobs 2": Options(jobs=2),
    "none, no memo": Options(fingerprints=False, symmetry=False, por=False, memo=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="also the larger scenario")
    args = parser.parse_args()
    runs = [("seed_default", "seed"), ("seed_default", "seed-as-written"), ("seed_two_vcpus", "seed")]
    if args.large:
        runs.append((str(HERE / "seed_large.toml"), "seed"))
    print(f"{'scenario':16} {'design':16} {'mode':19} {'states':>8} {'transitions':>11} {'seconds':>8} "
          f"{'states/s':>9} {'wall s':>7}  verdict")
    for name, design in runs:
        sc = load(name)
        check(sc, design)  # warm: imports, caches
        for mode, options in MODES.items():
            if mode == "none, no memo" and sc.name == "seed_large":
                continue  # several minutes
            opts = Options(**{**options.__dict__, "all_promises": True})
            start = time.perf_counter()
            v = check(sc, design, opts)
            wall = time.perf_counter() - start
            verdict = "holds" if v.holds else "violates " + ",".join(v.violated())
            print(f"{sc.name:16} {design:16} {mode:19} {v.states:>8,} {v.transitions:>11,} {v.seconds:>8.2f} "
                  f"{v.states / v.seconds:>9,.0f} {wall:>7.2f}  {verdict}", flush=True)


if __name__ == "__main__":
    script_main(main, "check_reductions")
