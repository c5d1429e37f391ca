"""The page-level designs and pKVM beyond what case files state: the error
offset, the cost API, snapshots, range-based state, stepwise conversions, the
invariant checks themselves, bad input, and the DMA-pool scenario."""

from __future__ import annotations

import contextlib
import errno
import inspect
from dataclasses import fields
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from gmemlab import MemorySignal, UsageError, uapi
from gmemlab.errors import ConversionError
from gmemlab.interface import MODEL_ONLY_OPS, Costs, op_signature
from gmemlab.model import ModelKernel
from gmemlab.model.inplace import PRIVATE
from gmemlab.model.invariants import (
    bookkeeping_violations,
    host_mapping_violations,
    ownership_violations,
    violations,
)
from gmemlab.model.pkvm import OWNED, SHARED_BORROWED
from gmemlab.pools.dma_pool import share_pool

P = 4096
G = 0x80000
GMEM = uapi.KVM_MEM_GUEST_MEMFD
PAGE_DESIGNS = ["page-mmap", "kvm-map", "inplace", "pkvm-inplace"]


def _gmem(design: str = "inplace", pages: int = 8, flags: int = 3) -> tuple[ModelKernel, int, int]:
    k = ModelKernel(design)
    vm = k.create_vm(uapi.MODEL_PKVM_VM)
    g = k.create_guest_memfd(vm, pages * P, flags)
    k.set_user_memory_region2(vm, 0, GMEM, G * P, pages * P, 0, g, 0)
    return k, vm, g


def _restricted(design: str, pages: int = 8) -> tuple[ModelKernel, int, int]:
    k = ModelKernel(design)
    vm = k.create_vm(uapi.MODEL_PKVM_VM)
    f = k.memfd_restricted(0)
    k.ftruncate(f, pages * P)
    k.set_user_memory_region2(vm, 0, GMEM, G * P, pages * P, 0, f, 0)
    return k, vm, f


# --- the interface ----------------------------------------------------------------


def test_every_model_only_operation_is_implemented_and_checked() -> None:
    for op in MODEL_ONLY_OPS:
        impl = getattr(ModelKernel, op)
        params = list(inspect.signature(impl, follow_wrapped=True).parameters)[1:]
        assert params == list(op_signature(op).parameters), op
        assert getattr(impl, "__wrapped_op__", None) == op, f"{op} is not checked"


junk = st.one_of(st.none(), st.booleans(), st.text(max_size=3),
                 st.integers(min_value=-(1 << 70), max_value=1 << 70),
                 st.sampled_from([0, 3, 4, 5, 6, 7, 0x100000, 0x100001, G, 1 << 52, -4096]),
                 st.binary(max_size=4), st.lists(st.integers(-3, 3), max_size=2))


@pytest.mark.parametrize("design", PAGE_DESIGNS)
@pytest.mark.parametrize("op", MODEL_ONLY_OPS)
@given(data=st.data())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_model_only_bad_input_never_escapes(design: str, op: str, data: st.DataObject) -> None:
    """Any arguments at all, on a kernel with live objects behind small fds:
    OSError, MemorySignal or UsageError, never an exception from inside."""
    k, vm, f = (_restricted(design) if design in ("page-mmap", "kvm-map") else _gmem(design))
    if design == "kvm-map":
        k.kvm_map_shared(vm, G * P, P)
    else:
        k.mmap(f, P, 3, uapi.MAP_SHARED)
    args = {name: data.draw(junk, label=name) for name in op_signature(op).parameters}
    with contextlib.suppress(OSError, MemorySignal, UsageError):
        getattr(k, op)(**args)
    assert not violations(k.state, k.design)


def test_pkvm_page_state_usage() -> None:
    k = ModelKernel("page-mmap")
    with pytest.raises(UsageError, match="component"):
        k.pkvm_page_state(0x100000, "guestx")
    with pytest.raises(UsageError, match="needs vm and gfn"):
        k.pkvm_page_state(0x100000, "guest")
    with pytest.raises(UsageError, match="for the guest"):
        k.pkvm_page_state(0x100000, "host", gfn=1)


# --- in-place details --------------------------------------------------------------


