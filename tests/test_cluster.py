"""The search spread over a Ray cluster visits exactly what the one-process search does."""

from __future__ import annotations

import builtins
import importlib.util
import subprocess
import sys
from typing import Any

import pytest

from gmemlab.checker import Options, bundled_scenarios, check, load
from gmemlab.checker.cluster import INSTALL, ClusterExplorer, Partition, ray_module
from gmemlab.checker.engine import Engine
from gmemlab.errors import UsageError

SCENARIOS = sorted(p.stem for p in bundled_scenarios().glob("*.toml"))
HAVE_RAY = importlib.util.find_spec("ray") is not None


class _Call:
    def __init__(self, f: Any) -> None:
        self.remote = f


class _InProcess:
    """A partition called directly, as Ray would call it remotely."""

    def __init__(self, part: Partition) -> None:
        self.expand, self.known = _Call(part.expand), _Call(part.known)
        self.store, self.runs = _Call(part.store), _Call(part.runs)


def _same(a: Any, b: Any) -> None:
    assert (a.states, a.transitions, a.violated(), a.complete) == \
        (b.states, b.transitions, b.violated(), b.complete)
    assert [(c.promise, c.trace, c.stuck, c.continuation) for c in a.counterexamples] == \
        [(c.promise, c.trace, c.stuck, c.continuation) for c in b.counterexamples]
    assert a.coverage == b.coverage and a.coverage


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("options", [Options(engine="python", all_promises=True),
                                     Options(engine="python", por=False, symmetry=False,
                                             fingerprints=False, all_promises=True)],
                         ids=["reduced", "full"])
def test_partitions_visit_what_one_process_visits(name: str, options: Options) -> None:
    sc = load(name)
    for design in {sc.design, "seed-as-written"} if sc.design == "seed" else {sc.design}:
        scd = sc.with_design(design)
        one = check(scd, options=options)
        parts = [_InProcess(Partition(scd, options)) for _ in range(3)]
        spread = ClusterExplorer(Engine(scd, memo=options.memo), options, parts,
                                 lambda calls: calls).run()
        _same(spread, one)


@pytest.mark.skipif(not HAVE_RAY, reason=INSTALL)
def test_a_local_ray_cluster_agrees_with_one_process() -> None:
    sc = load("seed_default")
    one = check(sc, "seed-as-written", Options(engine="python", all_promises=True))
    for workers in (1, 2):
        spread = check(sc, "seed-as-written", Options(all_promises=True, cluster="local",
                                                      workers=workers))
        _same(spread, one)
        assert spread.engine == "cluster" and f"{workers} partitions" in spread.note


def test_without_ray_the_option_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UsageError, match=r"pip install 'gmemlab\[cluster\]'"):
        ray_module()


def test_cli_refuses_cluster_with_jobs() -> None:
    proc = subprocess.run([sys.executable, "-m", "gmemlab", "check", "seed_default", "--cluster",
                           "auto", "--jobs", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--cluster runs the Python engine" in proc.stderr
