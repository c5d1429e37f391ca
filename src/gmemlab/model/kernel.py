"""ModelKernel: the executable model behind the one kernel interface."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

from ..errors import UsageError
from ..guestaccess import GUEST_PATHS
from ..interface import INTERFACE_OPS, MODEL_ONLY_OPS, Costs, checked
from .designs import DEFAULT_DESIGN, Design, make_design
from .inplace import InplaceOps
from .mempolicy import MempolicyOps
from .observe import ObserveOps
from .vfs import VfsOps

# Host loads/stores and guest accesses are not system calls.
NOT_SYSCALLS = frozenset({"read_mem", "write_mem", "guest_access"})
# Model-only operations that are ioctls in the designs that have them.
SYSCALL_MODEL_OPS = frozenset({"kvm_map_shared"})
COST_FIELDS = tuple(f.name for f in fields(Costs) if f.name != "vma_count")
K = TypeVar("K")


def counted(cls: type[K]) -> type[K]:
    """Count every system call and ioctl in state.counters["syscalls"]: the cost
    a design imposes on the VMM is, first of all, how many calls it needs."""
    for op in (*INTERFACE_OPS, *SYSCALL_MODEL_OPS):
        if op in NOT_SYSCALLS:
            continue
        impl = getattr(cls, op)

        def make(impl: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(impl)
            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                self.state.counters["syscalls"] += 1
                return impl(self, *args, **kwargs)
            return wrapper

        setattr(cls, op, make(impl))
    return cls


@counted
@checked
class ModelKernel(ObserveOps, InplaceOps, MempolicyOps, VfsOps):
    """The model of a kernel built as `design` ("gmem-6.18", "gmem-6.8", ...).

    Pure Python and deterministic: no /dev/kvm needed.  snapshot() and
    restore() save and bring back the whole state.
    """

    # Operations beyond the interface that only the model has (kernel-internal
    # users, hypercalls); later designs add theirs.
    EXTRA_OPS: tuple[str, ...] = MODEL_ONLY_OPS

    def __init__(self, design: str | Design = DEFAULT_DESIGN, guest_path: str = "mmu") -> None:
        super().__init__(make_design(design) if isinstance(design, str) else design)
        if guest_path not in GUEST_PATHS:
            raise UsageError(f"guest path must be one of {', '.join(GUEST_PATHS)}, "
                             f"not {guest_path!r}")
        self.guest_path = guest_path
        self.name = f"model:{self.design.name}"
        if guest_path != "mmu":
            self.name += f":{guest_path}"

    def costs(self) -> Costs:
        """What the operations so far cost (interface.Costs documents each
        field); subtract two snapshots for the cost of what ran between."""
        counters = self.state.counters
        return Costs(vma_count=self.state.map_count, **{k: counters[k] for k in COST_FIELDS})

    def __enter__(self) -> ModelKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def access_path(self) -> str:
        return self.guest_path

    def behaves_as(self) -> str:
        return self.design.name

    def __repr__(self) -> str:
        extra = f", guest_path={self.guest_path!r}" if self.guest_path != "mmu" else ""
        return f"ModelKernel(design={self.design.name!r}{extra})"
