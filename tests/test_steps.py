"""Operations as steps: the interleavings the checker explores."""

from __future__ import annotations

import contextlib

import pytest

from gmemlab import uapi
from gmemlab.model import ModelKernel

P = 4096
GMEM = uapi.KVM_MEM_GUEST_MEMFD


def _setup(design: str = "seed") -> tuple[ModelKernel, int, int]:
    k = ModelKernel(design)
    f = k.memfd_restricted(0)
    k.ftruncate(f, 4 * P)
    vm = k.create_vm(uapi.KVM_X86_SW_PROTECTED_VM)
    k.set_user_memory_region2(vm, 0, GMEM, 0x100000, 4 * P, 0, f, 0)
    k.add_notifier(f, "a")
    return k, f, vm


def _run(k: ModelKernel, actor: str) -> object:
    while True:
        out = k.step(actor)
        if out is not None:
            return out


def test_stepped_mmap_equals_atomic() -> None:
    k, f, _ = _setup()
    snap = k.snapshot()
    k.begin("A", "mmap", fd=f, length=4 * P, prot=3, flags=1)
    out = _run(k, "A")
    stepped_log, stepped_state = k.notifier_log(f), k.file_state(f)
    k.restore(snap)
    assert out.kind == "ret" and k.mmap(f, 4 * P, 3, 1) == out.value  # type: ignore[attr-defined]
    assert k.notifier_log(f) == stepped_log == ["a:mmap_start", "a:mmap_end"]
    assert k.file_state(f) == stepped_state


def test_conversion_during_mmap_is_refused() -> None:
    k, f, vm = _setup()
    k.begin("A", "mmap", fd=f, length=4 * P, prot=3, flags=1)
    k.step("A")  # locks and checks
    k.step("A")  # KVM's mmap_start: the memslot is now pending
    k.begin("C", "set_memory_attributes", vm=vm, address=0x100000, size=P, attributes=8)
    out = _run(k, "C")
    assert (out.kind, out.value) == ("errno", 16)  # type: ignore[attr-defined]
    assert _run(k, "A").kind == "ret"  # type: ignore[attr-defined]


def test_mmap_during_conversion_is_refused_and_aborted() -> None:
    k, f, vm = _setup()
    k.begin("C", "set_memory_attributes", vm=vm, address=0x100000, size=P, attributes=8)
    assert k.step("C") is None  # zapped, converting
    k.begin("A", "mmap", fd=f, length=4 * P, prot=3, flags=1)
    out = _run(k, "A")
    assert (out.kind, out.value) == ("errno", 16)  # type: ignore[attr-defined]
    assert k.notifier_log(f) == []  # KVM's notifier comes first and refused: nobody to abort
    assert _run(k, "C").kind == "ret"  # type: ignore[attr-defined]
    assert k.file_state(f).mapped == 0


def test_locks_block_other_actors() -> None:
    k, f, _ = _setup()
    k.begin("A", "mmap", fd=f, length=4 * P, prot=3, flags=1)
    k.step("A")
    k.begin("B", "mmap", fd=f, length=4 * P, prot=3, flags=1)
    assert not k.enabled("B")  # mmap_lock and the file lock are A's
    k.begin("K", "get_pfn", fd=f, index=0)
    assert k.enabled("K")  # the sketch's get_pfn takes no lock
    assert _run(k, "K").kind == "ret"  # type: ignore[attr-defined]
    _run(k, "A")
    assert k.enabled("B")
    out = _run(k, "B")
    assert (out.kind, out.value) == ("errno", 22)  # type: ignore[attr-defined]
    assert k.state.mm_lock is None and not k.state.file_locks


def test_private_access_retries_after_conversion() -> None:
    k, f, vm = _setup()
    k.set_memory_attributes(vm, 0x100000, P, 8)
    cpu = k.create_vcpu(vm, 0)
    k.begin("G", "guest_access", vcpu=cpu, gpa=0x100000, length=4, write=True, private=True,
            data=b"\x01\x02\x03\x04")
    k.step("G")  # get_pfn: one reference
    assert k.file_state(f).refs == 1
    k.set_memory_attributes(vm, 0x100000, P, 0)
    out = _run(k, "G")
    assert out.value.exit == "memory_fault" and k.file_state(f).refs == 0  # type: ignore[attr-defined]


def test_snapshot_captures_the_operation_in_progress() -> None:
    k, f, _ = _setup()
    k.begin("A", "mmap", fd=f, length=4 * P, prot=3, flags=1)
    k.step("A")
    snap = k.snapshot()
    first = _run(k, "A")
    k.restore(snap)
    assert _run(k, "A") == first


@pytest.mark.parametrize("design, audited", [("seed", False), ("seed-as-written", True)])
def test_audit_sees_private_memory_under_a_mapping(design: str, audited: bool) -> None:
    k = ModelKernel(design)
    f = k.memfd_restricted(0)
    k.ftruncate(f, 4 * P)
    vm = k.create_vm(uapi.MODEL_PKVM_VM)
    k.set_user_memory_region2(vm, 0, GMEM, 0x100000, 4 * P, 0, f, 0)
    a = k.mmap(f, 4 * P, 3, 1)
    with contextlib.suppress(OSError):
        k.set_memory_attributes(vm, 0x100000, P, 8)
    k.read_mem(a, 8)
    kinds = {e.kind for e in k.state.audit}
    assert ({"private_while_mapped", "host_access_private"} <= kinds) is audited
