"""Scenarios: a design, a small configuration and a few concurrent actors.

A scenario is what the checker explores: a model kernel of one design, set up
sequentially (a file, a VM, memslots, notifiers, vCPUs), then a few actors
(VMM threads, a guest's vCPU, KVM itself) each running a short program of
model operations.  The checker interleaves the actors' atomic steps in every
possible order.

Scenarios are TOML files (docs/CHECKER.md has the format; the project's own
are in scenarios/ at the top of the repository) or Python objects built with
the dataclasses below.  Arguments are spelt as in case files: flag names,
"$name" and "$name+N" references to names bound by the setup or by an earlier
step of the same actor.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .. import uapi
from ..errors import UsageError
from ..interface import op_signature
from ..model.designs import make_design
from ..spelling import REF, call_arguments, vocabulary_problem

P = uapi.PAGE_SIZE
GPA_BASE = 0x100000  # guest physical address of the file's first page
# Operations an actor may not run: they drive or inspect the interleaving itself.
NOT_FOR_ACTORS = frozenset({"actor_begin", "actor_step", "observe", "audit_log"})
ACTION_KEYS = frozenset({"op", "as", "retry", "needs", "note", "must_succeed"})
TOP_KEYS = frozenset({"name", "about", "design", "config", "setup", "actor", "symmetry", "promises"})
CONFIG_KEYS = frozenset({"pages", "memslots", "vm_type", "order", "fail", "vcpus", "gmem_flags"})


class ScenarioError(UsageError):
    """A scenario that cannot be checked as written (what is wrong, and where)."""


@dataclass(frozen=True)
class Action:
    """One operation of an actor's program (or of the setup)."""

    op: str
    args: tuple[tuple[str, Any], ...]  # as a case step spells them: flag names, $references
    bind: str | None = None  # `as`: the name the result is bound to
    retry: tuple[int, ...] = ()  # errnos on which the actor tries the operation again
    needs: tuple[str, ...] = ()  # names that must be bound (their operation succeeded)
    note: str = ""
    # The scenario means this step to succeed in some interleaving: if it never
    # does, the verdict is vacuous and the check fails (coverage.py).
    must_succeed: bool = False

    def refs(self) -> set[str]:
        return {m.group(1) for m in (REF.match(v.strip()) for v in _strings(dict(self.args)))
                if m is not None} | set(self.needs)

    def show(self) -> str:
        args = ", ".join(f"{k}={hex(v) if k == 'fill' and isinstance(v, int) else _show_arg(v)}"
                         for k, v in self.args)
        return f"{self.op}({args})"


@dataclass(frozen=True)
class Actor:
    name: str
    actions: tuple[Action, ...]
    about: str = ""


@dataclass(frozen=True)
class Symmetry:
    """Interchangeable pages: permuting `pages` of the file $f (and the gfns
    bound to them) while permuting `actors` the same way maps the scenario
    onto itself (actor i works on page i)."""

    pages: tuple[int, ...]
    actors: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    """The setup the checker builds when a scenario gives no explicit one."""

    pages: int = 2  # size of the file, in pages
    memslots: int = 1  # memslots the file is split into (equal parts, adjacent gpas)
    vm_type: int = uapi.KVM_X86_SW_PROTECTED_VM
    # Registration order of the file's notifiers: "slotN" binds memslot N (KVM's
    # notifier), any other name registers a scripted notifier.
    order: tuple[str, ...] = ()
    fail: tuple[tuple[str, str], ...] = ()  # scripted notifier -> errno its mmap_start returns
    vcpus: int = 1
    gmem_flags: int = 0  # guest_memfd designs: KVM_CREATE_GUEST_MEMFD flags

    def slot_order(self) -> tuple[str, ...]:
        return self.order or tuple(f"slot{i}" for i in range(self.memslots))


