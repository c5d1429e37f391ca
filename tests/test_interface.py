"""The one interface: both kernels implement it, and malformed calls fail cleanly."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from gmemlab import MemorySignal, UsageError
from gmemlab.host import HostKernel
from gmemlab.interface import INTERFACE_OPS, MODEL_ONLY_OPS, Kernel, op_signature
from gmemlab.model import ModelKernel

from .conftest import GMEM_MISSING


@pytest.mark.parametrize("cls", [ModelKernel, HostKernel])
def test_every_operation_implemented_with_the_protocol_signature(cls: type) -> None:
    for op in INTERFACE_OPS:
        impl = getattr(cls, op)
        params = list(inspect.signature(impl, follow_wrapped=True).parameters)[1:]
        assert params == list(op_signature(op).parameters), op
        assert getattr(impl, "__wrapped_op__", None) == op, f"{cls.__name__}.{op} is not checked"


def test_every_model_operation_is_served_with_the_protocol_signature() -> None:
    """ModelKernel's table: each operation's component method takes the interface's parameters."""
    k = ModelKernel()
    for op in (*INTERFACE_OPS, *MODEL_ONLY_OPS):
        served = ModelKernel.SERVED.get(op)
        impl = served.get(k) if served is not None else getattr(k, op)
        params = list(inspect.signature(impl).parameters)
        assert params == list(op_signature(op).parameters), op


def test_kernels_are_kernels() -> None:
    assert isinstance(ModelKernel(), Kernel)


junk = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(allow_nan=False),
                 st.integers(min_value=-(1 << 70), max_value=1 << 70), st.binary(max_size=4),
                 st.lists(st.integers(-3, 3), max_size=2))


def _call(k: Any, op: str, args: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, MemorySignal, UsageError):
        getattr(k, op)(**args)


@pytest.mark.parametrize("op", INTERFACE_OPS)
@given(data=st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_malformed_arguments_never_escape(kernel: Any, op: str, data: st.DataObject) -> None:
    """Any argument values at all: only OSError, MemorySignal or UsageError."""
    sig = op_signature(op)
    args = {name: data.draw(junk, label=name) for name in sig.parameters}
    _call(kernel, op, args)


@pytest.mark.parametrize("kind", ["model", "host"])
def test_bad_inputs_give_clear_errors(kernel: Any, kind: str) -> None:
    with pytest.raises(UsageError, match="size must be an integer"):
        kernel.create_guest_memfd(3, size="big")
    with pytest.raises(UsageError, match="does not fit"):
        kernel.create_guest_memfd(3, size=1 << 64)
    with pytest.raises(UsageError, match="unexpected keyword"):
        kernel.create_vm(typ=0)
    with pytest.raises(UsageError, match="true or false"):
        kernel.guest_access(3, 0, 1, write=1)
    with pytest.raises(UsageError, match="data or fill"):
        kernel.write_mem(0x1000, data=b"a", fill=1, length=1)
    with pytest.raises(UsageError, match="refused"):
        kernel.madvise(0x1000, 4096, 100)
    with pytest.raises(OSError) as err:
        kernel.close(987654)
    assert err.value.errno == 9
    vm = kernel.create_vm(0)
    # Negative sizes are the u64 the kernel reads: EINVAL, as in C.
    with pytest.raises(OSError) as err:
        kernel.set_user_memory_region(vm, 0, 0, 0x100000, -4096, 0)
    assert err.value.errno == 22
    if isinstance(kernel, ModelKernel) or GMEM_MISSING is None:
        with pytest.raises(OSError) as err:
            kernel.create_guest_memfd(vm, -4096)
        assert err.value.errno == 22


def test_distinct_inodes_same_device(kernel: Any) -> None:
    """[B22] two guest_memfd creations: distinct st_ino, the same st_dev, on both kernels."""
    if not isinstance(kernel, ModelKernel) and GMEM_MISSING is not None:
        pytest.skip(GMEM_MISSING)
    vm = kernel.create_vm(0)
    a = kernel.fstat(kernel.create_guest_memfd(vm, 4096, 0))
    b = kernel.fstat(kernel.create_guest_memfd(vm, 8192, 0))
    assert a.ino != b.ino and a.dev == b.dev
    assert (a.size, b.size) == (4096, 8192)


def test_flag_names_from_python(model: Any) -> None:
    """Python callers may spell flags by name, as case files do."""
    vm = model.create_vm("default")
    f = model.create_guest_memfd(vm, 4096, "MMAP|INIT_SHARED")
    addr = model.mmap(f, 4096, "READ|WRITE", "MAP_SHARED")
    model.write_mem(addr, fill=7, length=4096)
    model.fallocate(f, "KEEP_SIZE|PUNCH_HOLE", 0, 4096)
    assert model.read_mem(addr, 2) == b"\0\0"
    with pytest.raises(UsageError, match="unknown name 'SHAREDD'"):
        model.mmap(f, 4096, "READ", "SHAREDD")
