"""The model's components, and how they are assembled into one kernel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core import Component, Core
from .designs import Design
from .fileops import FileOps
from .gup import Gup
from .legacy import Legacy
from .observe import Observer
from .pkvm import Pkvm
from .state import State

KINDS = ("kvm", "vm", "vcpu", "gmem", "memfd", "shmem", "restricted")


@dataclass(frozen=True)
class Blueprint:
    """The class of each component: the model's own, or a subclass of one (the
    checker's mutants plug in a broken variant this way)."""

    legacy: type[Legacy] = Legacy
    pkvm: type[Pkvm] = Pkvm
    gup: type[Gup] = Gup
    observer: type[Observer] = Observer


@dataclass
class Parts:
    """Every component of one model kernel."""

    core: Core
    legacy: Legacy
    pkvm: Pkvm
    gup: Gup
    observer: Observer

    def components(self) -> tuple[Component, ...]:
        return (self.legacy, self.pkvm, self.gup, self.observer)

    def repoint(self, state: State) -> None:
        """Make state the one every component works on (ModelKernel.restore)."""
        self.core.state = state
        for c in self.components():
            c.state = state


def assemble(design: Design, guest_path: str, blueprint: Blueprint,
             operate: Callable[[str, dict[str, Any]], Any]) -> Parts:
    """Build the components and connect each to the peers it talks to."""
    core = Core(design, guest_path)
    p = Parts(core=core, legacy=blueprint.legacy(core), pkvm=blueprint.pkvm(core),
              gup=blueprint.gup(core), observer=blueprint.observer(core))
    legacy = p.legacy
    legacy.operate = operate
    legacy.pkvm = p.pkvm
    legacy.observer = p.observer
    p.gup.connect(mm=legacy)
    core.destroy_vm = legacy._destroy_vm
    core.refs_dropped = legacy._host_refs_dropped
    core.ops = {kind: FileOps(release=legacy._release_file) for kind in KINDS}
    return p