@dataclass(frozen=True)
class Scenario:
    name: str
    design: str
    actors: tuple[Actor, ...]
    config: Config = field(default_factory=Config)
    setup: tuple[Action, ...] = ()  # explicit setup; empty: built from config
    about: str = ""
    symmetry: tuple[Symmetry, ...] = ()
    promises: tuple[str, ...] = ()  # check only these (default: all the design makes)
    path: str | None = None

    def with_design(self, design: str | None) -> Scenario:
        return self if design is None else replace(self, design=design)

    def setup_actions(self) -> tuple[Action, ...]:
        return self.setup or config_setup(self.config, self.design)

    def setup_names(self) -> set[str]:
        return {a.bind for a in self.setup_actions() if a.bind}

    def actor(self, name: str) -> Actor:
        for a in self.actors:
            if a.name == name:
                return a
        raise KeyError(name)


def config_setup(c: Config, design: str) -> tuple[Action, ...]:
    """The setup for a configuration: the file, the VM, memslots and notifiers in
    the given order, vCPUs.  Names: $f, $vm, $cpu (= $cpu0) ... $cpuN-1, $gpa
    (the file's first page in the guest), $size (the file's size in bytes)."""
    kind = make_design(design).kvm.private_file.value
    size = c.pages * P
    slot_bytes = size // c.memslots
    out: list[Action] = []
    if kind == "restricted":
        out += [Action("memfd_restricted", (("flags", 0),), "f"),
                Action("ftruncate", (("fd", "$f"), ("length", size)))]
    out.append(Action("create_vm", (("type", c.vm_type),), "vm"))
    if kind != "restricted":
        out.append(Action("create_guest_memfd", (("vm", "$vm"), ("size", size), ("flags", c.gmem_flags)),
                          "f"))
    fail = dict(c.fail)
    for entry in c.slot_order():
        if entry.startswith("slot") and entry[4:].isdigit():
            n = int(entry[4:])
            out.append(Action("set_user_memory_region2", (
                ("vm", "$vm"), ("slot", n), ("flags", "GUEST_MEMFD"),
                ("guest_phys_addr", GPA_BASE + n * slot_bytes), ("memory_size", slot_bytes),
                ("userspace_addr", 0), ("guest_memfd", "$f"), ("guest_memfd_offset", n * slot_bytes))))
        else:
            args: tuple[tuple[str, Any], ...] = (("fd", "$f"), ("name", entry))
            if entry in fail:
                args += (("fail", {"mmap_start": fail[entry]}),)
            out.append(Action("add_notifier", args))
    for i in range(c.vcpus):
        out.append(Action("create_vcpu", (("vm", "$vm"), ("id", i)), f"cpu{i}"))
    return tuple(out)


def fixed_names(c: Config, explicit_setup: bool) -> dict[str, int]:
    """The values a generated setup names without binding them ($cpu is an alias of $cpu0)."""
    return {} if explicit_setup else {"gpa": GPA_BASE, "size": c.pages * P}


# --- loading ----------------------------------------------------------------------------------


def bundled_scenarios() -> Path:
    """The project's scenarios/ folder (installed with the package)."""
    packaged = resources.files("gmemlab") / "checker" / "scenarios"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "scenarios"


