"""The seed designs beyond what case files state: bad input, scenarios, snapshots."""

from __future__ import annotations

import pytest

from gmemlab import UsageError, uapi
from gmemlab.model import ModelKernel
from gmemlab.pools.pkvm_pool import share_pool_in_one_slot, share_pool_per_unit

P = 4096


@pytest.fixture(params=["seed", "seed-as-written"])
def seed(request: pytest.FixtureRequest) -> ModelKernel:
    return ModelKernel(request.param)


def _file(k: ModelKernel, pages: int = 4) -> int:
    f = k.memfd_restricted(0)
    k.ftruncate(f, pages * P)
    return f


@pytest.mark.parametrize("fail, message", [
    ({"mmap_end": "EPERM"}, "cannot fail"),
    ({"invalidate_start": "EIO"}, "cannot fail"),
    ({"mmap_stop": "EPERM"}, "unknown event"),
    ({"mmap_start": "EWHATEVER"}, "not an errno value"),
    ({"mmap_start": -5}, "not an errno value"),
    ({"mmap_start": 0}, "not an errno value"),
    ({"mmap_start": 1.5}, "not an errno value"),
])
def test_notifier_errors_must_be_errno_values(seed: ModelKernel, fail: dict[str, object],
                                              message: str) -> None:
    f = _file(seed)
    with pytest.raises(UsageError, match=message):
        seed.add_notifier(f, "n", fail=fail)


def test_notifier_names(seed: ModelKernel) -> None:
    f = _file(seed)
    seed.add_notifier(f, "a", fail={"mmap_start": 1})
    with pytest.raises(UsageError, match="already registered"):
        seed.add_notifier(f, "a")
    with pytest.raises(UsageError, match="non-empty"):
        seed.add_notifier(f, "")
    with pytest.raises(OSError) as err:
        seed.mmap(f, 4 * P, 3, 1)
    assert err.value.errno == 1  # the integer spelling of EPERM works too


def test_double_put_and_bad_fds(seed: ModelKernel) -> None:
    f = _file(seed)
    seed.get_pfn(f, 0)
    seed.put_pfn(f, 0)
    with pytest.raises(OSError) as err:
        seed.put_pfn(f, 0)
    assert err.value.errno == 22
    with pytest.raises(OSError) as err:
        seed.get_pfn(999, 0)
    assert err.value.errno == 9
    with pytest.raises(UsageError):
        seed.get_pfn(f, -1 << 65)


def test_pfns_are_stable_and_freed_by_punch(seed: ModelKernel) -> None:
    f = _file(seed)
    a = seed.get_pfn(f, 0)
    b = seed.get_pfn(f, 1)
    assert b != a and seed.get_pfn(f, 0) == a
    for index in (0, 0, 1):
        seed.put_pfn(f, index)
    seed.fallocate(f, 3, 0, P)  # punch page 0: its physical page goes back
    assert seed.get_pfn(f, 0) not in (a, b)
    assert seed.get_pfn(f, 1) == b


def test_snapshot_mid_protocol_state(seed: ModelKernel) -> None:
    f = _file(seed)
    seed.add_notifier(f, "a")
    snap = seed.snapshot()
    addr = seed.mmap(f, 4 * P, 3, 1)
    assert seed.notifier_log(f)
    seed.restore(snap)
    assert seed.notifier_log(f) == [] and seed.file_state(f).mapped == 0
    assert seed.mmap(f, 4 * P, 3, 1) == addr  # deterministic placement


def test_one_slot_pool_never_mappable() -> None:
    r = share_pool_in_one_slot("seed", slot_pages=64, pool_first=8, pool_pages=16)
    assert not r.host_mapped_anything and r.mmap_errnos == ["EPERM"] * 16
    whole = share_pool_in_one_slot("seed", slot_pages=16, pool_first=0, pool_pages=16)
    assert whole.first_mappable_after == 16  # only once every page of the slot is shared


def test_per_unit_workaround_costs() -> None:
    r = share_pool_per_unit("seed", pool_pages=64, unit_pages=4)
    assert r.completed and r.units_needed == r.memslots == r.mappings == r.files == 16
    assert r.vma_count == 16 and r.syscalls == 1 + 16 * 7


def test_per_unit_workaround_hits_the_memslot_limit() -> None:
    r = share_pool_per_unit("seed", pool_pages=uapi.KVM_USER_MEM_SLOTS + 1, unit_pages=1)
    assert r.memslots == uapi.KVM_USER_MEM_SLOTS and r.stopped_by == "EINVAL at memslot 32764"
