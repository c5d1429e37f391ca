"""The model's components, and how they are assembled into one kernel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core import Component, Core
from .designs import Design
from .fileops import FileOps, noop_llseek
from .gup import Gup
from .legacy import Legacy
from .mempolicy import MemoryPolicy
from .mm import AddressSpace
from .observe import Observer
from .pkvm import Pkvm
from .ptes import HostPtes
from .shmem import Shmem
from .state import State
from .vfs import Vfs


@dataclass(frozen=True)
class Blueprint:
    """The class of each component: the model's own, or a subclass of one (the
    checker's mutants plug in a broken variant this way)."""

    legacy: type[Legacy] = Legacy
    ptes: type[HostPtes] = HostPtes
    mm: type[AddressSpace] = AddressSpace
    mempolicy: type[MemoryPolicy] = MemoryPolicy
    vfs: type[Vfs] = Vfs
    shmem: type[Shmem] = Shmem
    pkvm: type[Pkvm] = Pkvm
    gup: type[Gup] = Gup
    observer: type[Observer] = Observer


@dataclass
class Parts:
    """Every component of one model kernel."""

    core: Core
    legacy: Legacy
    ptes: HostPtes
    mm: AddressSpace
    mempolicy: MemoryPolicy
    vfs: Vfs
    shmem: Shmem
    pkvm: Pkvm
    gup: Gup
    observer: Observer

    def components(self) -> tuple[Component, ...]:
        return (self.legacy, self.ptes, self.mm, self.mempolicy, self.vfs, self.shmem, self.pkvm,
                self.gup, self.observer)

    def repoint(self, state: State) -> None:
        """Make state the one every component works on (ModelKernel.restore)."""
        self.core.state = state
        for c in self.components():
            c.state = state


def assemble(design: Design, guest_path: str, blueprint: Blueprint,
             operate: Callable[[str, dict[str, Any]], Any]) -> Parts:
    """Build the components and connect each to the peers it talks to."""
    core = Core(design, guest_path)
    b = blueprint
    p = Parts(core=core, legacy=b.legacy(core), ptes=b.ptes(core), mm=b.mm(core),
              mempolicy=b.mempolicy(core), vfs=b.vfs(core), shmem=b.shmem(core),
              pkvm=b.pkvm(core), gup=b.gup(core), observer=b.observer(core))
    legacy = p.legacy
    legacy.operate = operate
    legacy.mm, legacy.ptes, legacy.pkvm = p.mm, p.ptes, p.pkvm
    p.mm.connect(ptes=p.ptes, pkvm=p.pkvm, observer=p.observer)
    p.mempolicy.connect(mm=p.mm)
    p.shmem.connect(ptes=p.ptes)
    p.gup.connect(mm=p.mm, ptes=p.ptes)
    core.destroy_vm = legacy._destroy_vm
    core.refs_dropped = legacy._host_refs_dropped
    shmem = p.shmem.file_ops()
    core.ops = {
        "kvm": FileOps(seekable=True, llseek=noop_llseek),
        "vm": FileOps(noexec=True, llseek=noop_llseek),
        "vcpu": FileOps(noexec=True, llseek=noop_llseek, mmap=legacy._mmap_vcpu,
                        fault=legacy._fault_vcpu),
        "gmem": FileOps(regular=True, noexec=True, mmap=legacy._mmap_gmem,
                        fault=legacy._fault_gmem, fallocate=legacy._fallocate_gmem,
                        release=legacy._release_gmem, refuses_page=legacy._gmem_refuses_page,
                        why_sigbus=legacy._gmem_why_sigbus),
        "memfd": shmem,
        "shmem": shmem,
        "restricted": legacy._restricted_file_ops(),
    }
    p.mm.use_file_ops(core.ops)
    return p
