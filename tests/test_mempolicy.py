"""NUMA memory policy: the model's mm/mempolicy.c, and the host's agreeing with it."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from gmemlab import UsageError, libc, uapi
from gmemlab.host import HostKernel
from gmemlab.interface import Mempolicy
from gmemlab.model import ModelKernel
from gmemlab.model.mempolicy import get_nodes, relative_nodes

from .conftest import HOST_MISSING, needs_numa

P = uapi.PAGE_SIZE


def _errno(call: Any, *args: Any, **kwargs: Any) -> int | None:
    try:
        call(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return None


def test_get_nodes_reads_maxnode_minus_one_bits() -> None:
    assert get_nodes([1], 1) == 0  # no bits: the kernel drops one of maxnode
    assert get_nodes([3], 2) == 1
    assert get_nodes([0xFF], 65) == 0xFF
    assert get_nodes([1, 1], 66) == 1 | 1 << 64
    assert get_nodes([], 64) == 0  # NULL
    with pytest.raises(OSError) as err:
        get_nodes([1], 0)  # maxnode - 1 wraps: more than a page of bits
    assert err.value.errno == 22
    assert get_nodes([0] * 15 + [1 << 63], 1025) == 1 << 1023  # below MAX_NUMNODES (1024)
    with pytest.raises(OSError) as err:
        get_nodes([0] * 16 + [1], 1100)  # node 1024: beyond MAX_NUMNODES
    assert err.value.errno == 22


def test_relative_nodes_folds_onto_the_allowed_set() -> None:
    assert relative_nodes(0b10, 0b1) == 0b1
    assert relative_nodes(0b110, 0b1010) == 0b1010
    assert relative_nodes(0b1, 0b100) == 0b100


def test_mbind_splits_and_merges_vmas_as_any_vma_property() -> None:
    k = ModelKernel("gmem-6.18")
    a = k.mmap(-1, 4 * P, "READ|WRITE", "PRIVATE|ANONYMOUS")
    assert k.vma_count() == 1
    k.mbind(a + P, P, "BIND", [1], 64)
    assert k.vma_count() == 3
    k.mbind(a, 4 * P, "BIND", [1], 64)
    assert k.vma_count() == 1
    k.mbind(a, 4 * P, "DEFAULT")
    assert k.vma_count() == 1
    assert k.get_mempolicy(64, a + 2 * P, "ADDR") == Mempolicy(0, (0,))


@pytest.mark.parametrize("design, shared", [("gmem-6.18", False), ("gmem-6.19", True),
                                            ("inplace", True), ("gmem-6.8", False)])
def test_guest_memfd_policy_lives_where_the_design_says(design: str, shared: bool) -> None:
    k = ModelKernel(design)
    vm = k.create_vm("sw_protected")
    flags = uapi.GUEST_MEMFD_FLAG_MMAP if k.design.kvm.gmem_mmap else 0
    f = k.create_guest_memfd(vm, 4 * P, flags)
    if not flags:
        assert _errno(k.mmap, f, 4 * P, "READ|WRITE", "SHARED") == 19
        return
    a = k.mmap(f, 4 * P, "READ|WRITE", "SHARED")
    b = k.mmap(f, 4 * P, "READ|WRITE", "SHARED")
    k.mbind(a, P, "INTERLEAVE", [1], 64)
    assert k.get_mempolicy(64, a, "ADDR").mode == uapi.MPOL_INTERLEAVE
    assert k.get_mempolicy(64, b, "ADDR").mode == (uapi.MPOL_INTERLEAVE if shared else 0)
    k.munmap(a, 4 * P)
    k.munmap(b, 4 * P)
    c = k.mmap(f, 4 * P, "READ|WRITE", "SHARED")
    assert k.get_mempolicy(64, c, "ADDR").mode == (uapi.MPOL_INTERLEAVE if shared else 0)


def test_model_filesystems() -> None:
    for design, same in (("gmem-6.18", True), ("gmem-6.19", False)):
        k = ModelKernel(design)
        vm = k.create_vm(0)
        f, g = k.create_guest_memfd(vm, P), k.create_guest_memfd(vm, P)
        assert (k.fstat(f).dev == k.fstat(vm).dev) is same
        assert k.fstat(f).dev == k.fstat(g).dev
        assert k.fstat(f).ino != k.fstat(g).ino
        assert k.fstat(k.memfd_create("m", 0)).dev != k.fstat(vm).dev


def test_placement_flags_are_refused_on_both_kernels() -> None:
    kernels: list[Any] = [ModelKernel()]
    if HOST_MISSING is None:
        kernels.append(HostKernel())
    for k in kernels:
        a = k.mmap(-1, P, "READ|WRITE", "PRIVATE|ANONYMOUS")
        for flags in ("STRICT", "MOVE", "MOVE_ALL"):
            with pytest.raises(UsageError, match="not modelled"):
                k.mbind(a, P, "BIND", [1], 64, flags)
        with pytest.raises(UsageError, match="not modelled"):
            k.get_mempolicy(64, a, "NODE|ADDR")
        assert _errno(k.mbind, a, P, "BIND", [1], 64, 0x18) == 22  # an unknown bit: the kernel's
        k.shutdown()


@needs_numa
def test_host_gives_the_thread_its_policy_back() -> None:
    before = libc.get_mempolicy(16, 1025, 0, 0)
    with HostKernel() as k:
        k.set_mempolicy("PREFERRED", [1], 64)
        assert k.get_mempolicy(64) == Mempolicy(uapi.MPOL_PREFERRED, (1,))
    assert libc.get_mempolicy(16, 1025, 0, 0) == before


# --- the model and the running kernel, call by call ------------------------------------------

MODES = st.sampled_from(["DEFAULT", "BIND", "INTERLEAVE", "PREFERRED", "LOCAL", "PREFERRED_MANY",
                         "WEIGHTED_INTERLEAVE", "BIND|STATIC_NODES", "BIND|RELATIVE_NODES",
                         "PREFERRED|STATIC_NODES", "BIND|NUMA_BALANCING",
                         "INTERLEAVE|NUMA_BALANCING", 7, 999])
MASKS = st.sampled_from([[], [0], [1], [3], [2], [0] * 15 + [1 << 63]])
MAXNODES = st.sampled_from([0, 1, 2, 64, 65, 1025, 40000])


@needs_numa
@given(data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_model_and_host_agree(data: st.DataObject) -> None:
    """Random mbind/get_mempolicy/set_mempolicy sequences over a memfd mapped
    twice and an anonymous mapping with a hole: identical answers."""
    model, host = ModelKernel("gmem-6.18"), HostKernel()
    try:
        spaces = []
        for k in (model, host):
            m = k.memfd_create("policy", 0)
            k.ftruncate(m, 4 * P)
            a = k.mmap(m, 4 * P, "READ|WRITE", "SHARED")
            b = k.mmap(m, 4 * P, "READ|WRITE", "SHARED")
            c = k.mmap(-1, 3 * P, "READ|WRITE", "PRIVATE|ANONYMOUS")
            k.munmap(c + P, P)
            spaces.append((a, b, c))
        for _ in range(data.draw(st.integers(1, 12), label="calls")):
            which = data.draw(st.integers(0, 2), label="mapping")
            size = (4, 4, 3)[which]  # within our own mappings: the host refuses the rest
            page = data.draw(st.integers(0, size - 1), label="page")
            op = data.draw(st.sampled_from(["mbind", "get", "set"]), label="op")
            if op == "mbind":
                args: tuple[Any, ...] = (data.draw(st.integers(1, size - page), label="pages") * P,
                                         data.draw(MODES, label="mode"), data.draw(MASKS, label="mask"),
                                         data.draw(MAXNODES, label="maxnode"))
            elif op == "set":
                args = (data.draw(MODES, label="mode"), data.draw(MASKS, label="mask"),
                        data.draw(MAXNODES, label="maxnode"))
            else:
                args = (data.draw(st.sampled_from([64, 65, 128, 0, 40000]), label="maxnode"),
                        data.draw(st.sampled_from(["ADDR", 0, "MEMS_ALLOWED", 8]), label="flags"))
            outcomes = []
            for k, (a, b, c) in zip((model, host), spaces, strict=True):
                addr = (a, b, c)[which] + page * P
                try:
                    if op == "mbind":
                        outcomes.append(("ok", k.mbind(addr, *args)))
                    elif op == "set":
                        outcomes.append(("ok", k.set_mempolicy(*args)))
                    else:
                        maxnode, flags = args
                        at = addr if flags == "ADDR" else 0
                        outcomes.append(("ok", k.get_mempolicy(maxnode, at, flags)))
                except OSError as exc:
                    outcomes.append(("errno", exc.errno))
            assert outcomes[0] == outcomes[1], (op, which, page, args, outcomes)
    finally:
        model.shutdown()
        host.shutdown()
