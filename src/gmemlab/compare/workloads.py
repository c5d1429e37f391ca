"""Workloads: parameterised programs of guest and VMM actions.

A workload is a guest kind (a pKVM protected guest, which shares its own
pages in place, or a confidential VM, whose shared memory may live apart), a
table of parameters with defaults, and a list of steps.  Each step is one
thing the guest or the VMM does to a range of guest memory:

==========  ==================================================================
``share``    the guest asks the host, one request per granule, to share the
             selected granules of the range (pKVM's MEM_SHARE, a CVM's
             MAP_GPA_RANGE)
``unshare``  the guest takes the selected shared granules back
``io``       ``count`` I/Os of ``bytes`` each bounce through the shared
             granules of the range: the guest kicks the device (an exit), the
             host copies the buffer through its mapping
``dma``      per-I/O sharing: for each of ``count`` I/Os the buffer (one
             granule, cycling through the range) is shared, used, unshared
``discard``  the guest returns ``ranges`` equal ranges to the host (balloon,
             free-page reporting): the VMM punches them out of guest memory
``allocate`` the VMM allocates guest memory up front (no guest request)
``snapshot`` the host reads every page of the range that it may read
``churn``    random share/unshare of single granules, ``count`` times (or until
             a limit is hit when ``stop`` is true)
==========  ==================================================================

Patterns choose and order the granules of a share/unshare step: ``all``,
``alternate`` (every other one, starting with the first), ``odd``,
``reverse``, ``random`` (all, in a seeded random order), ``random:F`` (a
fraction F of them), ``stride:N`` (every Nth).

Workloads are TOML files (the project's own are in workloads/ at the top of
the repository, docs/COMPARISON.md explains them) or Python objects built
from the dataclasses below; values may be sizes ("64K") or expressions over
parameters ("$pool_at+$pool").
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import uapi
from ..errors import UsageError
from .units import Value, evaluate, parse_size, show_size

P = uapi.PAGE_SIZE
STEP_KINDS = ("share", "unshare", "io", "dma", "discard", "allocate", "snapshot", "churn")
# Fields each kind accepts (beyond `do` and `name`) and their defaults.
STEP_FIELDS: dict[str, dict[str, Value]] = {
    "share": {"at": 0, "size": "$memory", "granule": "4K", "pattern": "all", "seed": 1},
    "unshare": {"at": 0, "size": "$memory", "granule": "4K", "pattern": "all", "seed": 1},
    "io": {"at": 0, "size": "$memory", "count": 1, "bytes": "4K"},
    "dma": {"at": 0, "size": "$memory", "count": 1, "bytes": "4K"},
    "discard": {"at": 0, "size": "$memory", "ranges": 1},
    "allocate": {"at": 0, "size": "$memory"},
    "snapshot": {"at": 0, "size": "$memory"},
    "churn": {"at": 0, "size": "$memory", "granule": "4K", "count": 1, "seed": 1,
              "share_ratio": 0.6, "stop": True},
}
PATTERNS = ("all", "alternate", "odd", "reverse", "random", "random:F", "stride:N")


@dataclass(frozen=True)
class Guest:
    """What kind of guest runs the workload."""

    name: str
    vm_type: int  # the model's VM type
    in_place: bool  # the host must reach the guest's own pages (pKVM shares pages, not copies)
    about: str


GUESTS: dict[str, Guest] = {
    "pkvm": Guest("pkvm", uapi.MODEL_PKVM_VM, True,
                  "a pKVM protected guest: memory private and owned at EL2 from boot, "
                  "shared back page by page in place (MEM_SHARE / MEM_UNSHARE)"),
    "cvm": Guest("cvm", uapi.KVM_X86_SW_PROTECTED_VM, False,
                 "a confidential VM (the model's software-protected type standing for SNP or "
                 "TDX): memory private from boot, conversions by request; shared memory may "
                 "be a different page"),
}


@dataclass(frozen=True)
class Step:
    """One step as written: its kind, a name for reports, and its fields (unresolved)."""

    do: str
    name: str = ""
    fields: tuple[tuple[str, Value], ...] = ()

    @classmethod
    def make(cls, do: str, name: str = "", **fields: Value) -> Step:
        return cls(do, name, tuple(fields.items()))


@dataclass(frozen=True)
class Plan:
    """A step with every value resolved: what the runner executes."""

    do: str
    name: str
    at: int  # byte offset into guest memory
    size: int
    granule: int = P
    pattern: str = "all"
    seed: int = 1
    count: int = 1
    bytes: int = P
    ranges: int = 1
    share_ratio: float = 0.6
    stop: bool = True

    @property
    def first(self) -> int:
        return self.at // P

    @property
    def pages(self) -> int:
        return self.size // P


@dataclass(frozen=True)
class Workload:
    """A parameterised program of guest and VMM actions."""

    name: str
    about: str
    guest: str
    params: tuple[tuple[str, Value], ...]
    steps: tuple[Step, ...]
    sweep: str | None = None  # the parameter "cost per conversion vs size" varies
    sweep_values: tuple[Value, ...] = ()
    source: str = "python"

    def defaults(self) -> dict[str, Value]:
        return dict(self.params)

    def resolve(self, overrides: dict[str, Any] | None = None) -> Resolved:
        """The workload at concrete parameters (defaults, then overrides)."""
        params = self.defaults()
        for key, raw in (overrides or {}).items():
            if key not in params:
                raise UsageError(f"workload {self.name} has no parameter {key!r} (parameters: "
                                 f"{', '.join(params)})")
            params[key] = coerce(raw, params[key], f"{self.name}: {key}")
        for key, value in list(params.items()):
            # Parameters may refer to earlier ones ("pool_at = $memory/2").
            params[key] = evaluate(value, params, f"{self.name}: parameter {key}")
        memory = params.get("memory")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0 or memory % P:
            raise UsageError(f"{self.name}: memory must be a positive multiple of 4K, "
                             f"got {memory!r}")
        plans = tuple(_plan(self.name, i, step, params) for i, step in enumerate(self.steps))
        return Resolved(self, params, GUESTS[self.guest], memory, plans)


@dataclass(frozen=True)
class Resolved:
    workload: Workload
    params: dict[str, Value]
    guest: Guest
    memory: int
    plans: tuple[Plan, ...]

    @property
    def name(self) -> str:
        return self.workload.name

    def describe(self) -> str:
        shown = ", ".join(f"{k}={show_value(v)}" for k, v in self.params.items())
        return f"{self.name} ({self.guest.name} guest; {shown})"


def show_value(value: Value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 4096:
        return show_size(value)
    return str(value)


def coerce(raw: Any, default: Value, what: str) -> Value:
    """A command-line or TOML override in the type of the parameter's default."""
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{what}: expected true or false, got {raw!r}")
    if isinstance(default, float):
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{what}: expected a number, got {raw!r}") from None
    if isinstance(default, int) or _is_size(default):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        return parse_size(str(raw), what)
    return str(raw)


