"""ModelKernel: the executable model behind the one kernel interface."""

from __future__ import annotations

from ..errors import UsageError
from ..guestaccess import GUEST_PATHS
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

    def __init__(self, design: str | Design = DEFAULT_DESIGN, guest_path: str = "mmu") -> None:
        super().__init__(make_design(design) if isinstance(design, str) else design)
        if guest_path not in GUEST_PATHS:
            raise UsageError(f"guest path must be one of {', '.join(GUEST_PATHS)}, "
                             f"not {guest_path!r}")
        self.guest_path = guest_path
        self.name = f"model:{self.design.name}"
        if guest_path != "mmu":
            self.name += f":{guest_path}"

    def __enter__(self) -> ModelKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def access_path(self) -> str:
        return self.guest_path

    def __repr__(self) -> str:
        extra = f", guest_path={self.guest_path!r}" if self.guest_path != "mmu" else ""
        return f"ModelKernel(design={self.design.name!r}{extra})"
