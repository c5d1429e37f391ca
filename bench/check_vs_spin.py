"""gmemlab's checker against SPIN on the default seed scenario, in one run.

    python3 bench/check_vs_spin.py [--json FILE]

The scenario scenarios/seed_default.toml is written by hand in Promela
(bench/seed_default.pml, one atomic block per model step); so is its larger
variant bench/seed_large.toml (the same file with -DLARGE), on which both
tools search long enough for their states/s to be measured (on the default
scenario pan finishes within one tick of its clock).  For each scenario and
design (seed, seed-as-written) both tools are run:

* without reductions (gmemlab: no fingerprints, symmetry or partial order,
  with its compiled core and with the Python engine; SPIN: -DNOREDUCE):
  states, transitions, time, states/s (the fastest of three runs each);
* with their defaults, stopping at the first violation: time to verdict
  (SPIN: spin -a, gcc -O2 and pan, then the P8 run when the safety run passes;
  gmemlab: building the scenario and exploring);
* promise by promise (gmemlab --all; SPIN: one run per promise, -DONLY_P=n,
  and the fair-cycle run for P8): the verdicts must be the same.

SPIN is the Debian package `spin`; the script installs it with apt-get when it
is missing (as root), and says so when it cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gmemlab.checker import NONE, Options, check, load
from gmemlab.errors import script_main

HERE = Path(__file__).resolve().parent
PML = HERE / "seed_default.pml"
DESIGNS = ("seed", "seed-as-written")
# scenario for gmemlab -> Promela defines of the same scenario
SCENARIOS = {"seed_default": [], str(HERE / "seed_large.toml"): ["-DLARGE"]}


def short(scenario: str) -> str:
    return Path(scenario).stem
SAFETY = ("P1", "P2", "P3", "P4", "P5", "P6")
REPEAT = 3  # searches without reduction, both tools: the fastest of this many runs
# P8 is the fair-cycle search alone (-DONLY_P=8 keeps no assertion); weak
# fairness over the 7 processes of the large variant needs NFAIR=3.
FAIR = ["-DNFAIR=3"]


@dataclass
class Run:
    tool: str
    scenario: str
    design: str
    mode: str
    states: int
    transitions: int
    seconds: float  # searching only (pan's own "elapsed time"; gmemlab's search)
    total: float  # to the verdict, everything included
    verdict: str
    wall: float = 0.0  # pan: the process, start-up (allocating its hash table) included
    # pan: a search too short for its clock timed by the wall clock instead: the
    # fastest run with a small hash table (-w16), less a process start
    estimate: float = 0.0

    @property
    def rate(self) -> float:
        return self.states / self.seconds if self.seconds else float("inf")


@dataclass
class Report:
    runs: list[Run] = field(default_factory=list)
    # (scenario, design) -> tool -> promise -> verdict
    verdicts: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)


def ensure_spin() -> str:
    spin = shutil.which("spin")
    if spin:
        return spin
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing spin (apt-get install spin) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "spin"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spin = shutil.which("spin")
        if spin:
            return spin
        subprocess.run(["apt-get", "update"], env=env, check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "spin"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spin = shutil.which("spin")
        if spin:
            return spin
    sys.exit("bench: SPIN is not installed and cannot be installed here: "
             "run `apt-get install spin` as root (Debian package spin)")


PAN_TICK = 0.01  # pan reports its elapsed time in hundredths of a second
MEASURABLE = 10 * PAN_TICK  # a search shorter than this has no states/s worth comparing


def pan(spin: str, workdir: Path, defines: list[str], cflags: list[str],
        args: list[str], repeat: int = 1) -> tuple[dict[str, int], float, float, float]:
    """spin -a, gcc, pan: the figures pan prints, pan's own search time (at
    least one tick when it says 0), the pan process's wall time, the total
    (compiling and one run).  With repeat > 1 pan runs that many times and the
    fastest run's times are taken."""
    start = time.perf_counter()
    subprocess.run([spin, "-a", *defines, PML.name], cwd=workdir, check=True, capture_output=True)
    subprocess.run(["gcc", "-O2", *cflags, "-o", "pan", "pan.c"], cwd=workdir, check=True,
                   capture_output=True)
    compiled = time.perf_counter() - start
    best: tuple[float, float] | None = None
    for _ in range(repeat):
        run_start = time.perf_counter()
        out = subprocess.run(["./pan", *args], cwd=workdir, capture_output=True, text=True).stdout
        wall = time.perf_counter() - run_start
        m = re.search(r"elapsed time ([\d.e+-]+) seconds", out)
        search = max(float(m.group(1)) if m else wall, PAN_TICK)
        if best is None or search < best[0]:
            best = (search, wall)
    assert best is not None
    figures = {
        "states": _int(r"(\d+) states, stored", out),
        "transitions": _int(r"(\d+) transitions", out),
        "errors": _int(r"errors: (\d+)", out),
    }
    return figures, best[0], best[1], compiled + best[1]