def _is_size(value: Value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_size(value)
    except UsageError:
        return False
    return True


def _plan(workload: str, index: int, step: Step, params: dict[str, Value]) -> Plan:
    where = f"{workload}: step {index + 1} ({step.name or step.do})"
    if step.do not in STEP_KINDS:
        raise UsageError(f"{where}: unknown kind {step.do!r} (kinds: {', '.join(STEP_KINDS)})")
    allowed = STEP_FIELDS[step.do]
    given = dict(step.fields)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise UsageError(f"{where}: {step.do} has no field {', '.join(unknown)} "
                         f"(fields: {', '.join(allowed)})")
    values: dict[str, Value] = {}
    for key, default in allowed.items():
        values[key] = evaluate(given.get(key, default), params, f"{where}: {key}")
    memory = params["memory"]
    assert isinstance(memory, int)
    ints = {k: v for k, v in values.items() if k not in ("pattern", "share_ratio", "stop")}
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    at, size = values["at"], values["size"]
    assert isinstance(at, int) and isinstance(size, int)
    if at % P or size % P or size == 0:
        raise UsageError(f"{where}: at and size must be multiples of 4K, size non-zero "
                         f"(at={at}, size={size})")
    if at + size > memory:
        raise UsageError(f"{where}: [{show_size(at)}, {show_size(at + size)}) is beyond guest "
                         f"memory ({show_size(memory)})")
    granule = values.get("granule", P)
    assert isinstance(granule, int)
    if granule == 0 or granule % P or size % granule:
        raise UsageError(f"{where}: granule {granule} must be a multiple of 4K dividing the "
                         f"size {show_size(size)}")
    pattern = str(values.get("pattern", "all"))
    check_pattern(pattern, where)
    nbytes = values.get("bytes", P)
    assert isinstance(nbytes, int)
    if step.do in ("io", "dma") and (nbytes == 0 or nbytes % P or nbytes > size):
        raise UsageError(f"{where}: bytes must be a multiple of 4K no larger than the range")
    ranges = values.get("ranges", 1)
    assert isinstance(ranges, int)
    if step.do == "discard" and (ranges == 0 or size // P % ranges):
        raise UsageError(f"{where}: {ranges} ranges do not divide {show_size(size)} into pages")
    ratio = values.get("share_ratio", 0.6)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise UsageError(f"{where}: share_ratio must be between 0 and 1, got {ratio!r}")
    stop = values.get("stop", True)
    if not isinstance(stop, bool):
        raise UsageError(f"{where}: stop must be true or false, got {stop!r}")
    count, seed = values.get("count", 1), values.get("seed", 1)
    assert isinstance(count, int) and isinstance(seed, int)
    return Plan(do=step.do, name=step.name or step.do, at=at, size=size, granule=granule,
                pattern=pattern, seed=seed, count=count, bytes=nbytes, ranges=ranges,
                share_ratio=float(ratio), stop=stop)


def check_pattern(pattern: str, where: str) -> None:
    kind, _, arg = pattern.partition(":")
    ok = kind in ("all", "alternate", "odd", "reverse", "random", "stride") and \
        (not arg or kind in ("random", "stride"))
    if ok and kind == "stride":
        ok = arg.isdigit() and int(arg) > 0
    if ok and kind == "random" and arg:
        try:
            ok = 0 < float(arg) <= 1
        except ValueError:
            ok = False
    if not ok:
        raise UsageError(f"{where}: unknown pattern {pattern!r} (patterns: {', '.join(PATTERNS)})")


# --- files ----------------------------------------------------------------------------------

TOP_KEYS = frozenset({"name", "about", "guest", "params", "step", "sweep", "sweep_values"})


def bundled_workloads() -> Path:
    """The project's workloads/ folder (installed with the package)."""
    packaged = resources.files("gmemlab") / "compare" / "workloads"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "workloads"


def bundled_names() -> list[str]:
    return sorted(p.stem for p in bundled_workloads().glob("*.toml"))


def find(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    bundled = bundled_workloads() / f"{name_or_path.removesuffix('.toml')}.toml"
    if bundled.is_file():
        return bundled
    raise UsageError(f"no workload {name_or_path!r} (bundled: {', '.join(bundled_names())}; "
                     "or give a .toml file)")


def load(name_or_path: str) -> Workload:
    path = find(name_or_path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    return from_table(doc, str(path))


def from_table(doc: dict[str, Any], source: str = "python") -> Workload:
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise UsageError(f"{source}: unknown key {', '.join(unknown)} (keys: {', '.join(sorted(TOP_KEYS))})")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"{source}: a workload needs a name")
    guest = doc.get("guest", "pkvm")
    if guest not in GUESTS:
        raise UsageError(f"{source}: guest must be one of {', '.join(GUESTS)}, not {guest!r}")
    params = doc.get("params", {})
    if not isinstance(params, dict) or "memory" not in params:
        raise UsageError(f"{source}: [params] must set memory (the guest's memory size)")
    for key, value in params.items():
        if not isinstance(value, (int, float, str, bool)):
            raise UsageError(f"{source}: parameter {key} must be a number, size or string")
    steps = doc.get("step", [])
    if not isinstance(steps, list) or not steps:
        raise UsageError(f"{source}: a workload needs at least one [[step]]")
    parsed = []
    for i, table in enumerate(steps):
        if not isinstance(table, dict) or "do" not in table:
            raise UsageError(f"{source}: step {i + 1} needs `do` (one of {', '.join(STEP_KINDS)})")
        rest = {k: v for k, v in table.items() if k not in ("do", "name")}
        parsed.append(Step(str(table["do"]), str(table.get("name", "")), tuple(rest.items())))
    sweep = doc.get("sweep")
    if sweep is not None and sweep not in params:
        raise UsageError(f"{source}: sweep names {sweep!r}, which is not a parameter")
    values = tuple(doc.get("sweep_values", ()))
    workload = Workload(name=name, about=str(doc.get("about", "")), guest=guest,
                        params=tuple(params.items()), steps=tuple(parsed), sweep=sweep,
                        sweep_values=values, source=source)
    workload.resolve()  # report a malformed file now, not in the middle of a run
    return workload


@dataclass
class Catalog:
    """Every bundled workload, loaded once (for listings and tests)."""

    workloads: dict[str, Workload] = field(default_factory=dict)

    @classmethod
    def bundled(cls) -> Catalog:
        return cls({name: load(name) for name in bundled_names()})