def test_eagain_carries_the_error_offset() -> None:
    k, _vm, g = _gmem(flags=uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    a = k.mmap(g, 8 * P, 3, uapi.MAP_SHARED)
    k.gup_pin(a + 5 * P, P)
    k.gup_pin(a + 6 * P, 2 * P)
    with pytest.raises(ConversionError) as err:
        k.set_memory_attributes2(g, 2 * P, 6 * P, PRIVATE)
    assert err.value.errno == errno.EAGAIN and err.value.error_offset == 5 * P
    assert [k.page_attr(g, i) for i in range(8)] == ["shared"] * 8


def test_contents_and_state_survive_snapshot_restore() -> None:
    k, vm, g = _gmem(flags=uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    a = k.mmap(g, 8 * P, 3, uapi.MAP_SHARED)
    k.write_mem(a, fill=0x11, length=8 * P)
    pfn = k.get_pfn(g, 3)
    k.pkvm_host_donate_guest(pfn, G + 3, vm)
    snap = k.snapshot()
    k.set_memory_attributes2(g, 0, 2 * P, PRIVATE)
    k.pkvm_guest_share_host(vm, G + 3)
    k.gup_pin(a + 4 * P, P)
    k.restore(snap)
    assert k.page_attr(g, 0) == "shared" and k.pkvm_page_state(pfn, "host") == "NOPAGE"
    assert k.read_mem(a, 4) == b"\x11" * 4
    assert not k.state.gup_pins and not violations(k.state, k.design)


# --- range-based state ----------------------------------------------------------------


def test_hypervisor_state_is_runs_not_pages() -> None:
    """Donating 4096 contiguous pages is one host run and one guest run."""
    k, vm, f = _restricted("page-mmap", pages=4096)
    first = k.get_pfn(f, 0)
    for i in range(1, 4096):
        assert k.get_pfn(f, i) == first + i
    for i in range(4096):
        k.pkvm_host_donate_guest(first + i, G + i, vm)
    pkvm = k.state.pkvm
    assert pkvm is not None
    assert len(pkvm.guests[k.state.files[k.state.fds[vm]].vm]) <= 3  # type: ignore[index]
    assert len(pkvm.pages) <= 3
    k.pkvm_host_reclaim_page(vm, first + 100)
    assert len(pkvm.pages) <= 5
    assert len(k.state.frames) <= 3
    assert not ownership_violations(k.state)


# --- costs --------------------------------------------------------------------------------


def test_costs_is_one_typed_snapshot_of_the_counters() -> None:
    k, _vm, f = _restricted("page-mmap")
    before = k.costs()
    a = k.mmap(f, 4 * P, 3, uapi.MAP_SHARED)
    k.munmap(a + P, P)
    k.pkvm_host_share_hyp(k.get_pfn(f, 6))
    after = k.costs()
    delta = after - before
    assert (delta.syscalls, delta.hypercalls, delta.vma_splits, delta.vma_count) == (2, 1, 2, 2)
    assert after.as_table()["vma_count"] == k.vma_count() == 2
    for f_ in fields(Costs):
        if f_.name != "vma_count":
            assert getattr(after, f_.name) == k.state.counters[f_.name], f_.name
    assert k.costs().syscalls == after.syscalls  # asking costs nothing


# --- stepwise conversions ---------------------------------------------------------------


def _run(k: ModelKernel, actor: str) -> Any:
    while True:
        out = k.step(actor)
        if out is not None:
            return out


def test_stepwise_attributes2_holds_the_invalidate_lock() -> None:
    k, _vm, g = _gmem(flags=uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    a = k.mmap(g, 8 * P, 3, uapi.MAP_SHARED)
    k.write_mem(a, fill=1, length=P)
    k.gup_pin(a, P)
    k.begin("C", "set_memory_attributes2", fd=g, offset=0, size=P, attributes=PRIVATE, flags=0)
    assert k.step("C") is None  # validated, locked, zapped
    assert k.state.inodes[k.state.files[k.state.fds[g]].inode].host_ptes[0] == 0
    k.begin("H", "read_mem", addr=a, length=1)
    assert not k.enabled("H")  # the host fault waits for the lock
    k.begin("U", "gup_unpin", addr=a, length=P)
    assert k.enabled("U")  # dropping a reference takes no lock
    assert _run(k, "U").kind == "ret"
    out = _run(k, "C")
    assert (out.kind, out.value) == ("ret", 0)
    assert k.enabled("H") and _run(k, "H").kind == "signal"


def test_stepwise_attributes2_refused_releases_the_lock() -> None:
    k, _vm, g = _gmem(flags=uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    a = k.mmap(g, 8 * P, 3, uapi.MAP_SHARED)
    k.gup_pin(a, P)
    snap = k.snapshot()
    k.begin("C", "set_memory_attributes2", fd=g, offset=0, size=2 * P, attributes=PRIVATE, flags=0)
    out = _run(k, "C")
    assert (out.kind, out.value) == ("errno", errno.EAGAIN)
    assert not k.state.file_locks
    stepped = k.costs()
    stepped_attrs = [k.page_attr(g, i) for i in range(8)]
    k.restore(snap)
    with pytest.raises(OSError):
        k.set_memory_attributes2(g, 0, 2 * P, PRIVATE)
    assert stepped.refused == k.costs().refused == 1
    assert stepped.host_pte_zaps == k.costs().host_pte_zaps
    assert stepped_attrs == [k.page_attr(g, i) for i in range(8)] == ["shared"] * 8


def test_kvm_map_faults_wait_for_a_conversion() -> None:
    k, vm, _f = _restricted("kvm-map")
    a = k.kvm_map_shared(vm, G * P, 2 * P)
    k.write_mem(a, fill=7, length=2 * P)
    k.begin("C", "set_memory_attributes", vm=vm, address=G * P, size=P, attributes=PRIVATE, flags=0)
    assert k.step("C") is None  # checked and zapped; the attribute is not stored yet
    k.begin("H", "read_mem", addr=a, length=1)
    assert not k.enabled("H")
    assert _run(k, "C").kind == "ret"
    out = _run(k, "H")
    assert (out.kind, out.value) == ("signal", uapi.SIGBUS)
    assert not violations(k.state, k.design)


# --- the invariant checks catch what they are for ----------------------------------------


def test_invariants_catch_broken_states() -> None:
    k, vm, f = _restricted("page-mmap")
    pfn = k.get_pfn(f, 0)
    k.pkvm_host_donate_guest(pfn, G, vm)
    assert not violations(k.state, k.design)
    pkvm = k.state.pkvm
    assert pkvm is not None
    broken = k.snapshot()
    assert broken.pkvm is not None
    broken.pkvm.pages.update(pfn, pfn + 1, lambda p: type(p)(host=OWNED, hyp=p.hyp))
    assert any("host OWNED" in v for v in ownership_violations(broken))
    broken = k.snapshot()
    assert broken.pkvm is not None
    broken.pkvm.pages.update(pfn, pfn + 1, lambda p: type(p)(host=SHARED_BORROWED, hyp=p.hyp,
                                                                guest=p.guest))
    assert ownership_violations(broken)

    k2, _vm2, g = _gmem(flags=uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    a = k2.mmap(g, P, 3, uapi.MAP_SHARED)
    k2.read_mem(a, 1)
    inode = k2.state.inodes[k2.state.files[k2.state.fds[g]].inode]
    assert inode.attributes is not None
    inode.attributes.set(0, 1, PRIVATE)  # private under a live PTE, as a design without a zap would
    assert host_mapping_violations(k2.state, k2.design)
    inode.pins.set(3, 4, 1)  # a pin nobody took
    assert any("pins" in v for v in bookkeeping_violations(k2.state))


# --- the scenario -------------------------------------------------------------------------


@pytest.mark.parametrize("design, works", [
    ("seed", False), ("seed-as-written", False), ("gmem-6.8", False), ("gmem-6.18", False),
    ("page-mmap", True), ("kvm-map", True), ("inplace", True), ("pkvm-inplace", True)])
def test_dma_pool_under_every_design(design: str, works: bool) -> None:
    r = share_pool(design, pool_pages=16, slot_pages=64, pool_first=8)
    assert r.works is works, r.verdict
    if works:
        assert r.in_place == 16 and r.withdrawn == r.contents_kept == 8
        # page-mmap pays in VMAs: every page given back splits the pool's mapping.
        assert r.vmas_after == (8 if design == "page-mmap" else 1)
        assert r.share_cost.hypercalls == 16 and r.unshare_cost.hypercalls == 8
    else:
        assert r.host_reached == 0
    if design in ("inplace", "pkvm-inplace"):
        assert r.share_cost.syscalls == 16 and r.share_cost.vma_splits == 0
    if design == "pkvm-inplace":
        assert r.unshare_cost.deferred == 8  # the host had touched every page


def test_page_mmap_fragmentation_meets_max_map_count() -> None:
    r = share_pool("page-mmap", pool_pages=64, slot_pages=128, max_map_count=10)
    assert not r.works and r.failures["munmap: ENOMEM"] > 0
    assert r.vmas_after == 10
    assert share_pool("kvm-map", pool_pages=64, slot_pages=128, max_map_count=10).works
