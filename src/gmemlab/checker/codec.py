"""The packed form of the model's state, derived from the model's own types.

The checker does not keep model State objects per explored state: it keeps a
tuple of small integers, one per *component* of the state, each naming an
interned, immutable value.  The decomposition is generic over the model's
dataclasses, so it follows the model as it grows:

* a scalar field of State (``mm_lock``, ``vmas``, ``next_pfn``...) is one
  component, key ``("s", field)``;
* a dict field of State is a key-set component ``("k", field)`` plus one
  component per entry: ``("e", field, key)`` for plain values, and for
  mutable records (files, inodes, VMs) a presence component
  ``("o", field, key)`` holding the class plus one component per record
  field ``("o", field, key, name)``, recursively for nested records
  (``Inode.restricted``);
* ``counters`` and ``audit`` are not state: the model only ever adds to them
  (bookkeeping for costs and events for the promises), and the checker drains
  the events after every step.

Values are packed into hashable, tagged tuples (RangeMap -> its change
points, list/set/dict -> tuples) and unpacked into fresh objects, so that
materialize(decompose(s)) behaves exactly like s.

Reads are recorded while a step runs on a materialized state: State, its
dicts and its records are replaced by subclasses whose attribute and item
access notes the component read.  A step of the model is a deterministic
function of what it reads; so a step's result can be reused for any state
that agrees on the components it read (engine.py).  Assignments are noted
too: a component changed in place must have been read first (so its new
value follows from what was read), but one assigned without being read may
happen to receive the value it already had, and that write still belongs to
the step (it changes the component in another state).  The state after the
step is decomposed and compared; a component that changed, or was assigned,
is written.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from itertools import compress
from operator import and_
from typing import Any

from ..model.state import State
from ..rangemap import RangeMap

Key = tuple[Any, ...]
EXCLUDED = frozenset({"counters", "audit"})


# --- values ----------------------------------------------------------------------------------


def _is_record(v: Any) -> bool:
    """A mutable dataclass instance (frozen ones are immutable values)."""
    params = getattr(type(v), "__dataclass_params__", None)
    return params is not None and not params.frozen and not isinstance(v, type)


@cache
def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def pack(v: Any) -> Any:
    """A hashable, immutable form of v; unpack(pack(v)) is a fresh equal copy."""
    t = type(v)
    if t is int or t is str or t is bool or v is None or t is bytes or t is float:
        return v
    if t is RangeMap:
        return ("R", v.limit, v.freeze())
    if t is list:
        return ("L", tuple(pack(x) for x in v))
    if t is tuple:
        return ("T", tuple(pack(x) for x in v))
    if t is set or t is frozenset:
        return ("S" if t is set else "F", tuple(sorted(pack(x) for x in v)))
    if t is dict:
        return ("D", tuple(sorted((pack(k), pack(x)) for k, x in v.items())))
    params = getattr(t, "__dataclass_params__", None)
    if params is not None:
        cls = base_class(t)
        if not params.frozen:
            return ("O", cls, tuple(pack(getattr(v, n)) for n in field_names(cls)))
        try:
            hash(v)
            return v  # an immutable value (Mapping, Notifier, Pending, ...)
        except TypeError:  # a frozen record holding a dict or list
            return ("Z", cls, tuple(pack(getattr(v, n)) for n in field_names(cls)))
    raise TypeError(f"the checker cannot pack a {t.__name__}")


def unpack(p: Any) -> Any:
    if type(p) is not tuple:
        return p
    tag = p[0]
    if tag == "R":
        return RangeMap.thaw(p[2], p[1])
    if tag == "L":
        return [unpack(x) for x in p[1]]
    if tag == "T":
        return tuple(unpack(x) for x in p[1])
    if tag == "S":
        return {unpack(x) for x in p[1]}
    if tag == "F":
        return frozenset(unpack(x) for x in p[1])
    if tag == "D":
        return {unpack(k): unpack(x) for k, x in p[1]}
    if tag in ("O", "Z"):
        cls = p[1]
        obj = object.__new__(cls)
        for name, x in zip(field_names(cls), p[2], strict=True):
            object.__setattr__(obj, name, unpack(x))
        return obj
    raise ValueError(f"not a packed value: {p!r}")


# --- decomposition ---------------------------------------------------------------------------


@cache
def state_fields() -> tuple[str, ...]:
    return tuple(n for n in field_names(State) if n not in EXCLUDED)


def decompose(state: State) -> dict[Key, Any]:
    """The components of a model state (packed values by component key)."""
    out: dict[Key, Any] = {}
    lazy = _pending(state)
    for name in state_fields():
        if lazy and name in lazy:  # (materialized, never unpacked: as it was)
            out[("s", name)] = lazy[name]
            continue
        v = object.__getattribute__(state, name)
        if type(v) is dict or isinstance(v, RecDict):
            items = dict.items(v)
            out[("k", name)] = tuple(sorted(dict.keys(v)))
            for key, item in items:
                if _is_record(item):
                    _record(out, ("o", name, key), item)
                else:
                    out[("e", name, key)] = pack(item)
        else:
            out[("s", name)] = pack(v)
    return out


def _pending(obj: Any) -> dict[str, Any] | None:
    """The fields of a materialized object not unpacked yet (packed, by name)."""
    try:
        lazy: dict[str, Any] | None = object.__getattribute__(obj, "__dict__").get("_lz")
    except AttributeError:
        return None
    return lazy


def _record(out: dict[Key, Any], where: Key, obj: Any) -> None:
    cls = base_class(type(obj))
    out[where] = cls
    lazy = _pending(obj)
    for name in field_names(cls):
        if lazy and name in lazy:
            p = lazy[name]
            if isinstance(p, type):  # a nested record never built: its components as they were
                comps = object.__getattribute__(obj, "_c")
                _copy_subtree(comps, (*object.__getattribute__(obj, "_w"), name), (*where, name), out)
            else:
                out[(*where, name)] = p
            continue
        v = object.__getattribute__(obj, name)
        if _is_record(v):
            _record(out, (*where, name), v)
        else:
            out[(*where, name)] = pack(v)


def decompose_touched(state: State, comps: dict[Key, Any],
                      rec: Recorder) -> tuple[dict[Key, Any], list[Key]]:
    """What decompose(state) would give for the components a step may have changed,
    in the same order, and the components of comps it no longer has.

    state was materialized from comps with recording and rec recorded the step
    on it: a component the step neither read nor assigned (under no assigned
    prefix) is as it was in comps, for the step could reach its value only by
    reading it.  Every key set is included (they are cheap, and change as a side
    effect of inserting and deleting entries).  A dict entry the step touched
    counts as a whole (a record with all its nested records) if it was
    assigned, inserted, deleted or replaced, as is every entry of a State field
    the step assigned; a record still in its place counts by its fields (a
    field the step touched, with its nested records)."""
    fields: set[str] = set()  # State fields read or assigned as a whole
    entries: dict[str, dict[Any, set[str]]] = {}  # touched entries (their fields), by State field
    for keys in (rec.reads, rec.assigned):
        for key in keys:
            tag = key[0]
            if tag in ("o", "e"):
                got = entries.get(key[1])
                if got is None:
                    got = entries[key[1]] = {}
                if len(key) > 3:
                    names = got.get(key[2])
                    if names is None:
                        got[key[2]] = {key[3]}
                    else:
                        names.add(key[3])
                elif key[2] not in got:
                    got[key[2]] = set()
            elif tag == "s":
                fields.add(key[1])
    assigned = rec.assigned
    out: dict[Key, Any] = {}
    gone: list[Key] = []
    lazy = _pending(state)
    for name in state_fields():
        whole = name in fields
        if lazy and name in lazy:  # neither read nor assigned
            if whole:
                out[("s", name)] = lazy[name]
            continue
        v = object.__getattribute__(state, name)
        if type(v) is dict or isinstance(v, RecDict):
            touched = entries.get(name)
            if touched or whole or not isinstance(v, RecDict):
                # (entries are inserted by assignment and deleted after a read:
                # the key set of a dict none of whose entries was touched is as it was)
                out[("k", name)] = tuple(sorted(dict.keys(v)))
            if whole or not isinstance(v, RecDict):
                touched = {key: set() for key in dict.keys(v)}
                for key in comps.get(("k", name), ()):
                    touched[key] = set()
                partial = False
            elif not touched:
                continue
            else:
                partial = True
            done = set()
            for key, item in dict.items(v):
                names = touched.get(key)
                if names is None:
                    continue
                where = ("o", name, key)
                if partial and type(item).__dict__.get("_w", 0) is None \
                        and object.__getattribute__(item, "_w") == where \
                        and where not in assigned and ("e", name, key) not in assigned \
                        and comps.get(where) is base_class(type(item)):
                    # The record materialized here, still here: only the fields
                    # the step touched may have changed.
                    done.add(key)
                    if names:
                        _touched_fields(out, gone, comps, where, item, names)
                    continue
                new: dict[Key, Any] = {}
                if _is_record(item):
                    _record(new, where, item)
                else:
                    new[("e", name, key)] = pack(item)
                out.update(new)
                done.add(key)
                gone += [old for old in _old_keys(comps, name, key) if old not in new]
            for key in touched:
                if key not in done:  # deleted
                    gone += _old_keys(comps, name, key)
            if whole and ("s", name) in comps:
                gone.append(("s", name))
        elif whole:
            out[("s", name)] = pack(v)
            old_keys = comps.get(("k", name))
            if old_keys is not None:  # (a dict replaced by something else)
                gone.append(("k", name))
                for key in old_keys:
                    gone += _old_keys(comps, name, key)
    return out, gone


def _touched_fields(out: dict[Key, Any], gone: list[Key], comps: dict[Key, Any], where: Key,
                    obj: Any, names: set[str]) -> None:
    """The components of the fields `names` of the record obj materialized at where."""
    lazy = _pending(obj)
    for name in field_names(base_class(type(obj))):
        if name not in names:
            continue
        sub = (*where, name)
        if lazy and name in lazy:  # (a nested record noted below a field never read itself)
            p = lazy[name]
            if isinstance(p, type):
                _copy_subtree(comps, sub, sub, out)
            else:
                out[sub] = p
            continue
        v = object.__getattribute__(obj, name)
        old = comps.get(sub)
        if _is_record(v) or isinstance(old, type):
            new: dict[Key, Any] = {}
            if _is_record(v):
                _record(new, sub, v)
            else:
                new[sub] = pack(v)
            out.update(new)
            if isinstance(old, type):
                olds: list[Key] = []
                _subtree(comps, sub, olds)
                gone += [k for k in olds if k not in new]
        else:
            out[sub] = pack(v)


def _copy_subtree(comps: Any, src: Key, dst: Key, out: dict[Key, Any]) -> None:
    cls = out[dst] = comps[src]
    for name in field_names(cls):
        v = comps[(*src, name)]
        if isinstance(v, type):
            _copy_subtree(comps, (*src, name), (*dst, name), out)
        else:
            out[(*dst, name)] = v


def _old_keys(comps: dict[Key, Any], name: str, key: Any) -> list[Key]:
    """The components of entry key of State dict `name` in comps."""
    where = ("o", name, key)
    if where in comps:
        out: list[Key] = []
        _subtree(comps, where, out)
        return out
    where = ("e", name, key)
    return [where] if where in comps else []


def _subtree(comps: dict[Key, Any], where: Key, out: list[Key]) -> None:
    out.append(where)
    cls = comps[where]
    for name in field_names(cls):
        sub = (*where, name)
        if isinstance(comps[sub], type):
            _subtree(comps, sub, out)
        else:
            out.append(sub)


def materialize(comps: Any, recording: bool = False) -> State:
    """A live State with the given components (a dict of them, or anything with get(),
    `in` and [] by key); with recording, its reads are noted in the current Recorder.

    A recording State is lazy: a field whose packed value is a structure (a
    RangeMap, a list, a nested record...) is unpacked when the step first
    reads it (the field's pending value is in the object's `_lz`), so a step
    pays only for what it reads."""
    state: State = object.__new__(RecState if recording else State)
    fields = object.__getattribute__(state, "__dict__")
    fields["counters"] = Counter()
    fields["audit"] = []
    lazy: dict[str, Any] = {}
    for name, kkey, skey in _state_keys():
        keys = comps.get(kkey)
        if keys is not None:
            d: dict[Any, Any] = RecDict(name) if recording else {}
            for key in keys:
                where = ("o", name, key)
                if where in comps:
                    dict.__setitem__(d, key, _build(comps, where, recording))
                else:
                    dict.__setitem__(d, key, unpack(comps[("e", name, key)]))
            fields[name] = d
        else:
            v = comps[skey]
            if recording and type(v) is tuple:
                lazy[name] = v
            else:
                fields[name] = unpack(v)
    if lazy:
        fields["_lz"] = lazy
    return state


@cache
def _state_keys() -> tuple[tuple[str, Key, Key], ...]:
    """(name, key-set key, scalar key) of the fields of State that are state."""
    return tuple((n, ("k", n), ("s", n)) for n in state_fields())


_FIELD_KEYS: dict[tuple[type, Key], tuple[tuple[str, Key], ...]] = {}


def _field_keys(where: Key, cls: type) -> tuple[tuple[str, Key], ...]:
    """(name, component key) of the fields of a record of class cls at where."""
    got = _FIELD_KEYS.get((cls, where))
    if got is None:
        got = _FIELD_KEYS[(cls, where)] = tuple((n, (*where, n)) for n in field_names(cls))
    return got


def _build(comps: Any, where: Key, recording: bool) -> Any:
    cls = comps[where]
    if not recording:
        obj = object.__new__(cls)
        for name, sub in _field_keys(where, cls):
            v = comps[sub]
            object.__setattr__(obj, name, _build(comps, sub, False) if isinstance(v, type) else unpack(v))
        return obj
    obj = object.__new__(rec_class(cls))
    fields = object.__getattribute__(obj, "__dict__")
    fields["_w"] = where
    fields["_c"] = comps
    lazy: dict[str, Any] = {}
    for name, sub in _field_keys(where, cls):
        v = comps[sub]
        if type(v) is tuple or isinstance(v, type):
            lazy[name] = v  # unpacked (built) when first read
        else:
            fields[name] = v
    if lazy:
        fields["_lz"] = lazy
    return obj


def _force(obj: Any, lazy: dict[str, Any], name: str) -> Any:
    """Unpack the pending field name of a materialized object."""
    p = lazy.pop(name)
    if isinstance(p, type):
        where = (*object.__getattribute__(obj, "_w"), name)
        value = _build(object.__getattribute__(obj, "_c"), where, True)
    else:
        value = unpack(p)
    object.__setattr__(obj, name, value)
    return value


# --- read recording --------------------------------------------------------------------------


class Recorder:
    """The component keys read while it is active (one at a time, per process)."""

    current: Recorder | None = None

    def __init__(self) -> None:
        self.reads: dict[Key, None] = {}
        self.assigned: set[Key] = set()  # prefixes: a record's key covers its fields

    def wrote(self, key: Key) -> bool:
        return any(key[:n] in self.assigned for n in range(2, len(key) + 1))

    def written(self) -> Callable[[Key], bool]:
        """wrote, for the assignments made so far, faster (for many keys after a step)."""
        assigned = frozenset(self.assigned)
        if not assigned:
            return _never
        # (a key of length n is under an assigned prefix only if one has length n)
        lengths = tuple(sorted({len(a) for a in assigned}))

        if len(lengths) == 1:
            n = lengths[0]
            return lambda key: key[:n] in assigned
        return lambda key: any(key[:n] in assigned for n in lengths)

    def __enter__(self) -> Recorder:
        assert Recorder.current is None, "recorders do not nest"
        Recorder.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        Recorder.current = None


def _never(key: Key) -> bool:
    return False


def _note(key: Key) -> None:
    rec = Recorder.current
    if rec is not None:
        rec.reads[key] = None


def _assign(key: Key) -> None:
    rec = Recorder.current
    if rec is not None:
        rec.assigned.add(key)


@cache
def _scalar_keys() -> dict[str, Key]:
    return {n: ("s", n) for n in state_fields()}


class RecState(State):
    """State whose scalar fields note their reads (dict fields are RecDicts)."""

    _lz: dict[str, Any] | None = None  # fields not unpacked yet (materialize)

    def __getattribute__(self, name: str) -> Any:
        key = _scalar_keys().get(name)
        if key is not None:
            lazy = object.__getattribute__(self, "_lz")
            if lazy and name in lazy:
                value = _force(self, lazy, name)
            else:
                value = object.__getattribute__(self, name)
            if not isinstance(value, RecDict):
                _note(key)
            return value
        if name == "__dict__":
            lazy = object.__getattribute__(self, "_lz")
            for n in list(lazy or ()):
                _force(self, lazy, n)  # type: ignore[arg-type]
            for k in _scalar_keys().values():
                _note(k)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        key = _scalar_keys().get(name)
        if key is not None:
            _assign(key)
            lazy = object.__getattribute__(self, "_lz")
            if lazy:
                lazy.pop(name, None)
        object.__setattr__(self, name, value)


class RecDict(dict[Any, Any]):
    """A dict field of State: item access notes the entry, iteration the key set."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def _entry(self, key: Any) -> None:
        # Which form the entry takes (a record's presence component or a plain
        # value) is not known for a missing key: note both (the other one is
        # simply always absent, which costs nothing but a slot).
        rec = Recorder.current
        if rec is not None:
            reads = rec.reads
            reads[("o", self._name, key)] = None
            reads[("e", self._name, key)] = None

    def _all(self) -> None:
        _note(("k", self._name))
        for key in dict.keys(self):
            self._entry(key)

    def __getitem__(self, key: Any) -> Any:
        self._entry(key)
        return dict.__getitem__(self, key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._entry(key)
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        self._entry(key)
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[Any]:
        _note(("k", self._name))
        return dict.__iter__(self)

    def __len__(self) -> int:
        _note(("k", self._name))
        return dict.__len__(self)

    def keys(self) -> Any:
        _note(("k", self._name))
        return dict.keys(self)

    def values(self) -> Any:
        self._all()
        return dict.values(self)

    def items(self) -> Any:
        self._all()
        return dict.items(self)

    def __setitem__(self, key: Any, value: Any) -> None:
        _assign(("o", self._name, key))
        _assign(("e", self._name, key))
        dict.__setitem__(self, key, value)

    def clear(self) -> None:
        self._all()
        dict.clear(self)

    def pop(self, key: Any, *default: Any) -> Any:
        self._entry(key)
        return dict.pop(self, key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._entry(key)
        if not dict.__contains__(self, key):
            _assign(("o", self._name, key))
            _assign(("e", self._name, key))
        return dict.setdefault(self, key, default)

    def __delitem__(self, key: Any) -> None:
        self._entry(key)
        dict.__delitem__(self, key)

    def popitem(self) -> tuple[Any, Any]:
        self._all()
        return dict.popitem(self)

    def copy(self) -> dict[Any, Any]:
        self._all()
        return dict(dict.items(self))

    def __eq__(self, other: object) -> bool:
        self._all()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._all()
        return dict.__ne__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._all()
        return dict.__repr__(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the checker does not expect the model to update() a state dict")

    def __or__(self, other: Any) -> Any:
        self._all()
        return dict.__or__(self, other)


@cache
def rec_class(cls: type) -> type:
    """A subclass of record class cls whose field reads are noted (the instance's
    `_w` is its component key; records the model creates during a step have none)."""
    names = frozenset(field_names(cls))
    get = object.__getattribute__

    def __getattribute__(self: Any, name: str) -> Any:
        if name in names:
            where = get(self, "_w")
            if where is not None:
                rec = Recorder.current
                if rec is not None:
                    rec.reads[(*where, name)] = None
            lazy = get(self, "_lz")
            if lazy and name in lazy:
                return _force(self, lazy, name)
        elif name == "__dict__":
            for n in names:
                getattr(self, n)
        return get(self, name)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if name in names:
            where = get(self, "_w")
            if where is not None:
                _assign((*where, name))
            lazy = get(self, "_lz")
            if lazy:
                lazy.pop(name, None)
        object.__setattr__(self, name, value)

    # (_w, _lz and _c are set on the instances materialize builds; records the
    # model creates during a step have none: their reads are not the state's)
    return type(f"Rec{cls.__name__}", (cls,), {"__getattribute__": __getattribute__,
                                               "__setattr__": __setattr__, "_base": cls,
                                               "_w": None, "_lz": None, "_c": None})


def base_class(cls: type) -> type:
    base: type = cls.__dict__.get("_base", cls)
    return base


# --- the interning tables ------------------------------------------------------------------


class Tables:
    """Component slots and interned values of one exploration (one process)."""

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.slot_of: dict[Key, int] = {}
        self.values: list[Any] = [None]  # id 0: the component is absent
        self.id_of: dict[Any, int] = {}
        self._model_mask: list[int] = []  # per slot: -1 for the model's components, else 0

    def slot(self, key: Key) -> int:
        s = self.slot_of.get(key)
        if s is None:
            s = self.slot_of[key] = len(self.keys)
            self.keys.append(key)
            self._model_mask.append(-1 if is_model_key(key) else 0)
        return s

    def intern(self, value: Any) -> int:
        try:
            return self.id_of[value]
        except KeyError:
            i = self.id_of[value] = len(self.values)
            self.values.append(value)
            return i

    def pack_state(self, comps: dict[Key, Any]) -> tuple[int, ...]:
        ids = [0] * len(self.keys)
        for key, value in comps.items():
            s = self.slot(key)
            if s >= len(ids):
                ids.extend([0] * (s + 1 - len(ids)))
            ids[s] = self.intern(value)
        return normal(ids)

    def model_components(self, state: tuple[int, ...]) -> dict[Key, Any]:
        """components(state, is_model_key), in C loops."""
        values = self.values
        return dict(compress(zip(self.keys, map(values.__getitem__, state), strict=False),
                             map(and_, state, self._model_mask)))

    def components(self, state: tuple[int, ...], keep: Callable[[Key], bool] | None = None) -> dict[Key, Any]:
        keys, values = self.keys, self.values
        return {keys[s]: values[v] for s, v in enumerate(state)
                if v and (keep is None or keep(keys[s]))}


def normal(ids: list[int]) -> tuple[int, ...]:
    """A state tuple without trailing absent components (so that equal states are
    equal tuples however many slots exist when they are made)."""
    n = len(ids)
    while n and not ids[n - 1]:
        n -= 1
    return tuple(ids[:n])


def apply(state: tuple[int, ...], writes: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    ids = list(state)
    for s, v in writes:
        if s >= len(ids):
            ids.extend([0] * (s + 1 - len(ids)))
        ids[s] = v
    return normal(ids)


def diff(s: tuple[int, ...], t: tuple[int, ...]) -> list[tuple[int, int]]:
    """The components (slot, new id) in which t differs from s."""
    out = [(j, b) for j, (a, b) in enumerate(zip(s, t, strict=False)) if a != b]
    if len(s) > len(t):
        out += [(j, 0) for j in range(len(t), len(s)) if s[j]]
    elif len(t) > len(s):
        out += [(j, t[j]) for j in range(len(s), len(t)) if t[j]]
    return out


def is_model_key(key: Key) -> bool:
    return key[0] in ("s", "k", "e", "o")
