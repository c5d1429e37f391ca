"""Counterexamples made readable and runnable.

A counterexample is a list of actor names; replaying it on a fresh model
kernel (with the one transition semantics of system.py) gives each step's
operation, result and the state it leaves, confirms that the promise is
broken at the end (a counterexample that does not replay is an internal
error, never printed as a finding), and writes it as a case file in the
CASES.md format: the setup as plain steps, one-step operations as plain
calls with their result, operations that span several steps as
`actor_begin` / `actor_step`, and a last step asserting the broken promise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import uapi
from ..conform import cases
from ..interface import GuestAccess
from ..model import ModelKernel
from ..model.events import (
    PROTOCOL,
    Event,
    GetPfnWhileMapped,
    HostAccessPrivate,
    MmapDone,
    Notify,
    PrivateWhileMapped,
    StaleUse,
)
from ..outcome import Outcome
from ..spelling import REF
from . import promises as pr
from .explore import Counterexample, Verdict
from .scenario import Action, Scenario, fixed_names
from .system import ActorState, KernelFactory, Program, StepInfo, new_kernel, run_transition

STUCK_STEPS = 100


class ReplayError(RuntimeError):
    """A counterexample that does not reproduce: a bug in the checker."""


@dataclass
class TraceStep:
    actor: str
    action: Action
    info: StepInfo
    began: bool  # this step started the operation
    events: list[Event]
    what: str  # what the step did
    state: str  # the relevant state after it
    violations: list[pr.Violation] = field(default_factory=list)


@dataclass
class Replay:
    steps: list[TraceStep]
    kernel: ModelKernel
    program: Program
    actors: list[ActorState]  # each actor's state at the end
    stuck_attempt: TraceStep | None = None


def replay(scenario: Scenario, names: list[str], factory: KernelFactory | None = None,
           active: frozenset[str] | None = None) -> Replay:
    """Run the actors' steps in this order on a fresh kernel, judging every promise."""
    prog = Program(scenario)
    k = new_kernel(scenario.design, factory)
    prog.setup(k)
    active = active if active is not None else \
        (frozenset(scenario.promises) if scenario.promises else k.design.promises())
    astates = [ActorState() for _ in prog.names]
    protocols: dict[int, pr.Protocol] = {}
    steps = []
    for name in names:
        steps.append(_one(k, prog, astates, name, protocols, active))
    return Replay(steps, k, prog, astates)


def _one(k: ModelKernel, prog: Program, astates: list[ActorState], name: str,
         protocols: dict[int, pr.Protocol], active: frozenset[str]) -> TraceStep:
    i = prog.names.index(name)
    a = astates[i]
    action = prog.action(i, a)
    before_obs = k.observe()
    mark = len(k.state.audit)
    res = run_transition(k, prog, i, a)
    if res is None:
        raise ReplayError(f"actor {name} cannot take a step here")
    astates[i], info = res
    events = list(k.state.audit[mark:])
    bad = pr.event_violations(tuple(events), active)
    for e in events:
        if isinstance(e, PROTOCOL):
            p, broken = pr.protocol_step(protocols.get(e.ino, pr.EMPTY), e)
            protocols[e.ino] = p
            if "P5" in active:
                bad += pr.protocol_violations(e.ino, broken)
    after = k.observe()
    obs = {"private_pages": after.private_pages, "host_references": after.host_references,
           "outstanding_references": after.outstanding_references, "mapping_counts": after.mappings,
           "stray_mmap_pending": after.stray_mmap_pending, "pkvm_problems": after.pkvm_problems}
    prev = {"private_pages": before_obs.private_pages}
    if "P4" in active:
        bad += pr.newly_private_violations(lambda n: prev[n], lambda n: obs[n])
    bad += pr.state_violations(lambda n: obs[n], active)
    if all(prog.done(j, st) for j, st in enumerate(astates)):
        bad += pr.terminal_violations(lambda n: obs[n], active)
    return TraceStep(name, action, info, not a.busy, events, describe_step(info, events, action),
                     describe_state(k), bad)


# --- words ------------------------------------------------------------------------------------


