"""The root of the operation groups not yet composed as components.

Hook defaults the groups below override; the plumbing they share lives in
the core (core.py).
"""

from __future__ import annotations

from typing import Any

from .core import Component
from .mm import AddressSpace
from .pkvm import Pkvm
from .ptes import HostPtes
from .state import Inode, Vm


class ModelBase(Component):
    """The shared state plus the hooks the groups fill in."""

    mm: AddressSpace
    ptes: HostPtes
    pkvm: Pkvm

    def _destroy_vm(self, vm: Vm) -> None:
        """Free memslots of a VM nobody references any more."""
        vm.memslots.clear()

    # --- hooks the designs fill in ----------------------------------------------

    def _host_refs_dropped(self, inode: Inode, first: int, last: int) -> None:
        """References on pages [first, last) went away (PTE, pin or get_pfn)."""

    def _design_blocker(self, actor: str, pending: Any) -> str | None:
        """Why a design keeps actor's next step waiting (model/steps.py), or None."""
        return None
