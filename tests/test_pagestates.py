"""Each design's page state machine is the model's: the drawings in docs/ are what
exploring the model gives now, they render, and they say what the designs do."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gmemlab.checker.mutations import UnmapNeverDestroys
from gmemlab.cli import app
from gmemlab.diagrams import dot_source, render
from gmemlab.model.designs import DESIGNS, SEED, VARIANTS
from gmemlab.model.pagestates import HYPERVISOR, FileMachine, names, page_states
from gmemlab.model.statespace import MAX_STATES, PageStates, Transition, explore

from .sysdeps import ensure

ROOT = Path(__file__).resolve().parents[1]
STATES = ROOT / "docs" / "img" / "states"
REDRAW = "PYTHONPATH=src python3 -m gmemlab draw states all -o docs/img/states"
SVG = "{http://www.w3.org/2000/svg}"


@cache
def machine(name: str) -> PageStates:
    return page_states(name)


def _state(ps: PageStates, *facts: str, without: tuple[str, ...] = ()) -> list[int]:
    """The states that have every fact given and none of `without`."""
    return [i for i, s in enumerate(ps.states)
            if all(f in s.facts for f in facts) and not any(f in s.facts for f in without)]


def _from(ps: PageStates, states: list[int], move: str) -> list[Transition]:
    return [t for t in ps.transitions if t.src in states and t.move == move]


def test_every_design_variant_and_the_hypervisor_has_a_machine() -> None:
    assert names() == [*DESIGNS, *VARIANTS, HYPERVISOR]
    assert sorted(p.stem for p in STATES.glob("*.dot")) == sorted(names()), \
        f"docs/img/states holds drawings of machines that do not exist, or lacks some: {REDRAW}"


def test_designs_md_shows_every_drawing() -> None:
    text = (ROOT / "docs" / "DESIGNS.md").read_text()
    for name in names():
        assert f"](img/states/{name}.svg)" in text, name
        assert (STATES / f"{name}.svg").is_file(), REDRAW


@pytest.mark.parametrize("name", names())
def test_the_committed_dot_is_what_the_model_gives_now(name: str) -> None:
    committed = (STATES / f"{name}.dot").read_text()
    assert committed == dot_source(machine(name)), (
        f"the model's page states of {name} changed: redraw the diagrams with `{REDRAW}`, look at "
        "what changed, and say so in docs/DESIGNS.md")


@pytest.mark.parametrize("name", names())
def test_every_drawing_is_small_and_connected(name: str) -> None:
    ps = machine(name)
    assert 2 <= len(ps.states) <= MAX_STATES
    reached = {s.state for s in ps.starts}
    while True:
        more = {t.dst for t in ps.transitions if t.src in reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(range(len(ps.states)))  # every drawn state is reachable from a start


def test_the_svgs_render_and_show_the_states_of_today() -> None:
    dot, why = ensure("dot", "graphviz")
    if dot is None:
        pytest.skip(why)
    for name in names():
        ps = machine(name)
        drawn = ET.fromstring(render(dot_source(ps), "svg"))
        committed = ET.fromstring((STATES / f"{name}.svg").read_bytes())
        for svg in (drawn, committed):
            texts = {"".join(t.itertext()) for t in svg.iter(f"{SVG}text")}
            for state in ps.states:
                assert set(state.facts) <= texts, (name, state.facts, REDRAW)
            assert f"Drawn from the model by: gmemlab draw states {name}" in texts


# --- what the drawings say -------------------------------------------------------------------------------


def test_seed_refuses_conversions_while_mapped_and_destroys_a_referenced_file() -> None:
    ps = machine("seed")
    mapped = _state(ps, "mapped")
    assert mapped and all(ps.states[i].facts[0] == "shared" for i in mapped)
    refused = _from(ps, mapped, "to private")
    assert refused and {t.refused for t in refused} == {"EBUSY"} and all(t.src == t.dst for t in refused)
    assert {t.refused for t in _from(ps, mapped, "get_pfn")} == {"EBUSY"}
    assert {t.refused for t in _from(ps, _state(ps, "private", without=("file destroyed",)),
                                     "mmap whole file")} == {"EPERM"}
    # Unmapping with a reference out destroys the file; without one it does not.
    unmaps = _from(ps, mapped, "munmap whole file")
    assert {"file destroyed" in ps.states[t.dst].facts for t in unmaps} == {True, False}
    for t in unmaps:
        assert ("file destroyed" in ps.states[t.dst].facts) == \
            ("held" in ps.states[t.src].facts)  # a get_pfn reference or a GUP pin
    assert ("munmap page 0", "EINVAL") in ps.refused_everywhere  # the mapping cannot be split


def test_only_the_sketch_as_written_lets_the_host_touch_private_bytes() -> None:
    for name in names():
        touching = [t for t in machine(name).transitions if t.private_bytes]
        assert bool(touching) == (name == "seed-as-written"), name
    ps = machine("seed-as-written")
    assert {t.move for t in ps.transitions if t.private_bytes} == {"host access"}
    assert _state(ps, "private", "mapped")  # defect 1: a page turns private under the mapping


def test_seed_variants_differ_where_their_answer_does() -> None:
    seed, blocks = machine("seed"), machine("seed-destroyed-blocks")
    gone = _state(seed, "file destroyed")
    assert {t.refused for t in _from(seed, gone, "to private")} <= {""}
    assert {t.refused for t in _from(blocks, _state(blocks, "file destroyed"), "to private")} == {"EBUSY"}
    # The late has_mapping is a window between two steps of one mmap: no whole operation shows it.
    late = machine("seed-late-has-mapping")
    assert (late.states, late.transitions) == (seed.states, seed.transitions)


def test_pkvm_inplace_waits_for_the_hosts_last_reference() -> None:
    ps = machine("pkvm-inplace")
    waiting = _state(ps, "unshare pending")
    assert waiting and all("held by the host" in ps.states[i].facts for i in waiting)
    # An unshare of a held page waits; of a free one, it completes at once.
    assert {ps.states[t.dst].facts[0] for t in _from(ps, _state(ps, "shared", "held by the host"),
                                                     "to private")} == {"unshare pending"}
    assert {ps.states[t.dst].facts for t in _from(ps, _state(ps, "shared", without=("held by the host",
                                                                                    "mapped")),
                                                  "to private")} == {("private",)}
    done = {t.move for t in ps.successes() if t.src in waiting and ps.states[t.dst].facts[0] == "private"}
    assert {"munmap", "put_pfn", "gup_unpin", "punch"} <= done
    assert {t.refused for t in _from(ps, waiting, "guest access")} == {"exit EFAULT"}
    assert {t.refused for t in _from(ps, _state(ps, "unshare pending", "mapped"), "host access")} == \
        {"SIGBUS"}


def test_inplace_refuses_a_held_page_and_zaps_the_rest() -> None:
    ps = machine("inplace")
    held = _state(ps, "shared", "held")
    assert held and {t.refused for t in _from(ps, held, "to private")} == {"EAGAIN"}
    assert not _state(ps, "unshare pending")
    mapped = _state(ps, "shared", "mapped", without=("held",))
    assert {ps.states[t.dst].facts for t in _from(ps, mapped, "to private")} == {("private", "mapped")}
    assert {t.refused for t in _from(ps, _state(ps, "private", "mapped"), "host access")} == {"SIGBUS"}


def test_page_mmap_and_kvm_map() -> None:
    pm = machine("page-mmap")
    assert not _state(pm, "private", "mapped")  # no VMA ever covers a private page
    assert {t.refused for t in _from(pm, _state(pm, "shared", "mapped"), "to private")} == {"EBUSY"}
    km = machine("kvm-map")
    assert ("mmap", "ENODEV") in km.refused_everywhere
    under = _state(km, "private", "mapped")
    assert under and {t.refused for t in _from(km, under, "host access")} == {"SIGBUS"}
    assert {t.refused for t in _from(km, _state(km, "private", without=("mapped",)),
                                     "kvm_map_shared")} == {"EPERM"}


def test_guest_memfd_before_and_after_mmap() -> None:
    old = machine("gmem-6.8")
    assert not _state(old, "mapped") and ("mmap", "ENODEV") in old.refused_everywhere
    new = machine("gmem-6.18")
    assert {s.group for s in new.states} == {"a VM with private memory", "a VM without private memory"}
    private_vm = [i for i, s in enumerate(new.states) if s.group == "a VM with private memory"]
    shared_file = [i for i, s in enumerate(new.states) if s.group == "a VM without private memory"]
    # With private memory the file maps but never faults; without, it is shared for life.
    assert {t.refused for t in _from(new, private_vm, "host access")} == {"SIGBUS"}
    assert {t.refused for t in _from(new, shared_file, "to private")} == {"ENOTTY"}
    assert not _from(new, shared_file, "host access")  # it succeeds: nothing to draw
    assert ("gup_pin", "EFAULT") in machine("gmem-nodirectmap").refused_everywhere
    assert ("gup_pin", "EFAULT") not in new.refused_everywhere


def test_the_hypervisor_machine_is_the_ownership_table() -> None:
    ps = machine(HYPERVISOR)
    assert len(ps.states) == 9
    owned = _state(ps, "host OWNED", "hyp NOPAGE")
    assert len(owned) == 1 and ps.starts[0].state == owned[0]
    pinned = _state(ps, "pinned by hyp")
    assert {t.refused for t in _from(ps, pinned, "host_unshare_hyp")} == {"EBUSY"}
    lent = _state(ps, "host SHARED_OWNED")
    assert lent and all({t.refused for t in _from(ps, [i], "host_share_hyp")} <= {"", "EPERM"}
                        for i in lent)
    back = {t.move for t in ps.successes() if t.dst == owned[0]}
    assert {"host_unshare_hyp", "hyp_donate_host", "host_unshare_ffa", "host_unshare_guest",
            "host_reclaim_page", "VM teardown"} <= back


def test_a_broken_model_draws_a_different_machine() -> None:
    """The drawing follows the model: the checker's mutant whose munmap never
    destroys the file has no destroyed states."""
    broken = explore(FileMachine(SEED), kernel=UnmapNeverDestroys)
    assert not _state(broken, "file destroyed") and _state(machine("seed"), "file destroyed")
    assert dot_source(broken) != (STATES / "seed.dot").read_text()


# --- the command -----------------------------------------------------------------------------------------

runner = CliRunner()


def test_draw_states_writes_dot_and_refuses_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["draw", "states", "seed", "--format", "dot"])
    assert result.exit_code == 0 and result.stdout == (STATES / "seed.dot").read_text()
    result = runner.invoke(app, ["draw", "states", "all", "-o", str(tmp_path), "--format", "dot"])
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted(names())
    for name, args in (("nosuch", []), ("seed", ["--format", "pdf"]), ("all", ["--format", "dot"])):
        result = runner.invoke(app, ["draw", "states", name, *args])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_draw_without_dot_says_how_to_install_it(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "gmemlab", "draw", "states", "seed", "-o",
                           str(tmp_path / "seed.svg")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dot" in lines[0] and "install" in lines[0]
    assert not (tmp_path / "seed.svg").exists()