def wall_clock_search(workdir: Path) -> float:
    """The ./pan just built, timed from outside: its fastest of 10 runs with a
    2^16-slot hash table (the default 2^24 slots take 0.08 s to allocate), less
    the fastest start of a process that does nothing."""
    def fastest(argv: list[str]) -> float:
        best = float("inf")
        for _ in range(10):
            t = time.perf_counter()
            subprocess.run(argv, cwd=workdir, capture_output=True)
            best = min(best, time.perf_counter() - t)
        return best

    return max(fastest(["./pan", "-w16"]) - fastest([shutil.which("true") or "/bin/true"]), 1e-4)


def _verdict(errors: int | bool) -> str:
    return "violated" if errors else "holds"


def _int(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else -1


def spin_runs(spin: str, report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(PML, work / PML.name)
        for scenario, size in SCENARIOS.items():
            for design in DESIGNS:
                name = short(scenario)
                flag = [*size, *(["-DAS_WRITTEN"] if design == "seed-as-written" else [])]
                # Without reduction, safety promises only (P8 needs a fair-cycle search).
                f, secs, wall, total = pan(spin, work, flag, ["-DSAFETY", "-DNOCLAIM", "-DNOREDUCE"], [],
                                           repeat=REPEAT)
                run = Run("SPIN", name, design, "no reduction (P1-P6)", f["states"], f["transitions"], secs,
                          total, _verdict(f["errors"]), wall)
                if secs < MEASURABLE:
                    run.estimate = wall_clock_search(work)
                report.runs.append(run)
                # With SPIN's default (partial-order) reduction, to the verdict: the
                # safety run, then (if it passes) the fair-cycle run for P8.
                f, secs, wall, total = pan(spin, work, flag, ["-DSAFETY", "-DNOCLAIM"], [])
                states, transitions, verdict = f["states"], f["transitions"], _verdict(f["errors"])
                if not f["errors"]:
                    g, s2, w2, t2 = pan(spin, work, [*flag, "-DONLY_P=8"], FAIR, ["-a", "-f"])
                    secs, wall, total = secs + s2, wall + w2, total + t2
                    states, transitions = states + g["states"], transitions + g["transitions"]
                    verdict = _verdict(g["errors"])
                report.runs.append(Run("SPIN", name, design, "default, to the verdict", states, transitions,
                                       secs, total, verdict, wall))
                per: dict[str, str] = {}
                for n, promise in enumerate(SAFETY, 1):
                    f, *_ = pan(spin, work, [*flag, f"-DONLY_P={n}"], ["-DSAFETY", "-DNOCLAIM"], [])
                    per[promise] = _verdict(f["errors"])
                f, *_ = pan(spin, work, [*flag, "-DONLY_P=8"], FAIR, ["-a", "-f"])
                per["P8"] = _verdict(f["errors"])
                report.verdicts.setdefault(f"{name} {design}", {})["SPIN"] = per


def gmemlab_runs(report: Report) -> None:
    plain = Options(fingerprints=False, symmetry=False, por=False)
    for scenario in SCENARIOS:
        name = short(scenario)
        for design in DESIGNS:
            check(load(scenario), design, NONE)  # imports and caches warm, as SPIN's binary is
            for mode, engine in (("no reduction (P1-P8)", "auto"), ("no reduction, Python engine", "python")):
                runs = []
                for _ in range(REPEAT):
                    start = time.perf_counter()
                    v = check(load(scenario), design, replace(plain, engine=engine))
                    runs.append((v.seconds, time.perf_counter() - start, v))
                secs, total, v = min(runs, key=lambda run: run[0])
                report.runs.append(Run("gmemlab", name, design, mode, v.states, v.transitions,
                                       secs, total, _verdict(not v.holds)))
            start = time.perf_counter()
            v = check(load(scenario), design)
            total = time.perf_counter() - start
            report.runs.append(Run("gmemlab", name, design, "default, to the verdict", v.states,
                                   v.transitions,
                                   v.seconds, total, _verdict(not v.holds)))
            every = check(load(scenario), design, Options(all_promises=True))
            broken = set(every.violated())
            report.verdicts.setdefault(f"{name} {design}", {})["gmemlab"] = {
                p: "violated" if p in broken else "holds" for p in (*SAFETY, "P8")}


def show(report: Report) -> bool:
    print(f"{'tool':8} {'scenario':13} {'design':16} {'mode':28} {'states':>8} {'transitions':>11} "
          f"{'search s':>9} {'states/s':>10} {'pan wall s':>10} {'verdict s':>9}  verdict")
    for r in report.runs:
        wall = f"{r.wall:>10.3f}" if r.tool == "SPIN" else f"{'':>10}"
        print(f"{r.tool:8} {r.scenario:13} {r.design:16} {r.mode:28} {r.states:>8,} {r.transitions:>11,} "
              f"{r.seconds:>9.3f} {r.rate:>10,.0f} {wall} {r.total:>9.3f}  {r.verdict}")
    print("(SPIN's search time is pan's own, in ticks of 0.01 s: at least one tick; the pan process "
          "also spends its wall time allocating its hash table)")
    print()
    same = True
    for key, tools in report.verdicts.items():
        g, s = tools["gmemlab"], tools["SPIN"]
        line = " ".join(f"{p}:{'ok' if g[p] == 'holds' else 'X'}" + ("" if g[p] == s[p] else "(SPIN: not!)")
                        for p in g)
        same &= g == s
        print(f"verdicts on {key:30} {line}   ({'same as SPIN' if g == s else 'DIFFERENT from SPIN'})")
    print()

    def find(tool: str, scenario: str, design: str, mode: str) -> Run:
        return next(r for r in report.runs
                    if (r.tool, r.scenario, r.design) == (tool, scenario, design) and r.mode.startswith(mode))

    for scenario in map(short, SCENARIOS):
        for design in DESIGNS:
            g0 = find("gmemlab", scenario, design, "no reduction (")
            s0 = find("SPIN", scenario, design, "no red")
            g1, s1 = find("gmemlab", scenario, design, "default"), find("SPIN", scenario, design, "default")
            if "violated" in (g0.verdict, s0.verdict):
                rate = (f"both searches stop at the first violation ({g0.states:,} and {s0.states:,} "
                        "states): no rate compared")
            elif s0.seconds < MEASURABLE and s0.estimate:
                spin_rate = s0.states / s0.estimate
                rate_ok = "met" if g0.rate >= spin_rate / 4 else "NOT met"
                rate = (f"states/s without reductions {g0.rate:,.0f} vs SPIN about {spin_rate:,.0f} "
                        f"(by the wall clock: {s0.estimate * 1000:.1f} ms; pan's own clock read "
                        f"{s0.seconds / PAN_TICK:.0f} tick(s)) ({g0.rate / spin_rate:.2f} of SPIN's; "
                        f"target >= 0.25: {rate_ok})")
            else:
                rate_ok = "met" if g0.rate >= s0.rate / 4 else "NOT met"
                rate = (f"states/s without reductions {g0.rate:,.0f} vs SPIN {s0.rate:,.0f} "
                        f"({g0.rate / s0.rate:.2f} of SPIN's; target >= 0.25: {rate_ok})")
            time_ok = "met" if g1.total <= 2 * s1.total else "NOT met"
            print(f"{scenario} {design}: {rate}; time to verdict {g1.total:.2f} s vs SPIN {s1.total:.2f} s "
                  f"(target <= 2x SPIN: {time_ok})")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    spin = ensure_spin()
    report = Report()
    print(f"SPIN: {subprocess.run([spin, '-V'], capture_output=True, text=True).stdout.strip()}; "
          f"gcc -O2; python {sys.version.split()[0]}", flush=True)
    gmemlab_runs(report)
    spin_runs(spin, report)
    same = show(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": [asdict(r) | {"rate": r.rate} for r in report.runs],
                                               "verdicts": report.verdicts}, indent=2) + "\n")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    script_main(main, "check_vs_spin")
