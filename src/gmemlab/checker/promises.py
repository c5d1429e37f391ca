"""The promises the checker proves or refutes (docs/CHECKER.md has the full text).

Each promise is judged on what the model states about itself (model/observe.py):
the events a step recorded (audit events, notifier calls), and the facts of a
state (private pages, host references, mappings, outstanding references,
pKVM ownership).  Which promises apply is the design's answer
(Design.promises()); a scenario may narrow them.

* P1..P3, P7 are state or event invariants, checked after every step, and P9
  an event invariant (the model records a use of a file it saw unmapped with
  references outstanding, whatever the design then did to the file);
* P4 compares a step's before and after;
* P5 follows every notifier through the protocol (the monitor below), judged
  when an mmap's protocol ends, and in every state KVM may wait for an
  mmap_end only while an mmap of the file is in progress;
* P6 is judged in the states where every actor has finished;
* P8 is a property of the whole state graph (explore.py): from every
  reachable state, every actor can still finish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..model import events as ev

PROMISES: dict[str, str] = {
    "P1": "host userspace never reads or writes the bytes of a private page",
    "P2": "while a restricted file is mapped, no page bound to it is private and no new "
          "get_pfn reference is taken",
    "P3": "at most one mapping of a seed (restricted) file",
    "P4": "no page becomes private while a host reference or pin on it is held",
    "P5": "every mmap_start is answered by exactly one mmap_end or mmap_abort, aborts in "
          "reverse order",
    "P6": "no reference is leaked: none is outstanding once every actor has finished",
    "P7": "pKVM page ownership stays consistent, and the host never reaches a frame it does not own",
    "P8": "no deadlock: from every reachable state, every actor can still finish",
    "P9": "a file unmapped while references are outstanding is dead: no get_pfn, guest access "
          "or new mapping reaches it again",
}
ORDER = tuple(PROMISES)


class Evidence(Enum):
    """What shows a violation in the state or the events it ends in: the audit events
    of one kind (model-only op audit_log), or facts of the state (op observe)."""

    HOST_ACCESS = "host_access_private"  # events
    PRIVATE_WHILE_MAPPED = "private_while_mapped"  # events
    GET_PFN_WHILE_MAPPED = "get_pfn_while_mapped"  # events
    NOTIFY = "notify"  # events: the protocol's calls
    STALE_USE = "stale_use"  # events
    HOST_UNOWNED = "host_access_unowned"  # events
    KVM_PENDING = "mmap_pending stray_mmap_pending"  # facts: KVM waits for nobody
    MAPPINGS = "mappings"  # facts
    MAPPED_PRIVATE = "private_pages mappings"  # facts
    PRIVATE_REFERENCED = "private_pages host_references"  # facts
    OUTSTANDING = "outstanding_references"  # facts
    PKVM = "pkvm_problems"  # facts
    STUCK = "mmap_pending mappings outstanding_references"  # facts: why an actor never finishes

    @property
    def is_event(self) -> bool:
        return " " not in self.value and self.value in EVENT_KINDS

    @property
    def facts(self) -> tuple[str, ...]:
        return tuple(self.value.split())


EVENT_KINDS = frozenset({"host_access_private", "private_while_mapped", "get_pfn_while_mapped",
                         "notify", "stale_use", "host_access_unowned"})


@dataclass(frozen=True)
class Violation:
    """A broken promise: which, in words, and what in the state or its events shows it."""

    promise: str
    message: str
    evidence: Evidence
    inode: int | None = None  # the file it concerns, where one does

    def __str__(self) -> str:
        return f"{self.promise}: {self.message}"


# An observer: the value of one model hook (model/observe.py) in a state.
Observe = Callable[[str], Any]


def _pages(first: int, last: int) -> str:
    return f"page {first}" if last == first + 1 else f"pages {first}..{last - 1}"


# --- events of one step --------------------------------------------------------------------------


def event_violations(events: tuple[ev.Event, ...], active: frozenset[str]) -> list[Violation]:
    out = []
    for e in events:
        if isinstance(e, ev.HostAccessPrivate) and "P1" in active:
            out.append(Violation("P1", f"host userspace {'wrote' if e.write else 'read'} "
                                       f"private page {e.index} of inode {e.ino}",
                                 Evidence.HOST_ACCESS, e.ino))
        elif isinstance(e, ev.PrivateWhileMapped) and "P2" in active:
            out.append(Violation("P2", f"a page of inode {e.ino} (from page {e.index}) became private "
                                       "while the file is mapped", Evidence.PRIVATE_WHILE_MAPPED,
                                 e.ino))
        elif isinstance(e, ev.GetPfnWhileMapped) and "P2" in active:
            out.append(Violation("P2", f"get_pfn took a new reference on page {e.index} of inode "
                                       f"{e.ino} while the file is mapped",
                                 Evidence.GET_PFN_WHILE_MAPPED, e.ino))
        elif isinstance(e, ev.HostAccessUnowned) and "P7" in active:
            out.append(Violation("P7", f"host userspace {'wrote' if e.write else 'read'} page {e.index} "
                                       f"of inode {e.ino}, whose frame pKVM gave away (host state "
                                       "NOPAGE)", Evidence.HOST_UNOWNED, e.ino))
        elif isinstance(e, ev.StaleUse) and "P9" in active:
            what = "was mapped again" if e.what == "mmap" else f"gave page {e.index} to a {e.what}"
            out.append(Violation("P9", f"inode {e.ino}, unmapped while references were outstanding, "
                                       f"{what}", Evidence.STALE_USE, e.ino))
    return out


# --- P5: the notifier protocol, per file --------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """Where one file's mmap notifier protocol stands: the notifiers whose
    mmap_start succeeded and that have had no answer yet (in call order), and
    whether a notifier has refused (then only aborts may follow)."""

    started: tuple[str, ...] = ()
    refused: bool = False


EMPTY = Protocol()


def protocol_step(p: Protocol, e: ev.Notify | ev.MmapDone) -> tuple[Protocol, list[str]]:
    """Follow one notify/mmap_done event; the protocol's new state and what it broke."""
    bad: list[str] = []
    if isinstance(e, ev.MmapDone):
        if p.started:
            names = ", ".join(p.started)
            bad.append(f"the mmap {'failed' if e.error else 'succeeded'} and notifier(s) {names} saw "
                       "mmap_start and neither mmap_end nor mmap_abort")
        return EMPTY, bad
    name, event, err = e.notifier, e.event, e.err
    started = p.started
    if event == "mmap_start":
        if name in started:
            bad.append(f"notifier {name} got a second mmap_start before an answer to the first")
        if err:
            return Protocol(started, True), bad
        return Protocol((*started, name), p.refused), bad
    if event == "mmap_end":
        if name not in started:
            bad.append(f"notifier {name} got mmap_end without an unanswered successful mmap_start")
        elif p.refused:
            bad.append(f"notifier {name} got mmap_end although a notifier refused the mapping")
        return Protocol(tuple(n for n in started if n != name), p.refused), bad
    if event == "mmap_abort":
        if name not in started:
            bad.append(f"notifier {name} got mmap_abort without an unanswered successful mmap_start "
                       "(the notifier that refuses gets neither)")
        elif started[-1] != name:
            bad.append(f"notifier {name} got mmap_abort before {started[-1]}, which started after it: "
                       "aborts must go in reverse order")
        return Protocol(tuple(n for n in started if n != name), p.refused), bad
    return p, bad


