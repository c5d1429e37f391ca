"""ModelKernel: the executable model behind the one kernel interface.

ModelKernel is composed, not inherited: the core and one component per
subsystem (parts.py) do the work, and the class body below is the table of
every operation and the component method that serves it.  `checked`
validates each interface operation's arguments and `counted` counts the
system calls, as for any kernel.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar, overload

from ..errors import UsageError
from ..guestaccess import GUEST_PATHS
from ..interface import INTERFACE_OPS, MODEL_ONLY_OPS, Costs, checked, op_signature
from .designs import DEFAULT_DESIGN, Design, make_design
from .parts import Blueprint, Parts, assemble
from .state import State

# Host loads/stores and guest accesses are not system calls.
NOT_SYSCALLS = frozenset({"read_mem", "write_mem", "guest_access"})
# Model-only operations that are ioctls in the designs that have them.
SYSCALL_MODEL_OPS = frozenset({"kvm_map_shared"})
COST_FIELDS = tuple(f.name for f in fields(Costs) if f.name != "vma_count")
K = TypeVar("K")
P = ParamSpec("P")
R = TypeVar("R")


class Served(Generic[P, R]):
    """One operation of ModelKernel and the component method serving it.

    `mmap = Served(lambda k: k.parts.mm.mmap)` makes `kernel.mmap` the
    component's bound method, with its signature for the type checker.  On the
    class it is a plain function (self, *args, **kwargs), which `checked` and
    `counted` wrap; it carries the interface's signature for introspection.
    """

    def __init__(self, get: Callable[[ModelKernel], Callable[P, R]]) -> None:
        self.get = get
        self.name = ""
        self.unbound: Callable[..., Any]  # set when the class body names it

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

        # Each kernel binds its components' methods once (ModelKernel.served):
        # a call costs one dict lookup more than calling the component.
        def operation(self: ModelKernel, *args: Any, **kwargs: Any) -> Any:
            return self.served[name](*args, **kwargs)

        operation.__name__ = operation.__qualname__ = name
        if name in INTERFACE_OPS or name in MODEL_ONLY_OPS:
            sig = op_signature(name)
            me = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            operation.__signature__ = sig.replace(  # type: ignore[attr-defined]
                parameters=[me, *sig.parameters.values()])
        self.unbound = operation

    @overload
    def __get__(self, k: None, owner: type) -> Callable[..., Any]: ...

    @overload
    def __get__(self, k: ModelKernel, owner: type) -> Callable[P, R]: ...

    def __get__(self, k: ModelKernel | None, owner: type) -> Callable[..., Any]:
        if k is None:
            return self.unbound
        method: Callable[P, R] = k.served[self.name]
        return method


def serving(cls: type[K]) -> type[K]:
    """Collect the Served table (SERVED) and check that it covers the interface."""
    table = {name: v for name, v in vars(cls).items() if isinstance(v, Served)}
    missing = [op for op in (*INTERFACE_OPS, *MODEL_ONLY_OPS)
               if op not in table and not inspect.isfunction(vars(cls).get(op))]
    if missing:
        raise TypeError(f"{cls.__name__}: operations nobody serves: {missing}")
    cls.SERVED = table  # type: ignore[attr-defined]
    return cls


def counted(cls: type[K]) -> type[K]:
    """Count every system call and ioctl in state.counters["syscalls"]: the cost
    a design imposes on the VMM is, first of all, how many calls it needs."""
    for op in (*INTERFACE_OPS, *SYSCALL_MODEL_OPS):
        if op in NOT_SYSCALLS:
            continue
        impl = getattr(cls, op)

        def make(impl: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(impl)
            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                self.state.counters["syscalls"] += 1
                return impl(self, *args, **kwargs)
            return wrapper

        setattr(cls, op, make(impl))
    return cls


@counted
@checked
@serving
class ModelKernel:
    """The model of a kernel built as `design` ("gmem-6.18", "gmem-6.8", ...).

    Pure Python and deterministic: no /dev/kvm needed.  snapshot() and
    restore() save and bring back the whole state.
    """

    # Operations beyond the interface that only the model has (kernel-internal
    # users, hypercalls).
    EXTRA_OPS: tuple[str, ...] = MODEL_ONLY_OPS
    # The components' classes (a variant of the model plugs in a subclass of one).
    PARTS: ClassVar[Blueprint] = Blueprint()
    # operation -> the component method serving it (filled in from the table below).
    SERVED: ClassVar[dict[str, Served[Any, Any]]]

    def __init__(self, design: str | Design = DEFAULT_DESIGN, guest_path: str = "mmu") -> None:
        self.design = make_design(design) if isinstance(design, str) else design
        if guest_path not in GUEST_PATHS:
            raise UsageError(f"guest path must be one of {', '.join(GUEST_PATHS)}, "
                             f"not {guest_path!r}")
        self.guest_path = guest_path
        self.name = f"model:{self.design.name}"
        if guest_path != "mmu":
            self.name += f":{guest_path}"
        self.parts: Parts = assemble(self.design, guest_path, self.PARTS, self._operate)
        # operation -> the bound method of the component instance that serves it.
        self.served: dict[str, Callable[..., Any]] = {
            name: s.get(self) for name, s in self.SERVED.items()}

    @property
    def state(self) -> State:
        return self.parts.core.state

    @state.setter
    def state(self, state: State) -> None:
        self.parts.repoint(state)

    def _operate(self, op: str, kwargs: dict[str, Any]) -> Any:
        """Run interface operation op as a caller would (checked and counted):
        what a stepwise operation taken in one step does."""
        return getattr(self, op)(**kwargs)

    # --- the operations, and the component serving each ---------------------------------------

    # files (vfs.py and the file kinds)
    open_kvm = Served(lambda k: k.parts.kvm.open_kvm)
    memfd_create = Served(lambda k: k.parts.shmem.memfd_create)
    create_guest_memfd = Served(lambda k: k.parts.gmem.create_guest_memfd)
    memfd_restricted = Served(lambda k: k.parts.restricted.memfd_restricted)
    close = Served(lambda k: k.parts.vfs.close)
    dup = Served(lambda k: k.parts.vfs.dup)
    fstat = Served(lambda k: k.parts.vfs.fstat)
    read = Served(lambda k: k.parts.vfs.read)
    write = Served(lambda k: k.parts.vfs.write)
    pread = Served(lambda k: k.parts.vfs.pread)
    pwrite = Served(lambda k: k.parts.vfs.pwrite)
    lseek = Served(lambda k: k.parts.vfs.lseek)
    ftruncate = Served(lambda k: k.parts.vfs.ftruncate)
    fallocate = Served(lambda k: k.parts.vfs.fallocate)
    fsync = Served(lambda k: k.parts.vfs.fsync)
    fchmod = Served(lambda k: k.parts.vfs.fchmod)

    # the host address space (mm.py, mempolicy.py)
    mmap = Served(lambda k: k.parts.mm.mmap)
    munmap = Served(lambda k: k.parts.mm.munmap)
    mprotect = Served(lambda k: k.parts.mm.mprotect)
    madvise = Served(lambda k: k.parts.mm.madvise)
    mremap = Served(lambda k: k.parts.mm.mremap)
    read_mem = Served(lambda k: k.parts.mm.read_mem)
    write_mem = Served(lambda k: k.parts.mm.write_mem)
    vma_count = Served(lambda k: k.parts.mm.vma_count)
    set_max_map_count = Served(lambda k: k.parts.mm.set_max_map_count)
    mbind = Served(lambda k: k.parts.mempolicy.mbind)
    get_mempolicy = Served(lambda k: k.parts.mempolicy.get_mempolicy)
    set_mempolicy = Served(lambda k: k.parts.mempolicy.set_mempolicy)

    # KVM (kvm.py, vcpus.py)
    create_vm = Served(lambda k: k.parts.kvm.create_vm)
    check_extension = Served(lambda k: k.parts.kvm.check_extension)
    enable_cap = Served(lambda k: k.parts.kvm.enable_cap)
    set_user_memory_region = Served(lambda k: k.parts.kvm.set_user_memory_region)
    set_user_memory_region2 = Served(lambda k: k.parts.kvm.set_user_memory_region2)
    set_memory_attributes = Served(lambda k: k.parts.kvm.set_memory_attributes)
    populate = Served(lambda k: k.parts.kvm.populate)
    launch_finish = Served(lambda k: k.parts.kvm.launch_finish)
    get_pfn = Served(lambda k: k.parts.kvm.get_pfn)
    put_pfn = Served(lambda k: k.parts.kvm.put_pfn)
    create_vcpu = Served(lambda k: k.parts.vcpus.create_vcpu)
    guest_access = Served(lambda k: k.parts.vcpus.guest_access)
    guest_hypercall = Served(lambda k: k.parts.vcpus.guest_hypercall)

    # guest_memfd's in-place conversion (inplace.py)
    set_memory_attributes2 = Served(lambda k: k.parts.inplace.set_memory_attributes2)
    page_attr = Served(lambda k: k.parts.inplace.page_attr)

    # the 2022 restricted memfd (restricted.py, restricted_kvm.py)
    add_notifier = Served(lambda k: k.parts.restricted.add_notifier)
    notifier_log = Served(lambda k: k.parts.restricted.notifier_log)
    file_state = Served(lambda k: k.parts.restricted.file_state)
    wait_unreferenced = Served(lambda k: k.parts.restricted.wait_unreferenced)
    kvm_map_shared = Served(lambda k: k.parts.restricted_kvm.kvm_map_shared)

    # long-term GUP pins (gup.py)
    gup_pin = Served(lambda k: k.parts.gup.gup_pin)
    gup_unpin = Served(lambda k: k.parts.gup.gup_unpin)

    # the pKVM hypervisor (pkvm.py)
    pkvm_host_share_hyp = Served(lambda k: k.parts.pkvm.pkvm_host_share_hyp)
    pkvm_host_unshare_hyp = Served(lambda k: k.parts.pkvm.pkvm_host_unshare_hyp)
    pkvm_host_donate_hyp = Served(lambda k: k.parts.pkvm.pkvm_host_donate_hyp)
    pkvm_hyp_donate_host = Served(lambda k: k.parts.pkvm.pkvm_hyp_donate_host)
    pkvm_host_share_ffa = Served(lambda k: k.parts.pkvm.pkvm_host_share_ffa)
    pkvm_host_unshare_ffa = Served(lambda k: k.parts.pkvm.pkvm_host_unshare_ffa)
    hyp_pin_shared_mem = Served(lambda k: k.parts.pkvm.hyp_pin_shared_mem)
    hyp_unpin_shared_mem = Served(lambda k: k.parts.pkvm.hyp_unpin_shared_mem)
    pkvm_host_share_guest = Served(lambda k: k.parts.pkvm.pkvm_host_share_guest)
    pkvm_host_unshare_guest = Served(lambda k: k.parts.pkvm.pkvm_host_unshare_guest)
    pkvm_host_donate_guest = Served(lambda k: k.parts.pkvm.pkvm_host_donate_guest)
    pkvm_guest_share_host = Served(lambda k: k.parts.pkvm.pkvm_guest_share_host)
    pkvm_guest_unshare_host = Served(lambda k: k.parts.pkvm.pkvm_guest_unshare_host)
    pkvm_host_reclaim_page = Served(lambda k: k.parts.pkvm.pkvm_host_reclaim_page)
    pkvm_page_state = Served(lambda k: k.parts.pkvm.pkvm_page_state)
    pkvm_page = Served(lambda k: k.parts.pkvm.pkvm_page)

    # the stepwise API the checker drives (steps.py)
    begin = Served(lambda k: k.parts.steps.begin)
    busy = Served(lambda k: k.parts.steps.busy)
    enabled = Served(lambda k: k.parts.steps.enabled)
    step = Served(lambda k: k.parts.steps.step)
    actor_begin = Served(lambda k: k.parts.steps.actor_begin)
    actor_step = Served(lambda k: k.parts.steps.actor_step)

    # what the checker's promises are judged on (observe.py)
    observe = Served(lambda k: k.parts.observer.observe)
    audit_log = Served(lambda k: k.parts.observer.audit_log)
    drain_events = Served(lambda k: k.parts.observer.drain_events)
    private_pages = Served(lambda k: k.parts.observer.private_pages)
    host_references = Served(lambda k: k.parts.observer.host_references)
    outstanding_references = Served(lambda k: k.parts.observer.outstanding_references)
    mapping_counts = Served(lambda k: k.parts.observer.mapping_counts)
    mmaps_in_progress = Served(lambda k: k.parts.observer.mmaps_in_progress)
    kvm_mmap_pending = Served(lambda k: k.parts.observer.kvm_mmap_pending)
    stray_mmap_pending = Served(lambda k: k.parts.observer.stray_mmap_pending)
    pkvm_problems = Served(lambda k: k.parts.observer.pkvm_problems)

    # --- the kernel as a whole ------------------------------------------------------------------

    def costs(self) -> Costs:
        """What the operations so far cost (interface.Costs documents each
        field); subtract two snapshots for the cost of what ran between."""
        counters = self.state.counters
        return Costs(vma_count=self.state.map_count, **{k: counters[k] for k in COST_FIELDS})

    def snapshot(self) -> State:
        """A copy of the whole model state; restore() brings it back."""
        return self.state.snapshot()

    def restore(self, state: State) -> None:
        self.state = state.snapshot()

    def shutdown(self) -> None:
        for fd in list(self.state.fds):
            self.parts.core.drop_fd(fd)

    def unsupported(self, op: str) -> str | None:
        return None

    def access_path(self) -> str:
        return self.guest_path

    def behaves_as(self) -> str:
        return self.design.name

    def __enter__(self) -> ModelKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        extra = f", guest_path={self.guest_path!r}" if self.guest_path != "mmu" else ""
        return f"ModelKernel(design={self.design.name!r}{extra})"
