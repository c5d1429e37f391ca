"""gmemlab's checker and SPIN on the seed family, 4 to 10 actors, in one run.

    python3 bench/check_family.py [--sizes 4-10] [--json FILE] [--no-spin]
                                  [--spin-noreduce-max 8] [--ray 1,2 --ray-max 6]
                                  [--gmemlab-src DIR] [--memory-limit GIB]

The family (bench/family/README.md): bench/family/seed_family_N.toml for
gmemlab, bench/seed_default.pml with -DACTORS=N for SPIN, each size one actor
more than the one before.  For every size, one after the other on this
machine:

* gmemlab without reductions, and with its defaults, on seed (the promises
  hold): states, transitions, search time, states/s, the bytes per state of
  its store and of the process's peak RSS, time to the verdict; with its
  defaults on seed-as-written (violated): time to the verdict;
* SPIN without reductions (-DNOREDUCE, safety: P1-P6; up to
  --spin-noreduce-max actors, as it grows fastest), with its defaults to the
  verdict (the safety run, then the fair-cycle run for P8), the same with
  -DCOLLAPSE (its compressed state store; safety run), and with its defaults
  on seed-as-written;
* optionally (--ray 1,2) gmemlab's search on a local Ray cluster with that
  many workers (its defaults, up to --ray-max actors; the RSS is the
  driver's).

Every gmemlab search runs in a process of its own (its peak RSS is its own;
--gmemlab-src runs another checkout's gmemlab, for a before/after
comparison); a search whose RSS passes --memory-limit is stopped and reported
with the states it had reached.  The load average is printed before and
after: the machine is shared.  SPIN is the Debian package `spin` (installed
with apt-get when missing, as check_vs_spin.py does).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILY = HERE / "family"
SIZES = range(4, 11)
PAN_TICK = 0.01


@dataclass
class Run:
    actors: int
    tool: str  # "gmemlab", "SPIN"
    mode: str
    design: str
    states: int = 0
    transitions: int = 0
    search: float = 0.0  # the search alone (gmemlab: P8 included; pan: its own clock)
    total: float = 0.0  # to the verdict: everything (SPIN: spin -a and gcc too)
    verdict: str = ""  # "holds", "violated", or why there is none ("out of memory", ...)
    rss: int = 0  # peak RSS of the process, bytes
    store: int = 0  # gmemlab's store at its largest / pan's "total actual memory usage", bytes
    note: str = ""

    @property
    def rate(self) -> float:
        return self.states / self.search if self.search > 0 else 0.0


def family_toml(n: int) -> Path:
    return FAMILY / f"seed_family_{n}.toml"


# --- gmemlab, one search per process ----------------------------------------------------------------------


def child(spec: dict[str, object]) -> None:
    """Run one search (in a process of its own) and print its figures as JSON."""
    from gmemlab.checker import NONE, Options, check, load

    start = time.perf_counter()  # (as check_vs_spin.py: the imports done, as SPIN's binary is built)

    options = NONE if spec["mode"] == "none" else Options()
    if spec.get("workers"):
        from dataclasses import replace

        options = replace(options, cluster="local", workers=int(str(spec["workers"])))
    sc = load(str(spec["path"])).with_design(str(spec["design"]))
    last = [time.perf_counter()]

    def progress(p: object) -> None:
        if time.perf_counter() - last[0] > 1:
            last[0] = time.perf_counter()
            print(f"progress {getattr(p, 'states', 0)}", file=sys.stderr, flush=True)

    store = 0
    if spec.get("workers"):
        v = check(sc, options=options, progress=progress)
    else:
        from gmemlab.checker.compiled import NativeExplorer, available
        from gmemlab.checker.engine import Engine

        x = NativeExplorer(Engine(sc), options, available(), progress)
        v = x.run()
        store = int(getattr(x, "store_bytes", 0))
    total = time.perf_counter() - start
    print(json.dumps({"states": v.states, "transitions": v.transitions, "search": v.seconds, "total": total,
                      "verdict": "holds" if v.holds else "violated" if v.counterexamples else "incomplete",
                      "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "store": store,
                      "engine": v.engine}), flush=True)


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gmemlab_run(n: int, mode: str, design: str, src: str, limit: int, workers: int = 0) -> Run:
    spec = {"path": str(family_toml(n)), "mode": mode, "design": design, "workers": workers}
    env = {**os.environ, "PYTHONPATH": src}
    label = {"none": "no reduction", "default": "default reductions"}[mode]
    if workers:
        label += f", Ray {workers} worker{'s' if workers > 1 else ''}"
    run = Run(n, "gmemlab", label, design)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    states = [0]
    peak = [0]
    killed = [False]
    said: list[str] = []

    def watch() -> None:  # the last progress report, and what went wrong
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("progress "):
                states[0] = int(line.split()[1])
            elif line.strip():
                said[:] = [*said[-4:], line.strip()]

    def guard() -> None:
        while proc.poll() is None:
            r = rss_of(proc.pid)
            peak[0] = max(peak[0], r)
            if limit and r > limit:
                killed[0] = True
                proc.kill()
                return
            time.sleep(0.1)

    threads = [threading.Thread(target=watch, daemon=True), threading.Thread(target=guard, daemon=True)]
    for t in threads:
        t.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait()
    for t in threads:
        t.join(timeout=5)
    if killed[0] or proc.returncode:
        run.total = time.perf_counter() - start
        run.states = states[0]
        run.rss = peak[0]
        run.verdict = f"over {limit / 2**30:.0f} GiB" if killed[0] else f"failed ({proc.returncode})"
        run.note = f"stopped at {states[0]:,} states or more" if killed[0] else " / ".join(said)
        return run
    figures = json.loads(out.strip().splitlines()[-1])
    run.states, run.transitions = figures["states"], figures["transitions"]
    run.search, run.total, run.verdict = figures["search"], figures["total"], figures["verdict"]
    run.rss, run.store = figures["rss"], figures["store"]
    if figures["engine"] != "c" and not workers:
        run.note = f"engine {figures['engine']}"
    return run


# --- SPIN ---------------------------------------------------------------------------------------------------


def pan_run(spin: str, work: Path, n: int, defines: list[str], cflags: list[str],
            args: list[str]) -> dict[str, float]:
    """spin -a, gcc -O2, pan: pan's figures, its own search time, its peak RSS,
    and the time of all three."""
    start = time.perf_counter()
    subprocess.run([spin, "-a", f"-DACTORS={n}", *defines, "seed_default.pml"], cwd=work, check=True,
                   capture_output=True)
    subprocess.run(["gcc", "-O2", *cflags, "-o", "pan", "pan.c"], cwd=work, check=True, capture_output=True)
    with open(work / "pan.out", "w") as out:
        proc = subprocess.Popen(["./pan", "-m100000", *args], cwd=work, stdout=out, stderr=subprocess.STDOUT)
        _, _, usage = os.wait4(proc.pid, 0)
    total = time.perf_counter() - start
    text = (work / "pan.out").read_text()

    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else -1.0

    m = re.search(r"elapsed time ([\d.e+-]+) seconds", text)
    return {"states": num(r"([\d.e+]+) states, stored"), "transitions": num(r"([\d.e+]+) transitions"),
            "errors": num(r"errors: (\d+)"), "memory": num(r"([\d.]+)\s+total actual memory usage") * 2**20,
            "search": max(float(m.group(1)) if m else total, PAN_TICK), "rss": usage.ru_maxrss * 1024,
            "total": total}


def nfair(n: int) -> str:
    # weak fairness over the actors and init: pan's default NFAIR=2 holds too
    # few processes for these sizes
    return "-DNFAIR=3" if n <= 8 else "-DNFAIR=4"


def spin_runs(spin: str, n: int, noreduce_max: int) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(HERE / "seed_default.pml", work / "seed_default.pml")

        def row(mode: str, design: str, f: dict[str, float]) -> Run:
            return Run(n, "SPIN", mode, design, int(f["states"]), int(f["transitions"]), f["search"],
                       f["total"], "violated" if f["errors"] else "holds", int(f["rss"]), int(f["memory"]))

        if n <= noreduce_max:
            f = pan_run(spin, work, n, [], ["-DSAFETY", "-DNOCLAIM", "-DNOREDUCE"], [])
            runs.append(row("no reduction (-DNOREDUCE, P1-P6)", "seed", f))
        f = pan_run(spin, work, n, [], ["-DSAFETY", "-DNOCLAIM"], [])
        run = row("default (P1-P6, then P8 with -a -f)", "seed", f)
        if not f["errors"]:
            g = pan_run(spin, work, n, ["-DONLY_P=8"], [nfair(n)], ["-a", "-f"])
            p8 = row("", "", g)
            run.states += p8.states
            run.transitions += p8.transitions
            run.search += p8.search
            run.total += p8.total
            run.verdict = p8.verdict
            run.rss = max(run.rss, p8.rss)
            run.store = max(run.store, p8.store)
            run.note = f"safety {int(f['states']):,} states, P8 {p8.states:,}"
        runs.append(run)
        f = pan_run(spin, work, n, [], ["-DSAFETY", "-DNOCLAIM", "-DCOLLAPSE"], [])
        runs.append(row("default, -DCOLLAPSE (P1-P6)", "seed", f))
        f = pan_run(spin, work, n, ["-DAS_WRITTEN"], ["-DSAFETY", "-DNOCLAIM"], [])
        runs.append(row("default", "seed-as-written", f))
    return runs


# --- the report ---------------------------------------------------------------------------------------------


def per_state(total: int, states: int) -> str:
    return f"{total / states:,.0f}" if total and states else "-"


def rate(r: Run) -> str:
    # (a search that stops at the first violation does different amounts of
    # work in the two tools: no rate compared)
    return f"{r.rate:,.0f}" if r.verdict == "holds" and r.search >= 10 * PAN_TICK else "-"


def show(runs: list[Run]) -> None:
    print(f"{'n':>2} {'tool':7} {'mode':38} {'design':15} {'states':>12} {'transitions':>13} {'search s':>9} "
          f"{'states/s':>10} {'store B/st':>10} {'RSS B/st':>9} {'RSS MB':>7} {'verdict s':>9}  verdict")
    for r in runs:
        print(f"{r.actors:>2} {r.tool:7} {r.mode:38} {r.design:15} {r.states:>12,} {r.transitions:>13,} "
              f"{r.search:>9.2f} {rate(r):>10} {per_state(r.store, r.states):>10} "
              f"{per_state(r.rss, r.states):>9} {r.rss / 2**20:>7,.0f} {r.total:>9.2f}  {r.verdict}"
              + (f" ({r.note})" if r.note else ""))
    print("(store: gmemlab's state store at its largest; SPIN's \"total actual memory usage\".  "
          "RSS: the process's peak, everything included.)")
    print()
    print("growth per added actor (states, and time to the verdict):")
    keys = sorted({(r.tool, r.mode, r.design) for r in runs}, key=str)
    for key in keys:
        rows = sorted((r for r in runs if (r.tool, r.mode, r.design) == key and r.transitions),
                      key=lambda r: r.actors)
        steps = [f"{b.actors}: x{b.states / a.states:.1f} states, x{b.total / a.total:.1f} time"
                 for a, b in itertools.pairwise(rows) if b.actors == a.actors + 1 and a.states and a.total]
        if steps:
            print(f"  {key[0]} {key[1]} ({key[2]}): " + "; ".join(steps))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def parse_sizes(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    bad = [n for n in out if n not in SIZES]
    if bad:
        raise SystemExit(f"check_family: no family member with {bad[0]} actors (4 to 10)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4-10", help="actor counts, e.g. 4-10 or 8,9")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--no-spin", action="store_true", help="gmemlab only")
    parser.add_argument("--no-gmemlab", action="store_true", help="SPIN only")
    parser.add_argument("--spin-noreduce-max", type=int, default=8,
                        help="SPIN without reduction up to this many actors (default 8)")
    parser.add_argument("--ray", default="",
                        help="also search on a local Ray cluster with these worker counts, e.g. 1,2")
    parser.add_argument("--ray-max", type=int, default=6,
                        help="Ray searches up to this many actors (default 6)")
    parser.add_argument("--gmemlab-src", default=str(HERE.parent / "src"),
                        help="the gmemlab sources to run (default: this checkout's)")
    parser.add_argument("--memory-limit", type=float, default=16,
                        help="stop a gmemlab search whose RSS passes this many GiB (default 16)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    sizes = parse_sizes(args.sizes)
    limit = int(args.memory_limit * 2**30)
    spin = ""
    if not args.no_spin:
        sys.path.insert(0, str(HERE))
        from check_vs_spin import ensure_spin

        spin = ensure_spin()
    version = subprocess.run([spin, "-V"], capture_output=True, text=True).stdout.strip() if spin else "-"
    print(f"gmemlab from {args.gmemlab_src}; SPIN: {version}; gcc -O2; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs; load average {load_average()}", flush=True)
    runs: list[Run] = []
    workers = [int(w) for w in args.ray.split(",") if w]
    for n in sizes:
        batch: list[Run] = []
        if not args.no_gmemlab:
            batch.append(gmemlab_run(n, "none", "seed", args.gmemlab_src, limit))
            batch.append(gmemlab_run(n, "default", "seed", args.gmemlab_src, limit))
            batch.append(gmemlab_run(n, "default", "seed-as-written", args.gmemlab_src, limit))
            for w in workers if n <= args.ray_max else []:
                batch.append(gmemlab_run(n, "default", "seed", args.gmemlab_src, limit, workers=w))
        if spin:
            batch += spin_runs(spin, n, args.spin_noreduce_max)
        for r in batch:
            print(f"  {r.actors} actors: {r.tool} {r.mode} ({r.design}): {r.states:,} states, "
                  f"{r.total:.1f} s, {r.verdict}", flush=True)
        runs += batch
    print(f"load average after: {load_average()}")
    print()
    show(runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load_average(), "src": args.gmemlab_src,
                                               "runs": [asdict(r) | {"rate": r.rate} for r in runs]},
                                              indent=2) + "\n")


if __name__ == "__main__":
    if "--child" in sys.argv:
        main()
    else:
        from gmemlab.errors import script_main

        script_main(main, "check_family")