def show_outcome(out: Outcome | None) -> str:
    if out is None:
        return ""
    if out.kind == "ret":
        v = out.value
        if isinstance(v, GuestAccess):
            t = v.as_table()
            return f"exit {t.pop('exit')}" + (f" {t}" if t else "")
        if isinstance(v, bytes):
            return f"{len(v)} bytes " + (f"all {v[0]:#04x}" if v and v == bytes([v[0]]) * len(v)
                                         else v[:8].hex())
        if isinstance(v, int) and v >= 4096:
            return hex(v)
        return repr(v)
    return str(out)


def describe_step(info: StepInfo, events: list[Event], action: Action) -> str:
    parts = []
    if info.kind == "skip":
        return f"skipped: ${info.skipped_for} is not bound (its operation failed)"
    for e in events:
        if isinstance(e, Notify):
            result = "0" if not e.err else uapi.errno_name(e.err)
            parts.append(f"{e.notifier}.{e.event} -> {result}")
        elif isinstance(e, MmapDone):
            parts.append("notifier protocol over")
        elif isinstance(e, HostAccessPrivate):
            parts.append(f"host {'write' if e.write else 'read'}s PRIVATE page {e.index}")
        elif isinstance(e, PrivateWhileMapped):
            parts.append("a page turned private under the mapping")
        elif isinstance(e, GetPfnWhileMapped):
            parts.append(f"get_pfn on page {e.index} of a MAPPED file")
        elif isinstance(e, StaleUse):
            parts.append(f"a {e.what} of a file unmapped with references out")
    if info.kind == "begin" and not parts:
        parts.append({"mmap": "checks passed, mmap_lock and file lock taken",
                      "set_memory_attributes": "checked, KVM mappings zapped (converting)",
                      "guest_access": "KVM's get_pfn: a reference on the page"}.get(action.op, "begun"))
    if info.kind == "step" and not parts:
        # The one silent step of an mmap is the turn from mmap_start to mmap_end.
        parts.append({"guest_access": "the access",
                      "mmap": "every notifier accepted the mapping"}.get(action.op, "a step"))
    if info.kind in ("end", "retry"):
        if action.op == "set_memory_attributes" and info.outcome and info.outcome.kind == "ret":
            parts.append("attributes stored")
        parts.append(f"=> {show_outcome(info.outcome)}" + (" (tries again)" if info.kind == "retry" else ""))
    return "; ".join(parts)


def describe_state(k: ModelKernel) -> str:
    """The facts the promises are about, compactly."""
    parts = []
    obs = k.observe()
    for ino, inode in sorted(k.state.inodes.items()):
        r = inode.restricted
        if r is None:
            continue
        maps = dict(obs.mappings).get(ino, 0)
        bits = [f"maps={maps}"]
        if r.has_mapping:
            bits.append("has_mapping")
        if r.destroyed:
            bits.append("DESTROYED")
        refs = [f"p{s}" + (f"..{e - 1}" if e > s + 1 else "") + f"x{n}"
                for i, s, e, n in obs.outstanding_references if i == ino]
        if refs:
            bits.append("refs " + ",".join(refs))
        parts.append(f"inode{ino}: " + " ".join(bits))
    private = [f"i{ino}:p{s}" + (f"..{e - 1}" if e > s + 1 else "") for ino, s, e in obs.private_pages]
    if private:
        parts.append("private " + ",".join(private))
    if obs.mmap_pending:
        parts.append("KVM waits for mmap_end: " + ",".join(f"slot{slot & 0xFFFF}" for _, slot, _ in
                                                            obs.mmap_pending))
    for vm in k.state.vms.values():
        if vm.converting:
            parts.append("converting")
    locks = []
    if k.state.mm_lock:
        locks.append(f"mmap_lock:{k.state.mm_lock}")
    locks += [f"file{ino}:{a}" for ino, a in sorted(k.state.file_locks.items())]
    if locks:
        parts.append("locks " + ",".join(locks))
    return "; ".join(parts)


# --- replaying a counterexample, in full -------------------------------------------------------


