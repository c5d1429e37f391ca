"""What a case needs of the kernel that runs it, read from its steps.

A case may say what it needs (`requires`); when it does not, the runner
infers it from the steps, so that a kernel without a feature gives SKIP
with the reason instead of a FAIL that looks like a disagreement:

* creating a guest_memfd needs KVM_CAP_GUEST_MEMFD, and each creation flag
  of a creation expected to succeed needs its bit in KVM_CAP_GUEST_MEMFD_FLAGS;
* creating a VM of type T (1..31) needs bit T of KVM_CAP_VM_TYPES;
* a KVM_SET_USER_MEMORY_REGION2 needs KVM_CAP_USER_MEMORY2, and one with
  KVM_MEM_GUEST_MEMFD needs KVM_CAP_GUEST_MEMFD;
* KVM_SET_MEMORY_ATTRIBUTES needs KVM_CAP_MEMORY_ATTRIBUTES, and the
  guest_memfd's KVM_SET_MEMORY_ATTRIBUTES2 (in-place conversion)
  KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES;
* a guest access expected to end in a memory-fault exit needs
  KVM_CAP_MEMORY_FAULT_INFO;
* enabling a capability needs the kernel to report it.

A step that expects exactly the error a kernel without the feature gives
(ENOTTY for an ioctl it does not know, EINVAL for a flag or type it does not
accept) needs nothing: it runs everywhere.  A need on a capability that the
case's own `requires` names is dropped: what the case says wins.  Only
literal arguments are read; a flag given as "$name" infers nothing.  A VM
ioctl on an fd that an earlier step bound as something other than a VM
(/dev/kvm, a vCPU, a memfd, ...) needs nothing either: such an fd answers the
same on every kernel.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from .. import uapi
from .cases import Case, Requirement, Step, parse_requirement


@dataclass(frozen=True)
class Need:
    """One inferred requirement and the step it comes from."""

    requirement: Requirement
    step: Step
    why: str  # what the step does that needs it

    @property
    def cap(self) -> str:
        return self.requirement.cap

    def describe(self) -> str:
        return f"step {self.step.index} ({self.step.op}) {self.why}: needs {self.requirement.text}"


def _literal(step: Step, name: str, names: Any = None, default: int | None = 0) -> int | None:
    """An integer argument as written (flag names parsed), or None if not literal."""
    value = step.args.get(name, default)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and names is not None and not value.startswith("$"):
        try:
            return uapi.parse_flags(value, names, name)
        except ValueError:
            return None
    return None


def _req(text: str) -> Requirement:
    return parse_requirement(text)


# What kind of fd each binding operation returns.
_BINDS = {"open_kvm": "kvm", "create_vm": "vm", "create_vcpu": "vcpu", "memfd_create": "memfd",
          "create_guest_memfd": "gmem", "memfd_restricted": "restricted"}
# Operations that are VM ioctls: on any other fd they fail the same way on every kernel.
_VM_IOCTLS = ("create_guest_memfd", "set_user_memory_region2", "set_memory_attributes",
              "enable_cap")


def _fd_kind(value: Any, kinds: dict[str, str]) -> str | None:
    """The kind of fd an argument names, when a reference to an earlier binding; else None."""
    if isinstance(value, str) and value.startswith("$") and value[1:].isidentifier():
        return kinds.get(value[1:])
    return None


def _step_needs(step: Step, kinds: dict[str, str]) -> list[tuple[str, str, int | None]]:
    """(requirement, why, the errno that waives it) for one step."""
    out: list[tuple[str, str, int | None]] = []
    op = step.op
    success = step.expects_success
    if op in _VM_IOCTLS and _fd_kind(step.args.get("vm"), kinds) not in (None, "vm"):
        return out
    if op == "create_guest_memfd":
        out.append(("cap:GUEST_MEMFD", "creates a guest_memfd", errno.ENOTTY))
        flags = _literal(step, "flags", uapi.GUEST_MEMFD_FLAG_NAMES)
        if success and flags:
            for name, bit in uapi.GUEST_MEMFD_FLAG_NAMES.items():
                if flags & bit:
                    out.append((f"cap:GUEST_MEMFD_FLAGS&{bit:#x}", f"uses flag {name}", None))
    elif op == "create_vm":
        vm_type = _literal(step, "type", uapi.VM_TYPES)
        if vm_type is not None and 1 <= vm_type < 32:
            out.append((f"cap:VM_TYPES&{1 << vm_type:#x}", f"creates a VM of type {vm_type}",
                        errno.EINVAL))
    elif op == "set_user_memory_region2":
        out.append(("cap:USER_MEMORY2", "uses KVM_SET_USER_MEMORY_REGION2", errno.ENOTTY))
        flags = _literal(step, "flags", uapi.MEMSLOT_FLAG_NAMES)
        if flags is not None and flags & uapi.KVM_MEM_GUEST_MEMFD:
            out.append(("cap:GUEST_MEMFD", "binds a guest_memfd", errno.EINVAL))
    elif op == "set_memory_attributes":
        out.append(("cap:MEMORY_ATTRIBUTES", "sets memory attributes", errno.ENOTTY))
    elif op == "set_memory_attributes2":
        out.append(("cap:GUEST_MEMFD_MEMORY_ATTRIBUTES", "sets a guest_memfd's own attributes",
                    errno.ENOTTY))
    elif op == "guest_access":
        if isinstance(step.ret, dict) and step.ret.get("exit") == "memory_fault":
            out.append(("cap:MEMORY_FAULT_INFO", "expects a memory-fault exit", None))
    elif op == "enable_cap":
        cap = _literal(step, "cap", uapi.CAPS, None)
        names = {v: k for k, v in uapi.CAPS.items()}
        if cap in names:
            out.append((f"cap:{names[cap]}", f"enables KVM_CAP_{names[cap]}", errno.EINVAL))
    return out


def infer(case: Case) -> list[Need]:
    """What the case's steps need that its `requires` does not already say."""
    stated = {parse_requirement(text).cap for text in case.requires}
    needs: list[Need] = []
    seen: set[str] = set()
    kinds: dict[str, str] = {}
    for step in case.steps:
        if step.bind:
            kind = _BINDS.get(step.op)
            if step.op == "dup":
                kind = _fd_kind(step.args.get("fd"), kinds)
            if kind is not None:
                kinds[step.bind] = kind
            else:
                kinds.pop(step.bind, None)
        for text, why, waiver in _step_needs(step, kinds):
            if waiver is not None and step.errno == waiver:
                continue
            req = _req(text)
            if req.cap in stated or text in seen:
                continue
            seen.add(text)
            needs.append(Need(req, step, why))
    return needs
