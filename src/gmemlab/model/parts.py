"""The model's components, and how they are assembled into one kernel.

Each component is a plain class over the shared state (core.py); this module
builds one of each, hands each the peers it talks to, and puts together the
operations of every kind of file (fileops.py), each table built by the
component that implements the kind.  Nothing here decides behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .core import Component, Core
from .designs import Design
from .fileops import FileOps
from .gmem import GuestMemfd
from .gup import Gup
from .inplace import InPlace
from .kvm import Kvm
from .mempolicy import MemoryPolicy
from .mm import AddressSpace
from .notifiers import Notifiers
from .observe import Observer
from .pkvm import Pkvm
from .ptes import HostPtes
from .restricted import RestrictedMemfd
from .restricted_kvm import RestrictedKvm
from .shmem import Shmem
from .state import State
from .steps import Steps
from .vcpus import Vcpus
from .vfs import Vfs


@dataclass(frozen=True)
class Blueprint:
    """The class of each component: the model's own, or a subclass of one (the
    checker's mutants plug in a broken variant this way)."""

    ptes: type[HostPtes] = HostPtes
    mm: type[AddressSpace] = AddressSpace
    mempolicy: type[MemoryPolicy] = MemoryPolicy
    vfs: type[Vfs] = Vfs
    shmem: type[Shmem] = Shmem
    kvm: type[Kvm] = Kvm
    vcpus: type[Vcpus] = Vcpus
    gmem: type[GuestMemfd] = GuestMemfd
    inplace: type[InPlace] = InPlace
    restricted: type[RestrictedMemfd] = RestrictedMemfd
    notifiers: type[Notifiers] = Notifiers
    restricted_kvm: type[RestrictedKvm] = RestrictedKvm
    pkvm: type[Pkvm] = Pkvm
    gup: type[Gup] = Gup
    steps: type[Steps] = Steps
    observer: type[Observer] = Observer


@dataclass
class Parts:
    """Every component of one model kernel (the same names as Blueprint's)."""

    core: Core
    ptes: HostPtes
    mm: AddressSpace
    mempolicy: MemoryPolicy
    vfs: Vfs
    shmem: Shmem
    kvm: Kvm
    vcpus: Vcpus
    gmem: GuestMemfd
    inplace: InPlace
    restricted: RestrictedMemfd
    notifiers: Notifiers
    restricted_kvm: RestrictedKvm
    pkvm: Pkvm
    gup: Gup
    steps: Steps
    observer: Observer

    def __post_init__(self) -> None:
        self.components: tuple[Component, ...] = tuple(
            getattr(self, f.name) for f in fields(Blueprint))

    def repoint(self, state: State) -> None:
        """Make state the one every component works on (ModelKernel.restore,
        and the checker, which sets a state for every step it runs)."""
        self.core.state = state
        for c in self.components:
            c.state = state


def assemble(design: Design, guest_path: str, blueprint: Blueprint,
             operate: Callable[[str, dict[str, Any]], Any]) -> Parts:
    """Build the components and connect each to the peers it talks to."""
    core = Core(design, guest_path)
    b = blueprint
    p = Parts(core=core, ptes=b.ptes(core), mm=b.mm(core), mempolicy=b.mempolicy(core),
              vfs=b.vfs(core), shmem=b.shmem(core), kvm=b.kvm(core), vcpus=b.vcpus(core),
              gmem=b.gmem(core), inplace=b.inplace(core), restricted=b.restricted(core),
              notifiers=b.notifiers(core), restricted_kvm=b.restricted_kvm(core),
              pkvm=b.pkvm(core), gup=b.gup(core), steps=b.steps(core),
              observer=b.observer(core))
    p.mm.connect(ptes=p.ptes, pkvm=p.pkvm, observer=p.observer)
    p.mempolicy.connect(mm=p.mm)
    p.shmem.connect(ptes=p.ptes)
    p.kvm.connect(pkvm=p.pkvm, restricted_kvm=p.restricted_kvm)
    p.vcpus.connect(kvm=p.kvm, mm=p.mm)
    p.gmem.connect(ptes=p.ptes)
    p.inplace.connect(gmem=p.gmem, ptes=p.ptes)
    p.restricted.connect(gmem=p.gmem, notifiers=p.notifiers, mm=p.mm)
    p.restricted_kvm.connect(mm=p.mm, ptes=p.ptes)
    p.gup.connect(mm=p.mm, ptes=p.ptes)
    p.steps.connect(mm=p.mm, kvm=p.kvm, restricted=p.restricted, notifiers=p.notifiers,
                    inplace=p.inplace, operate=operate)
    # The two events the core raises for components above it.
    core.destroy_vm = p.kvm.destroy_vm
    core.refs_dropped = p.inplace.refs_dropped
    core.ops = file_operations(p)
    p.mm.use_file_ops(core.ops)
    return p


def file_operations(p: Parts) -> dict[str, FileOps]:
    """The operations of every kind of file (OpenFile.kind)."""
    shmem = p.shmem.file_ops()
    return {
        "kvm": p.kvm.dev_file_ops(),
        "vm": p.kvm.vm_file_ops(),
        "vcpu": p.vcpus.file_ops(),
        "gmem": p.gmem.file_ops(),
        "restricted": p.restricted.file_ops(),
        "memfd": shmem,
        "shmem": shmem,  # shared anonymous memory: a shmem file without an fd
    }
