"""What the model records as it runs, for the checker's promises.

The model appends an event where something a promise cares about happens;
the checker reads them after each step (model/observe.py drains them).  Each
event is a frozen record of one kind, so the model and the checker agree on
its fields by type, not by position in a tuple.  The model-only case
operation `audit_log` lists them as their kind followed by their fields.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str]
    ino: int  # the file it concerns

    def as_list(self) -> list[Any]:
        """The event as audit_log shows it: its kind, then its fields."""
        return [self.kind, *self.fields()]

    def fields(self) -> list[Any]:
        return list(astuple(self))


@dataclass(frozen=True)
class HostAccessPrivate(Event):
    """A host load or store reached the bytes of a private page (P1)."""

    kind: ClassVar[str] = "host_access_private"
    index: int
    write: bool

    def fields(self) -> list[Any]:  # (as the case files have always listed it)
        return ["write" if self.write else "read", self.ino, self.index]


@dataclass(frozen=True)
class PrivateWhileMapped(Event):
    """A page of a mapped restricted memfd turned private (P2)."""

    kind: ClassVar[str] = "private_while_mapped"
    index: int


@dataclass(frozen=True)
class GetPfnWhileMapped(Event):
    """get_pfn took a reference while the file was mapped (P2)."""

    kind: ClassVar[str] = "get_pfn_while_mapped"
    index: int


@dataclass(frozen=True)
class Notify(Event):
    """A notifier call of the restricted memfd, and what it returned (P5)."""

    kind: ClassVar[str] = "notify"
    notifier: str
    event: str  # mmap_start, mmap_end, mmap_abort, invalidate_start, invalidate_end
    err: int


@dataclass(frozen=True)
class MmapDone(Event):
    """An mmap's notifier protocol is over (P5 judges who is still waiting)."""

    kind: ClassVar[str] = "mmap_done"
    error: int


@dataclass(frozen=True)
class StaleUse(Event):
    """A use of a file that was unmapped with references outstanding (P9)."""

    kind: ClassVar[str] = "stale_use"
    what: str  # "get_pfn", "guest access", "mmap"
    index: int = -1


@dataclass(frozen=True)
class HostAccessGuestPage(Event):
    """A host access to a page a pKVM guest owns (the hypervisor refused it)."""

    kind: ClassVar[str] = "host_access_guest_page"
    index: int


@dataclass(frozen=True)
class HostAccessUnowned(Event):
    """A host load or store reached a frame pKVM says the host does not own (P7)."""

    kind: ClassVar[str] = "host_access_unowned"
    index: int
    write: bool


# The events that drive the mmap notifier protocol's monitor (P5).
PROTOCOL = (Notify, MmapDone)