def find(name_or_path: str) -> Path:
    """A scenario file: a path, or the name of a bundled scenario."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = bundled_scenarios() / f"{name_or_path.removesuffix('.toml')}.toml"
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in bundled_scenarios().glob("*.toml")))
    raise ScenarioError(f"no scenario file {name_or_path!r} (bundled scenarios: {known})")


def load(name_or_path: str) -> Scenario:
    path = find(name_or_path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    try:
        sc = parse(doc, default_name=path.stem)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return replace(sc, path=str(path))


def parse(doc: dict[str, Any], default_name: str = "scenario") -> Scenario:
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise ScenarioError(f"unknown keys {sorted(unknown)} (a scenario has {', '.join(sorted(TOP_KEYS))})")
    design = doc.get("design")
    if not isinstance(design, str):
        raise ScenarioError("a scenario names its design: design = \"seed\"")
    config = _config(doc.get("config", {}))
    setup = tuple(_action(raw, f"setup step {i}") for i, raw in enumerate(_list(doc, "setup"), 1))
    actors = []
    for i, raw in enumerate(_list(doc, "actor"), 1):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ScenarioError(f"actor {i}: an [[actor]] table needs a name")
        extra = set(raw) - {"name", "about", "steps"}
        if extra:
            raise ScenarioError(f"actor {raw['name']}: unknown keys {sorted(extra)}")
        steps = raw.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ScenarioError(f"actor {raw['name']}: steps must be a non-empty array")
        actors.append(Actor(raw["name"], tuple(_action(s, f"actor {raw['name']} step {j}")
                                               for j, s in enumerate(steps, 1)),
                            str(raw.get("about", ""))))
    symmetry = []
    for raw in _list(doc, "symmetry"):
        if not isinstance(raw, dict) or set(raw) != {"pages", "actors"}:
            raise ScenarioError("a [[symmetry]] table has pages = [...] and actors = [...]")
        pages, actors_ = raw["pages"], raw["actors"]
        if not isinstance(pages, list) or not all(isinstance(p, int) and not isinstance(p, bool)
                                                  and p >= 0 for p in pages):
            raise ScenarioError(f"[[symmetry]]: pages must be a list of page numbers, not {pages!r}")
        if not isinstance(actors_, list) or not all(isinstance(a, str) for a in actors_):
            raise ScenarioError(f"[[symmetry]]: actors must be a list of actor names, not "
                                f"{actors_!r}")
        symmetry.append(Symmetry(tuple(raw["pages"]), tuple(raw["actors"])))
    promises = doc.get("promises", [])
    if not isinstance(promises, list) or not all(isinstance(p, str) for p in promises):
        raise ScenarioError("promises must be a list of names like \"P1\"")
    sc = Scenario(name=str(doc.get("name", default_name)), design=design, actors=tuple(actors),
                  config=config, setup=setup, about=str(doc.get("about", "")),
                  symmetry=tuple(symmetry), promises=tuple(promises))
    validate(sc)
    return sc


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ScenarioError(f"{key} must be an array")
    return value


def _config(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise ScenarioError("[config] must be a table")
    unknown = set(raw) - CONFIG_KEYS
    if unknown:
        known = ", ".join(sorted(CONFIG_KEYS))
        raise ScenarioError(f"[config]: unknown keys {sorted(unknown)} (known: {known})")
    vm_type = raw.get("vm_type", uapi.KVM_X86_SW_PROTECTED_VM)
    try:
        vm_type = uapi.parse_flags(vm_type, uapi.VM_TYPES, "vm_type")
        gmem_flags = uapi.parse_flags(raw.get("gmem_flags", 0), uapi.GUEST_MEMFD_FLAG_NAMES, "gmem_flags")
    except ValueError as exc:
        raise ScenarioError(f"[config]: {exc}") from None
    fail = raw.get("fail", {})
    if not isinstance(fail, dict):
        raise ScenarioError("[config] fail must be a table: notifier name = errno name")
    for k in ("pages", "memslots", "vcpus"):
        if k in raw and (not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] < 0):
            raise ScenarioError(f"[config] {k} must be a non-negative integer")
    order = raw.get("order", [])
    if not isinstance(order, list) or not all(isinstance(o, str) for o in order):
        raise ScenarioError("[config] order must be a list of names")
    return Config(pages=raw.get("pages", 2), memslots=raw.get("memslots", 1), vm_type=vm_type,
                  order=tuple(order), fail=tuple(sorted((str(k), str(v)) for k, v in fail.items())),
                  vcpus=raw.get("vcpus", 1), gmem_flags=gmem_flags)


def _action(raw: Any, where: str) -> Action:
    if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
        raise ScenarioError(f"{where}: a step is an inline table with an op")
    op = raw["op"]
    retry = raw.get("retry", [])
    if isinstance(retry, str):
        retry = [retry]
    try:
        errnos = tuple(uapi.errno_number(e) for e in retry)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{where} ({op}): retry: {exc}") from None
    needs = raw.get("needs", [])
    if isinstance(needs, str):
        needs = [needs]
    bind = raw.get("as")
    if bind is not None and (not isinstance(bind, str) or not bind.isidentifier()):
        raise ScenarioError(f"{where} ({op}): 'as' must be a name")
    must = raw.get("must_succeed", False)
    if not isinstance(must, bool):
        raise ScenarioError(f"{where} ({op}): must_succeed is true or false, not {must!r}")
    args = tuple((k, v) for k, v in raw.items() if k not in ACTION_KEYS)
    return Action(op=op, args=args, bind=bind, retry=errnos,
                  needs=tuple(n.lstrip("$") for n in needs), note=str(raw.get("note", "")),
                  must_succeed=must)


def validate(sc: Scenario) -> None:
    """Everything that can be checked before running: design, config, operations,
    argument names, references, symmetry declarations."""
    try:
        design = make_design(sc.design)
    except UsageError as exc:
        raise ScenarioError(str(exc)) from None
    c = sc.config
    if not sc.setup:
        if c.pages < 1 or c.memslots < 1 or c.pages % c.memslots:
            raise ScenarioError("[config]: pages must be a positive multiple of memslots")
        slots = [o for o in c.slot_order() if o.startswith("slot") and o[4:].isdigit()]
        if sorted(slots) != sorted(f"slot{i}" for i in range(c.memslots)):
            raise ScenarioError(f"[config] order must name each of slot0..slot{c.memslots - 1} once")
        notifiers = [o for o in c.slot_order() if o not in slots]
        if notifiers and design.kvm.private_file.value != "restricted":
            raise ScenarioError(f"design {sc.design} has no notifiers ({', '.join(notifiers)})")
        if len(set(notifiers)) != len(notifiers) or not set(dict(c.fail)) <= set(notifiers):
            raise ScenarioError("[config]: notifier names must be unique and fail only names notifiers")
    if not sc.actors:
        raise ScenarioError("a scenario needs at least one [[actor]]")
    names = [a.name for a in sc.actors]
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        raise ScenarioError(f"actor names must be unique identifiers: {names}")
    known: set[str] = set()
    if not sc.setup:
        known |= set(fixed_names(c, False)) | ({"cpu"} if c.vcpus else set())
    for i, a in enumerate(sc.setup_actions(), 1):
        _check_action(a, f"setup step {i}", known)
        if a.retry or a.must_succeed:
            raise ScenarioError(f"setup step {i}: {'retry' if a.retry else 'must_succeed'} is for actors")
        if a.bind:
            known.add(a.bind)
    for actor in sc.actors:
        mine = set(known)
        for i, a in enumerate(actor.actions, 1):
            _check_action(a, f"actor {actor.name} step {i}", mine)
            if a.op in NOT_FOR_ACTORS:
                raise ScenarioError(f"actor {actor.name} step {i}: {a.op} drives the checker itself")
            if a.bind:
                mine.add(a.bind)
    for p in sc.promises:
        if p not in {f"P{i}" for i in range(1, 9)}:
            raise ScenarioError(f"unknown promise {p!r} (P1..P8)")
    for sym in sc.symmetry:
        if len(sym.pages) != len(sym.actors) or len(set(sym.pages)) != len(sym.pages) or \
                len(sym.pages) < 2 or not set(sym.actors) <= set(names):
            unknown = sorted(set(sym.actors) - set(names))
            why = f" (no actor {', '.join(unknown)}; actors: {', '.join(names)})" if unknown else ""
            raise ScenarioError("[[symmetry]]: as many distinct pages as actors (at least 2), "
                                f"actors of this scenario{why}")
        if not sc.setup and max(sym.pages) >= c.pages:
            raise ScenarioError(f"[[symmetry]]: page {max(sym.pages)} is beyond the file's "
                                f"{c.pages} pages ([config] pages)")


def _check_action(a: Action, where: str, known: set[str]) -> None:
    problem = vocabulary_problem(a.op, dict(a.args))
    if problem:
        raise ScenarioError(f"{where} ({a.op}): {problem}")
    missing = a.refs() - known
    if missing:
        raise ScenarioError(f"{where} ({a.op}): ${sorted(missing)[0]} is not bound by the setup "
                            "or an earlier step of this actor")
    try:
        # Placeholder values for references: only names and spellings are checked here.
        args = call_arguments(a.op, {k: 0 if isinstance(v, str) and v.startswith("$") else v
                                     for k, v in a.args})
        op_signature(a.op).bind(**args)
    except (UsageError, TypeError) as exc:
        raise ScenarioError(f"{where} ({a.op}): {exc}") from None


# --- values at run time -----------------------------------------------------------------------


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("$") else []
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _show_arg(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 4096:
        return hex(v)
    return str(v) if isinstance(v, str) else repr(v)