def replay_counterexample(scenario: Scenario, cex: Counterexample, factory: KernelFactory | None = None,
                          active: frozenset[str] | None = None) -> Replay:
    """Replay and confirm: the promise must be broken at the last step (P8: the
    stuck actor must not have finished after the continuation)."""
    rp = replay(scenario, cex.trace + cex.continuation, factory, active)
    if cex.promise == "P8":
        i = rp.program.names.index(cex.stuck or "")
        # The others have settled: the stuck actor runs on alone until it tries
        # an operation again (the loop it never leaves) or cannot move at all.
        for _ in range(STUCK_STEPS):
            if rp.program.done(i, rp.actors[i]):
                raise ReplayError(f"P8 counterexample: actor {cex.stuck} finished in the replay")
            res = _try(rp, i)
            if res is None or res.info.kind == "retry":
                rp.stuck_attempt = res
                break
            rp.steps.append(res)
        else:
            raise ReplayError(f"P8 counterexample: actor {cex.stuck} neither retries nor blocks")
        return rp
    last = rp.steps[-1] if rp.steps else None
    judged = last.violations if last else _initial_violations(rp, active)
    got = [v for v in judged if v.promise == cex.promise]
    if not got:
        raise ReplayError(f"the counterexample to {cex.promise} does not reproduce: "
                          f"{[str(v) for v in (last.violations if last else [])]}")
    # The explorer judged a representative of the state (symmetry may have
    # renamed pages): say it in the concrete terms of the replay.
    cex.violation = got[0]
    return rp


def _initial_violations(rp: Replay, active: frozenset[str] | None) -> list[pr.Violation]:
    obs = rp.kernel.observe()
    table = {"private_pages": obs.private_pages, "mapping_counts": obs.mappings,
             "stray_mmap_pending": obs.stray_mmap_pending, "pkvm_problems": obs.pkvm_problems}
    return pr.state_violations(lambda n: table[n], active or frozenset(pr.ORDER))


def _try(rp: Replay, i: int) -> TraceStep | None:
    k, a = rp.kernel, rp.actors[i]
    action = rp.program.action(i, a)
    mark = len(k.state.audit)
    res = run_transition(k, rp.program, i, a)
    if res is None:
        return None
    rp.actors[i], info = res
    events = list(k.state.audit[mark:])
    return TraceStep(rp.program.names[i], action, info, not a.busy, events,
                     describe_step(info, events, action), describe_state(k))


# --- printing ------------------------------------------------------------------------------------


def trace_rows(rp: Replay) -> list[tuple[str, str, str, str, str]]:
    """(number, actor, operation, what happened, state after) per step."""
    rows = []
    for n, st in enumerate(rp.steps, 1):
        op = st.action.show() if st.began or st.info.kind == "skip" else "  ..." + st.action.op
        rows.append((str(n), st.actor, op, st.what, st.state))
    if rp.stuck_attempt is not None:
        st = rp.stuck_attempt
        rows.append(("..", st.actor, st.action.show(), st.what + " (and so on, forever)", st.state))
    return rows


# --- case files ------------------------------------------------------------------------------------


def case_text(scenario: Scenario, verdict: Verdict, cex: Counterexample, rp: Replay, command: str) -> str:
    """One [[case]] in the CASES.md format reproducing the counterexample."""
    fixed = fixed_names(scenario.config, bool(scenario.setup))
    aliases = {"cpu": "cpu0"} if not scenario.setup else {}

    def ref(value: Any, actor: str | None) -> Any:
        if isinstance(value, str) and value.startswith("$"):
            m = REF.match(value.strip())
            if m is None:
                return value
            name, field, sign, offset = m.groups()
            delta = 0 if offset is None else int(offset, 0) * (1 if sign == "+" else -1)
            if name in fixed and field is None:
                return fixed[name] + delta
            name = aliases.get(name, name)
            if actor is not None and name not in rp.program.env:
                name = f"{actor}_{name}"
            return f"${name}" + (f".{field}" if field is not None else "") + \
                (f"{sign}{offset}" if offset is not None else "")
        if isinstance(value, list):
            return [ref(v, actor) for v in value]
        if isinstance(value, dict):
            return {k: ref(v, actor) for k, v in value.items()}
        return value

    steps: list[cases.Step] = []
    note = "setup"
    for act in scenario.setup_actions():
        steps.append(cases.step(act.op, bind=act.bind, comment=note,
                                **{k: ref(v, None) for k, v in act.args}))
        note = ""
    note = "the interleaving" if rp.steps else ""
    all_steps = list(rp.steps) + ([rp.stuck_attempt] if rp.stuck_attempt else [])
    busy: set[str] = set()  # actors with an operation in progress
    for n, st in enumerate(all_steps, 1):
        lead = [note] if note else []
        if st is rp.stuck_attempt:
            lead.append(f"{st.actor} tries again, as it will forever: no continuation lets it "
                        "finish")
        lead.append(f"{n}. {st.actor}: {st.what}")
        if st.info.kind == "skip":
            note = "\n".join(lead)  # nothing runs: the words go with the next step
            continue
        steps += _case_steps(st, ref, "\n".join(lead), interleaved=bool(busy - {st.actor}))
        if st.info.kind in ("end", "retry"):
            busy.discard(st.actor)
        else:
            busy.add(st.actor)
        note = ""
    for i, table in enumerate(_assertions(cex, rp)):
        op = table.pop("op")
        expect = {k: table.pop(k) for k in ("ret",) if k in table}
        steps.append(cases.step(op, expect=expect, comment="the broken promise" if i == 0 else "",
                                **table))
    case = cases.Case(
        file="", id=f"{scenario.name}-{scenario.design}-{cex.promise}",
        about=f"checker: {cex.violation.message}", kernel="model", design=scenario.design,
        requires=(), steps=tuple(steps),
        comment=(f"Counterexample to {cex.promise} ({pr.PROMISES[cex.promise]}),\n"
                 f"found by `{command}`\n"
                 f"in {verdict.states} states and {verdict.transitions} transitions "
                 "(shortest: breadth-first).\n"
                 f"{cex.violation.message}\n"
                 "Reproduce: gmemlab conform THIS_FILE --kernel model"))
    return cases.dumps([case])


