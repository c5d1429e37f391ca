"""ModelKernel: the executable model behind the one kernel interface."""

from __future__ import annotations

from ..interface import checked
from .designs import DEFAULT_DESIGN, Design, make_design
from .kvm import KvmOps
from .vfs import VfsOps


@checked
class ModelKernel(KvmOps, VfsOps):
    """The model of a kernel built as `design` ("gmem-6.18", "gmem-6.8", ...).

    Pure Python and deterministic: no /dev/kvm needed.  snapshot() and
    restore() save and bring back the whole state.
    """

    # Operations beyond the interface that only the model has (kernel-internal
    # users, hypercalls); later designs add theirs.
    EXTRA_OPS: tuple[str, ...] = ("guest_hypercall",)

    def __init__(self, design: str | Design = DEFAULT_DESIGN) -> None:
        super().__init__(make_design(design) if isinstance(design, str) else design)
        self.name = f"model:{self.design.name}"

    def __enter__(self) -> ModelKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"ModelKernel(design={self.design.name!r})"
