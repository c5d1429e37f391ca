"""Breadth-first exploration of one page's states, on snapshots of the model.

A `Machine` (model/pagestates.py declares the two there are) says what a
page state is, as a few named facts of one page read from the model, and
which operations may move the page (its `Move`s), from one or more setups.
`explore` runs it: from every state reached, every move the caller could
make, each on a fresh copy of the model state (ModelKernel.snapshot and
restore), recording where the page went, what a refused move answered, and
whether the host reached a private page's bytes (the audit event of P1,
model/observe.py).

The search is over abstract states: each is explored from the first model
state that reached it (its representative).  That keeps it small and finite
(the model never reuses a frame, so its own states never repeat), and the key
a state is explored under also says what the caller holds, so that every
move is tried wherever the caller could make it.

What is drawn is then made small enough to read (`project`): each of the
machine's coarsenings is applied where it loses nothing (every move tried in
two states it merges answers alike, and leads to states drawn alike), and,
while more than MAX_STATES states remain, the others in the order the
machine ranks them; the result says which it applied.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Protocol

from .. import uapi
from ..errors import MemorySignal, UsageError
from .designs import Design
from .events import HostAccessPrivate
from .kernel import ModelKernel
from .state import State

# A drawing with more states than this is coarsened.
MAX_STATES = 12


# --- what the exploration finds -------------------------------------------------------------------


@dataclass(frozen=True)
class PageState:
    """One drawn state: its facts (short phrases, in the machine's order), the
    component it belongs to ("" where a machine has one), and its tone, the
    kind of state the drawing colours it as."""

    facts: tuple[str, ...]
    group: str = ""
    tone: str = ""

    @property
    def label(self) -> str:
        return "\n".join(self.facts)


@dataclass(frozen=True)
class Transition:
    """A move from one drawn state: where it led and, if refused, the answer
    (an errno name, a signal name, or the exit a guest access ended in)."""

    src: int
    dst: int
    move: str
    refused: str = ""
    # The move let host userspace read or write a private page's bytes.
    private_bytes: bool = False


@dataclass(frozen=True)
class Start:
    """A setup, and the state it starts in."""

    label: str
    state: int


@dataclass(frozen=True)
class PageStates:
    """A page state machine as the exploration found it, ready to draw."""

    name: str
    title: str
    page: str  # what the page is, and the setup around it
    layout: str  # Graphviz's rankdir: "TB" or "LR"
    states: tuple[PageState, ...]
    starts: tuple[Start, ...]
    transitions: tuple[Transition, ...]
    # Moves refused with one answer wherever the caller could make them: said
    # once in the legend rather than as a loop on every state.
    refused_everywhere: tuple[tuple[str, str], ...]
    never_made: tuple[str, ...]  # moves the caller could make nowhere
    glossary: tuple[tuple[str, str], ...]  # (fact, meaning) for the facts drawn
    exact: tuple[str, ...]  # coarsenings applied that lose nothing
    coarsened: tuple[str, ...]  # coarsenings forced by the number of states
    explored: int  # abstract states explored

    def successes(self) -> list[Transition]:
        return [t for t in self.transitions if not t.refused]


# --- a machine ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """What the caller holds: its fds by role, its mapping, its pin, its frame."""

    fds: tuple[tuple[str, int], ...]
    addr: int | None = None  # the address of the caller's mapping of the page
    pin: int | None = None  # the address its GUP pin was made at
    pfn: int | None = None  # the physical page (the hypervisor's machine)

    def fd(self, role: str) -> int:
        return dict(self.fds)[role]


class Refused(Exception):
    """A call that returned, but without doing what was asked (a guest access
    that ended in an exit to the VMM): the message is the answer drawn."""


Step = Callable[[ModelKernel, Held], Held]
Guard = Callable[[ModelKernel, Held], bool]


def always(k: ModelKernel, h: Held) -> bool:
    return True


@dataclass(frozen=True)
class Move:
    """An operation that may move the page: its label, the call (which returns
    what the caller holds afterwards) and what the caller must hold to make
    it at all (a mapping to access, a reference to put: without it a call
    shows only the caller's own mistake)."""

    label: str
    step: Step
    when: Guard = always


@dataclass(frozen=True)
class Setup:
    """How a page comes to be: a label, the component it starts, the calls."""

    label: str
    group: str
    build: Callable[[ModelKernel], Held]


Facts = tuple[str, ...]


@dataclass(frozen=True)
class Coarsening:
    """A way to draw fewer states (merge or drop facts): a sentence saying
    what it does, the function, and its rank among coarsenings forced by the
    number of states (lowest first)."""

    about: str
    merge: Callable[[Facts], Facts]
    forced_rank: int = 0


class Machine(Protocol):
    """What a page state is, and what moves it (model/pagestates.py)."""

    name: str
    title: str
    page: str
    layout: str
    design: Design

    def setups(self) -> list[Setup]: ...

    def moves(self) -> list[Move]: ...

    def facts(self, k: ModelKernel, h: Held) -> Facts: ...

    def key(self, k: ModelKernel, h: Held) -> Hashable: ...

    def tone(self, facts: Facts) -> str: ...

    def glossary(self) -> list[tuple[str, str]]: ...

    def coarsenings(self) -> list[Coarsening]: ...


# --- exploring ------------------------------------------------------------------------------------------

Node = tuple[Facts, str]  # an explored state's facts and its group
Edge = tuple[int, int, str, str, bool]  # (node, node, move, refused, private bytes)


def _make(k: ModelKernel, move: Move, h: Held) -> tuple[Held, str]:
    """Make the move: what the caller holds afterwards, and the answer if refused."""
    try:
        return move.step(k, h), ""
    except UsageError as exc:  # the machine asked for a call no kernel would see
        raise AssertionError(f"{move.label}: {exc}") from exc
    except Refused as why:
        return h, str(why)
    except MemorySignal as sig:
        return h, sig.signal_name
    except OSError as exc:
        return h, uapi.errno_name(exc.errno or 0)


def explore(machine: Machine,
            kernel: Callable[[Design], ModelKernel] = ModelKernel) -> PageStates:
    """Breadth-first over the machine's states, from each of its setups, on
    kernel(design) (a variant of the model, such as a checker mutant, draws
    its own machine)."""
    k = kernel(machine.design)
    moves = machine.moves()
    index: dict[Hashable, int] = {}
    nodes: list[Node] = []
    todo: deque[tuple[int, State, Held]] = deque()
    starts: list[tuple[str, int]] = []
    edges: set[Edge] = set()
    # move -> node -> its answer there (None: it succeeded)
    tried: dict[str, dict[int, str | None]] = {m.label: {} for m in moves}

    def visit(h: Held, group: str) -> int:
        key = (group, machine.key(k, h))
        if key not in index:
            index[key] = len(nodes)
            nodes.append((machine.facts(k, h), group))
            k.drain_events()  # the audit trail is history, not state
            todo.append((index[key], k.snapshot(), h))
        return index[key]

    for setup in machine.setups():
        k.state = State()
        starts.append((setup.label, visit(setup.build(k), setup.group)))
    while todo:
        node, state, held = todo.popleft()
        for move in moves:
            k.restore(state)
            if not move.when(k, held):
                continue
            after, refused = _make(k, move, held)
            touched = any(isinstance(e, HostAccessPrivate) for e in k.drain_events())
            edges.add((node, visit(after, nodes[node][1]), move.label, refused, touched))
            tried[move.label][node] = refused or None
    return project(machine, nodes, starts, edges, tried)


# --- drawing fewer states -------------------------------------------------------------------------------


def _projector(cs: Sequence[Coarsening]) -> Callable[[Node], Node]:
    def project(n: Node) -> Node:
        facts = n[0]
        for c in cs:
            facts = c.merge(facts)
        return facts, n[1]
    return project


def _exact(nodes: list[Node], edges: set[Edge], project: Callable[[Node], Node]) -> bool:
    """Whether drawing the states as project() says loses nothing: any two
    explored states it draws as one answer every move tried in both alike,
    and lead to states drawn alike.  (A move tried in only one of them is one
    whose guard tells them apart, such as put_pfn where a reference is held.)"""
    out: dict[int, dict[str, tuple[str, Node, bool]]] = {}
    for s, d, move, refused, touched in edges:
        out.setdefault(s, {})[move] = (refused, project(nodes[d]), touched)
    drawn: dict[Node, list[int]] = {}
    for i, n in enumerate(nodes):
        drawn.setdefault(project(n), []).append(i)
    for members in drawn.values():
        for a, b in combinations(members, 2):
            mine, theirs = out.get(a, {}), out.get(b, {})
            if any(mine[m] != theirs[m] for m in mine.keys() & theirs.keys()):
                return False
    return True


def project(machine: Machine, nodes: list[Node], starts: list[tuple[str, int]],
            edges: set[Edge], tried: dict[str, dict[int, str | None]]) -> PageStates:
    """The explored states as drawn: coarsened (see the module's text), moves
    refused everywhere said once, moves that change nothing drawn left out."""
    coarsenings = machine.coarsenings()

    def count(cs: Sequence[Coarsening]) -> int:
        p = _projector(cs)
        return len({p(n) for n in nodes})

    applied: list[Coarsening] = []
    for c in coarsenings:
        if count([*applied, c]) < count(applied) and _exact(nodes, edges, _projector([*applied, c])):
            applied.append(c)
    exact = len(applied)
    for c in sorted(coarsenings, key=lambda c: c.forced_rank):
        if count(applied) <= MAX_STATES:
            break
        if c not in applied and count([*applied, c]) < count(applied):
            applied.append(c)
    p = _projector(applied)
    drawn: dict[Node, int] = {}
    node_state = [drawn.setdefault(p(n), len(drawn)) for n in nodes]
    moves = list(tried)
    everywhere = []
    for move in moves:
        answers = set(tried[move].values())
        if len(tried[move]) > 1 and len(answers) == 1 and None not in answers:
            everywhere.append((move, str(answers.pop())))
    hoisted = {move for move, _ in everywhere}
    transitions = {Transition(node_state[s], node_state[d], move, refused, touched)
                   for s, d, move, refused, touched in edges
                   if move not in hoisted
                   and (node_state[s] != node_state[d] or refused or touched)}
    order = {move: i for i, move in enumerate(moves)}
    shown = {f for facts, _ in drawn for f in facts}
    return PageStates(
        name=machine.name, title=machine.title, page=machine.page, layout=machine.layout,
        states=tuple(PageState(f, g, machine.tone(f)) for f, g in drawn),
        starts=tuple(Start(label, node_state[n]) for label, n in starts),
        transitions=tuple(sorted(transitions, key=lambda t: (t.src, t.dst, order[t.move],
                                                              t.refused, t.private_bytes))),
        refused_everywhere=tuple(everywhere),
        never_made=tuple(m for m in moves if not tried[m]),
        glossary=tuple((f, meaning) for f, meaning in machine.glossary()
                       if any(re.search(rf"(^|\s){re.escape(f)}(\s|$)", s) for s in shown)),
        exact=tuple(c.about for c in applied[:exact]),
        coarsened=tuple(c.about for c in applied[exact:]),
        explored=len(nodes))