def _case_steps(st: TraceStep, ref: Any, comment: str, interleaved: bool) -> list[cases.Step]:
    """The case steps of one trace step.  An operation that ran in one step is a
    plain step, unless another actor's operation is in progress: then it is
    actor_begin and actor_step too, so that a replay checks the actor could run
    there (a plain call never waits for a lock another operation holds)."""
    act = st.action
    expect = _expectation(st, act)
    bind = expect.pop("as", None)
    single = st.began and st.info.kind in ("end", "retry") and not interleaved
    args = {k: ref(v, st.actor) for k, v in act.args}
    if single:
        return [cases.step(act.op, bind=bind, expect=expect, comment=comment, **args)]
    out = []
    if st.began:
        out.append(cases.step("actor_begin", comment=comment, actor=st.actor, call=act.op,
                              args=args))
        comment = ""
    done = st.info.kind in ("end", "retry")
    out.append(cases.step("actor_step", bind=bind if done else None,
                          expect=expect if done else {"ret": "running"}, comment=comment,
                          actor=st.actor))
    return out


def _expectation(st: TraceStep, act: Action) -> dict[str, Any]:
    out = st.info.outcome
    if out is None:
        return {}
    if out.kind == "errno":
        return {"errno": uapi.errno_name(out.value)}
    if out.kind == "signal":
        return {"signal": uapi.signal_name(out.value)}
    v = out.value
    if act.bind and st.info.kind == "end":
        return {"as": f"{st.actor}_{act.bind}"}
    if isinstance(v, GuestAccess):
        return {"ret": v.as_table()}
    if isinstance(v, bytes):
        if v and v == bytes([v[0]]) * len(v):
            return {"all_bytes": v[0]}
        return {"bytes_hex": v.hex()}
    if isinstance(v, (int, str, bool)):
        return {"ret": v}
    return {}


def _assertions(cex: Counterexample, rp: Replay) -> list[dict[str, Any]]:
    """Steps that hold in the state the counterexample ends in, and only there:
    the events or the facts (Observation) the broken promise is judged on."""
    k = rp.kernel
    table = k.observe().as_table()

    def observe(*keys: str) -> dict[str, Any]:
        return {"op": "observe", "ret": {key: table[key] for key in keys}}

    def events(kind: str) -> dict[str, Any]:
        return {"op": "audit_log", "kind": kind, "ret": k.audit_log(kind)}

    evidence = cex.violation.evidence
    if evidence.is_event:
        return [events(evidence.value)]
    if evidence is pr.Evidence.KVM_PENDING:
        # The protocol's calls, then KVM's waiting itself.
        return [events("notify"), observe(*evidence.facts)]
    return [observe(*evidence.facts)]


def write_cases(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(texts))
