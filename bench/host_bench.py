"""The host kernel side by side with C: vCPU exits, and bulk guest-memory copies.

Run:  python3 bench/host_bench.py [--reps 5] [--exits 200000] [--json FILE]

Compiles bench/host_baseline.c with the system compiler (cc/gcc) into
bench/out/, then alternates the C baseline and gmemlab `reps` times and
reports medians (min-max):

1. exits/s: the same real-mode guest (gmemlab/vmm/guests/outloop.s, an
   endless `out`), KVM_RUN in a loop, every exit checked to be KVM_EXIT_IO on
   the guest's port.  gmemlab: Vcpu.run() under a deadline, each exit decoded
   into an IoExit.  Target: >= 0.7x the C rate.
2. GB/s: a 256 MiB guest_memfd mapping (MMAP|INIT_SHARED, prefaulted; a memfd
   on a kernel whose guest_memfd cannot be mapped, and the output says so),
   written and read in chunks of 1, 16 and 256 MiB at successive offsets.  gmemlab:
   HostKernel.write_mem / read_mem (the interface's checks included); C:
   memcpy.  read_mem returns new bytes, so its baseline is memcpy into a
   freshly malloc'ed buffer; memcpy into one reused buffer is shown too.
   Target: >= 0.9x memcpy for copies of 1 MiB and larger.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gmemlab.errors import UsageError, script_main
from gmemlab.host import HostKernel, probe
from gmemlab.vmm import IoExit, Machine, Regs, asm, modes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
REGION = 256 << 20
SIZES = (1 << 20, 16 << 20, 256 << 20)
MIB = 1 << 20


def build() -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise UsageError("no C compiler (cc or gcc) found: install gcc")
    OUT.mkdir(parents=True, exist_ok=True)
    binary = OUT / "host_baseline"
    proc = subprocess.run([cc, "-O2", "-Wall", "-o", str(binary),
                           str(ROOT / "bench" / "host_baseline.c")], capture_output=True, text=True)
    if proc.returncode:
        raise UsageError(f"cannot build the C baseline: {proc.stderr.strip()}")
    return binary


def c_run(binary: Path, *args: object) -> dict[str, Any]:
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        raise UsageError(f"the C baseline failed: {proc.stderr.strip() or proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def py_exits(code: bytes, n: int) -> float:
    with Machine() as m:
        mem = m.add_memory(0, 0x10000)
        mem.write(0, code)
        cpu = m.create_vcpu()
        cpu.set_sregs(modes.real_mode(cpu.get_sregs(), 0))
        cpu.set_regs(Regs(rip=0))
        port = None
        with cpu.deadline(120):
            start = time.perf_counter()
            for _ in range(n):
                exit = cpu.run()
                if not isinstance(exit, IoExit):
                    raise SystemExit(f"host_bench: unexpected exit {exit!r}")
                if port is None:
                    port = exit.port
                elif exit.port != port:
                    raise SystemExit(f"host_bench: exit on port {exit.port}")
            elapsed = time.perf_counter() - start
    return n / elapsed


def py_copy(size: int, sweeps: int, gmem: bool) -> dict[str, float]:
    with HostKernel() as k:
        vm = k.create_vm(0)
        if gmem:
            f = k.create_guest_memfd(vm, REGION, 3)
        else:
            f = k.memfd_create("host_bench", 0)
            k.ftruncate(f, REGION)
        a = k.mmap(f, REGION, 3, 1)
        k.write_mem(a, fill=1, length=REGION)
        src = b"\x5a" * size
        offsets = [a + off for off in range(0, REGION - size + 1, size)]
        start = time.perf_counter()
        for _ in range(sweeps):
            for addr in offsets:
                k.write_mem(addr, src)
        write = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(sweeps):
            for addr in offsets:
                k.read_mem(addr, size)
        read = time.perf_counter() - start
    total = REGION * sweeps
    return {"write_gbps": total / write / 1e9, "read_gbps": total / read / 1e9}


def stat(values: list[float]) -> str:
    med = statistics.median(values)
    unit = 1e3 if med > 1e4 else 1
    suffix = " k" if unit == 1e3 else ""
    return f"{med / unit:.1f}{suffix} ({min(values) / unit:.1f}-{max(values) / unit:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--exits", type=int, default=200_000)
    parser.add_argument("--sweeps", type=int, default=4, help="passes over the region per measurement")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args()
    prof = probe.profile()
    missing = prof.kvm_missing or asm.missing_reason()
    if missing:
        raise UsageError(f"needs /dev/kvm and GNU as: {missing}")
    gmem = bool(prof.gmem_flags & 1)
    backing = "guest_memfd" if gmem else "memfd (this kernel's guest_memfd cannot be mapped)"
    binary = build()
    guest = asm.load("outloop")
    guest_bin = OUT / "outloop.bin"
    guest_bin.write_bytes(guest.code)

    raw: dict[str, Any] = {"exits": {"c": [], "gmemlab": []},
                           "copy": {str(s): {"c": [], "gmemlab": []} for s in SIZES}}
    for rep in range(args.reps):
        raw["exits"]["c"].append(c_run(binary, "exits", guest_bin, args.exits)["exits_per_s"])
        raw["exits"]["gmemlab"].append(py_exits(guest.code, args.exits))
        for size in SIZES:
            raw["copy"][str(size)]["c"].append(c_run(binary, "copy", REGION, size, args.sweeps,
                                                     "gmem" if gmem else "memfd"))
            raw["copy"][str(size)]["gmemlab"].append(py_copy(size, args.sweeps, gmem))
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)

    print(f"machine: {platform.node()}, Linux {platform.release()}, Python {platform.python_version()}")
    print(prof.line())
    c_exits, py = raw["exits"]["c"], raw["exits"]["gmemlab"]
    ratio = statistics.median(py) / statistics.median(c_exits)
    print("\nexits/s (real-mode out loop, every exit KVM_EXIT_IO)")
    print(f"  C loop        {stat(c_exits)}")
    print(f"  gmemlab Vcpu  {stat(py)}")
    print(f"  ratio {ratio:.2f}  (target >= 0.70: {'met' if ratio >= 0.7 else 'NOT met'})")
    print(f"\nGB/s through a 256 MiB mapping of a {backing}, chunks at successive offsets")
    print(f"  {'chunk':>7}  {'memcpy write':>20}  {'write_mem':>20}  ratio   "
          f"{'memcpy+malloc read':>20}  {'read_mem':>20}  ratio   {'memcpy read (reused buffer)':>20}")
    verdict = True
    for size in SIZES:
        c = raw["copy"][str(size)]["c"]
        g = raw["copy"][str(size)]["gmemlab"]
        cw, gw = [x["write_gbps"] for x in c], [x["write_gbps"] for x in g]
        cra, gr = [x["read_alloc_gbps"] for x in c], [x["read_gbps"] for x in g]
        cr = [x["read_gbps"] for x in c]
        rw = statistics.median(gw) / statistics.median(cw)
        rr = statistics.median(gr) / statistics.median(cra)
        verdict = verdict and rw >= 0.9 and rr >= 0.9
        print(f"  {size // MIB:>4} MiB  {stat(cw):>20}  {stat(gw):>20}  {rw:.2f}    "
              f"{stat(cra):>20}  {stat(gr):>20}  {rr:.2f}    {stat(cr):>20}")
    print(f"  copy target >= 0.90x for every size: {'met' if verdict else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    script_main(main, "host_bench")
