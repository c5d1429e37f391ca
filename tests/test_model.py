"""Model behaviours that need more than a case file to state."""

from __future__ import annotations

import errno
import tracemalloc

import pytest

from gmemlab import MemorySignal, UsageError, uapi
from gmemlab.model import ModelKernel
from gmemlab.model.pages import present

P = 4096


def _gmem(k: ModelKernel, size: int = 16 * P, flags: int = 3) -> tuple[int, int]:
    vm = k.create_vm(0)
    return vm, k.create_guest_memfd(vm, size, flags)


def test_fds_are_lowest_free(model: ModelKernel) -> None:
    vm = model.create_vm(0)
    f = model.create_guest_memfd(vm, P)
    model.close(vm)
    g = model.dup(f)
    assert g == vm  # the lowest free number is reused


def test_vm_lives_while_files_do(model: ModelKernel) -> None:
    """[B24][G77] the VM is destroyed only when its fd and every guest_memfd are gone."""
    vm, f = _gmem(model)
    cpu = model.create_vcpu(vm, 0)
    model.close(vm)
    assert len(model.state.vms) == 1
    model.close(cpu)
    assert len(model.state.vms) == 1
    model.close(f)
    assert model.state.vms == {}


def test_release_waits_for_last_mapping(model: ModelKernel) -> None:
    """[G76] memory belongs to the inode and lives until the last fd and mapping go."""
    _vm, f = _gmem(model)
    a = model.mmap(f, 16 * P, 3, 1)
    model.write_mem(a, fill=1, length=16 * P)
    model.close(f)
    assert len(model.state.inodes) >= 1 and any(i.kind == "gmem" for i in model.state.inodes.values())
    model.munmap(a, 8 * P)
    assert any(i.kind == "gmem" for i in model.state.inodes.values())
    model.munmap(a + 8 * P, 8 * P)
    assert not any(i.kind == "gmem" for i in model.state.inodes.values())
    assert model.state.counters["pages_freed"] == 16


def test_snapshot_restore(model: ModelKernel) -> None:
    _vm, f = _gmem(model)
    a = model.mmap(f, 16 * P, 3, 1)
    model.write_mem(a, fill=7, length=P)
    snap = model.snapshot()
    model.write_mem(a, fill=9, length=P)
    model.close(f)
    model.munmap(a, 16 * P)
    model.restore(snap)
    assert model.read_mem(a, 4) == b"\x07" * 4
    assert model.state == snap  # restore copies: the snapshot stays reusable
    model.write_mem(a, fill=1, length=1)
    assert snap != model.state


def test_snapshot_is_cheap_for_a_terabyte(model: ModelKernel) -> None:
    vm = model.create_vm(0)
    f = model.create_guest_memfd(vm, 1 << 40, 3)
    a = model.mmap(f, 1 << 40, 3, 1)
    model.write_mem(a, fill=0xAA, length=1 << 40)
    for i in range(2000):
        model.fallocate(f, 3, i * (1 << 28), P)
    inode = next(i for i in model.state.inodes.values() if i.kind == "gmem")
    assert present(inode.pages) == (1 << 28) - 2000
    tracemalloc.start()
    snap = model.snapshot()
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(inode.pages) <= 4001
    assert size < 1 << 20, f"snapshot of ~4000 runs took {size} bytes"
    assert snap.inodes[inode.ino].pages == inode.pages


def test_map_count_limit_as_measured(model: ModelKernel) -> None:
    """As measured on Linux 6.18: 2 VMAs per isolated page; at the limit the next
    splitting mprotect fails with ENOMEM after its first split, merges still work."""
    _vm, f = _gmem(model, size=1 << 20)
    a = model.mmap(f, 1 << 20, 3, 1)
    model.state.max_map_count = 21
    calls = 0
    with pytest.raises(OSError) as err:
        for i in range(1, 256, 2):
            model.mprotect(a + i * P, P, 1)
            calls += 1
    assert err.value.errno == errno.ENOMEM
    assert calls == 10 and model.state.map_count == 21
    # an mprotect that merges still succeeds and lowers the count by 2
    model.mprotect(a + 3 * P, P, 3)
    assert model.state.map_count == 19
    # munmap of one page in the middle needs a split: ENOMEM at the limit
    model.state.max_map_count = 19
    with pytest.raises(OSError) as err:
        model.munmap(a + 200 * P, P)
    assert err.value.errno == errno.ENOMEM


def test_vma_merge_on_remap(model: ModelKernel) -> None:
    """munmap + mmap(MAP_FIXED) of the same file page merges back: the count stays flat."""
    _vm, f = _gmem(model, size=64 * P)
    a = model.mmap(f, 64 * P, 3, 1)
    assert model.state.map_count == 1
    model.munmap(a + 10 * P, P)
    assert model.state.map_count == 2
    model.mmap(f, P, 3, uapi.MAP_SHARED | uapi.MAP_FIXED, offset=10 * P, addr=a + 10 * P)
    assert model.state.map_count == 1
    assert model.state.counters["vma_splits"] >= 2 and model.state.counters["vma_merges"] >= 2


def test_signal_carries_address(model: ModelKernel) -> None:
    _vm, f = _gmem(model, size=P)
    a = model.mmap(f, 4 * P, 3, 1)
    with pytest.raises(MemorySignal) as sig:
        model.write_mem(a + 100, fill=1, length=2 * P)
    assert sig.value.signo == uapi.SIGBUS and sig.value.addr == a + P
    assert model.read_mem(a + 100, 4) == b"\x01" * 4  # the first page was written


def test_designs_and_unknown_design() -> None:
    assert ModelKernel("gmem-6.8").design.name == "gmem-6.8"
    with pytest.raises(UsageError, match="unknown design"):
        ModelKernel("gmem-9.9")


def test_private_access_on_default_vm_is_malformed(model: ModelKernel) -> None:
    vm = model.create_vm(0)
    cpu = model.create_vcpu(vm, 0)
    with pytest.raises(UsageError, match="no private memory"):
        model.guest_access(cpu, 0x1000, 4, private=True)


def test_top_down_placement_is_highest_fit(model: ModelKernel) -> None:
    """get_unmapped_area's answer equals a brute-force highest-fit search, also
    after holes open above the free-area cache."""
    import random
    rng = random.Random(7)
    live: list[tuple[int, int]] = []
    for _ in range(300):
        if live and rng.random() < 0.4:
            addr, n = live.pop(rng.randrange(len(live)))
            model.munmap(addr, n * P)
            continue
        n = rng.choice([1, 2, 3, 8])
        floor, ceiling = 0x10000 >> 12, 0x7F0000000000 >> 12
        expected = None
        for s, e, m in model.state.vmas.runs(floor, ceiling):
            if m is None and e - s >= n:
                expected = e - n
        addr = model.mmap(-1, n * P, 3, uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS)
        assert addr >> 12 == expected
        live.append((addr, n))