def kvm_pending_violations(stray: tuple[tuple[int, int, int], ...]) -> list[Violation]:
    """KVM waits for an mmap_end only while an mmap of the file is in progress."""
    return [Violation("P5", f"KVM's notifier for memslot {slot & 0xFFFF} of VM {vm} waits for "
                            f"mmap_end/mmap_abort while no mmap holds the lock of inode {ino} (an mmap "
                            "holds it across its notifier calls): conversions of its gfns are refused",
                      Evidence.KVM_PENDING, ino)
            for vm, slot, ino in stray]


def protocol_violations(ino: int, broken: list[str]) -> list[Violation]:
    """P5 as the notifier protocol of inode ino broke it (protocol_step's words)."""
    return [Violation("P5", f"inode {ino}: {b}", Evidence.NOTIFY, ino) for b in broken]


# --- states ------------------------------------------------------------------------------------------


def state_violations(obs: Observe, active: frozenset[str]) -> list[Violation]:
    out = []
    if "P2" in active or "P3" in active:
        mappings = obs("mapping_counts")
        if "P3" in active:
            out += [Violation("P3", f"inode {ino} has {n} mappings", Evidence.MAPPINGS, ino)
                    for ino, n in mappings if n > 1]
        if "P2" in active and mappings:
            mapped = {ino for ino, n in mappings if n}
            out += [Violation("P2", f"inode {ino} is mapped while its {_pages(s, e)} "
                                    f"{'is' if e == s + 1 else 'are'} private",
                              Evidence.MAPPED_PRIVATE, ino)
                    for ino, s, e in obs("private_pages") if ino in mapped]
    if "P5" in active:
        out += kvm_pending_violations(obs("stray_mmap_pending"))
    if "P7" in active:
        out += [Violation("P7", p, Evidence.PKVM) for p in obs("pkvm_problems")]
    return out


def _minus(new: tuple[tuple[int, int, int], ...],
           old: tuple[tuple[int, int, int], ...]) -> list[tuple[int, int, int]]:
    """The runs (inode, first, last) of new that old does not cover (both sorted and
    merged per inode, as the private_pages hook gives them).  On runs, not pages: a
    file's attribute may cover its whole index space."""
    out = []
    for ino, s, e in new:
        pos = s
        for oino, olo, ohi in old:
            if oino != ino or ohi <= pos or olo >= e:
                continue
            if olo > pos:
                out.append((ino, pos, olo))
            pos = max(pos, ohi)
        if pos < e:
            out.append((ino, pos, e))
    return out


def newly_private_violations(before: Observe, after: Observe) -> list[Violation]:
    """P4: pages private after the step and not before, with a host reference held."""
    old, new = before("private_pages"), after("private_pages")
    if old == new:
        return []
    fresh = _minus(new, old)
    if not fresh:
        return []
    out = []
    for ino, s, e, n in after("host_references"):
        hit = [(max(s, fs), min(e, fe)) for fino, fs, fe in fresh if fino == ino and max(s, fs) < min(e, fe)]
        if hit:
            first, last = min(lo for lo, _ in hit), max(hi for _, hi in hit)
            out.append(Violation("P4", f"{_pages(first, last)} of inode {ino} became private "
                                       f"with {n} host reference(s) (mappings or pins) held",
                                 Evidence.PRIVATE_REFERENCED, ino))
    return out


def terminal_violations(obs: Observe, active: frozenset[str]) -> list[Violation]:
    if "P6" not in active:
        return []
    return [Violation("P6", f"{n} reference(s) on {_pages(s, e)} of inode {ino} outstanding after "
                            "every actor finished", Evidence.OUTSTANDING, ino)
            for ino, s, e, n in obs("outstanding_references")]
