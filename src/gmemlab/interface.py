"""The one kernel interface: every operation of CASES.md, once.

ModelKernel and HostKernel both implement this Protocol; the conformance
runner, the differential fuzzer and the examples only ever talk to it.  An
operation returns what the system call returns (an fd, an address, a count,
0) or a typed result for the table-valued ones, and fails with OSError(errno),
MemorySignal or UsageError (see errors.py).

Integer arguments carry the width of the C field or parameter they stand for;
a value that does not fit is a UsageError, not a silently truncated call.
Argument names are the struct field or syscall parameter names, so a case
file step maps onto a call by name.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Protocol, TypeVar, get_type_hints, runtime_checkable

from . import uapi
from .errors import UsageError


@dataclass(frozen=True)
class CInt:
    """The C integer type an argument stands for.

    As in C, a value is accepted in either its signed or its unsigned spelling
    (size=-4096 and size=0xfffffffffffff000 are the same u64) and converted to
    the type's own signedness; a value no spelling of the type can hold is a
    UsageError.
    """

    ctype: str
    bits: int
    signed: bool
    limit: int | None = None  # gmemlab's own bound, where results must fit in memory

    def check(self, op: str, name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{op}: {name} must be an integer ({self.ctype}), "
                             f"got {type(value).__name__} {value!r}")
        half = 1 << (self.bits - 1)
        if not -half <= value < (1 << self.bits):
            raise UsageError(f"{op}: {name}={value} does not fit {self.ctype} "
                             f"({self.bits} bits)")
        value &= (1 << self.bits) - 1
        if self.signed and value >= half:
            value -= 1 << self.bits
        if self.limit is not None and value > self.limit:
            raise UsageError(f"{op}: {name}={value} is more than gmemlab returns at once "
                             f"({self.limit} bytes)")
        return value


S32 = CInt("int", 32, True)
U32 = CInt("u32", 32, False)
S64 = CInt("loff_t", 64, True)
U64 = CInt("u64", 64, False)
U8 = CInt("u8", 8, False)
# Reads return Python bytes: at most 1 GiB at a time.
READ_LIMIT = 1 << 30
ReadLen = Annotated[int, CInt("size_t", 64, False, READ_LIMIT)]
# struct kvm_userspace_memory_region2.guest_memfd is a __u32 holding an fd;
# -1 and 0xffffffff are the same value to the kernel.
FD_U32 = CInt("u32 fd", 32, False)

Int = Annotated[int, S32]
Fd = Annotated[int, S32]
UInt = Annotated[int, U32]
Off = Annotated[int, S64]
ULong = Annotated[int, U64]


@dataclass(frozen=True)
class Stat:
    """What fstat reports that the cases compare."""

    size: int
    mode: int
    blksize: int
    blocks: int
    nlink: int
    ino: int
    dev: int

    def as_table(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GuestAccess:
    """The outcome of one guest load or store.

    exit is "none" when the access completed; otherwise the name of the exit
    KVM_RUN gave ("memory_fault", "mmio", ...).  For a memory fault, gpa is the
    page-aligned faulting address, size 4096 and flags 8 when the access was
    private.  For an MMIO exit, gpa is the accessed address and size the
    length.  data_hex holds the bytes a completed load read.
    """

    exit: str
    data_hex: str = ""
    gpa: int | None = None
    size: int | None = None
    flags: int | None = None
    write: bool | None = None
    errno: str | None = None  # a memory fault's KVM_RUN errno: EFAULT, EIO, ...

    def as_table(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Mempolicy:
    """What get_mempolicy reports: the mode (with its mode flags) and the node
    mask, as the words of the unsigned long array the kernel fills."""

    mode: int
    nodemask: tuple[int, ...] = ()

    def as_table(self) -> dict[str, Any]:
        return {"mode": self.mode, "nodemask": list(self.nodemask)}


@dataclass(frozen=True)
class GuestHypercall:
    """The outcome of a guest hypercall (vmcall) as KVM handles it.

    exit is "hypercall" when KVM exits to userspace (KVM_EXIT_HYPERCALL, with
    nr, args and flags as in kvm_run), or "none" when KVM answered the guest
    itself with ret in RAX (e.g. -1000, -KVM_ENOSYS, for a hypercall whose
    exit userspace did not enable).
    """

    exit: str
    ret: int | None = None
    nr: int | None = None
    args: tuple[int, ...] | None = None
    flags: int | None = None

    def as_table(self) -> dict[str, Any]:
        table = {k: v for k, v in asdict(self).items() if v is not None}
        if "args" in table:
            table["args"] = list(table["args"])
        return table


@runtime_checkable
class Kernel(Protocol):
    """The operations of docs/CASES.md, with their parameter names."""

    name: str

    # --- file and memory (host userspace) ------------------------------------

    def open_kvm(self) -> int:
        """open("/dev/kvm", O_RDWR): the system fd (CASES.md uses it implicitly)."""
        ...

    def create_vm(self, type: ULong = 0) -> int: ...

    def check_extension(self, cap: ULong, vm: Fd | None = None) -> int: ...

    def create_guest_memfd(self, vm: Fd, size: ULong, flags: ULong = 0,
                           reserved: Sequence[ULong] = ()) -> int: ...

    def memfd_create(self, name: str = "gmemlab", flags: UInt = 0) -> int: ...

    def memfd_restricted(self, flags: UInt = 0) -> int:
        """The 2022 proposal's syscall (designs seed, seed-as-written); ENOSYS elsewhere."""
        ...

    def close(self, fd: Fd) -> int: ...

    def dup(self, fd: Fd) -> int: ...

    def fstat(self, fd: Fd) -> Stat: ...

    def read(self, fd: Fd, length: ReadLen) -> bytes: ...

    def write(self, fd: Fd, data: bytes) -> int: ...

    def pread(self, fd: Fd, length: ReadLen, offset: Off) -> bytes: ...

    def pwrite(self, fd: Fd, data: bytes, offset: Off) -> int: ...

    def lseek(self, fd: Fd, offset: Off, whence: UInt) -> int: ...

    def ftruncate(self, fd: Fd, length: Off) -> int: ...

    def fallocate(self, fd: Fd, mode: Int, offset: Off, length: Off) -> int: ...

    def fsync(self, fd: Fd) -> int: ...

    def fchmod(self, fd: Fd, mode: UInt) -> int: ...

    def mmap(self, fd: Fd, length: ULong, prot: Int, flags: Int, offset: Off = 0,
             addr: ULong = 0) -> int: ...

    def munmap(self, addr: ULong, length: ULong) -> int: ...

    def mprotect(self, addr: ULong, length: ULong, prot: Int) -> int: ...

    def madvise(self, addr: ULong, length: ULong, advice: Int) -> int: ...

    def mremap(self, addr: ULong, old_length: ULong, new_length: ULong, flags: ULong = 0,
               new_address: ULong = 0) -> int: ...

    def read_mem(self, addr: ULong, length: ReadLen) -> bytes: ...

    def write_mem(self, addr: ULong, data: bytes = b"", fill: Annotated[int, U8] | None = None,
                  length: ULong | None = None) -> int: ...

    # NUMA memory policy (mm/mempolicy.c).  A node mask is the unsigned long
    # array of the system call, as a list of words; an empty list is NULL.

    def mbind(self, addr: ULong, len: ULong, mode: Int, nodemask: Sequence[ULong] = (),
              maxnode: ULong = 0, flags: UInt = 0) -> int: ...

    def get_mempolicy(self, maxnode: ULong = 64, addr: ULong = 0, flags: ULong = 0) -> Mempolicy:
        """get_mempolicy(&mode, nodemask, maxnode, addr, flags); maxnode 0 passes a NULL mask."""
        ...

    def set_mempolicy(self, mode: Int, nodemask: Sequence[ULong] = (), maxnode: ULong = 0) -> int:
        """The calling thread's policy; the kernel object restores the old one when it ends."""
        ...

    # --- KVM -----------------------------------------------------------------

    def set_user_memory_region(self, vm: Fd, slot: UInt, flags: UInt, guest_phys_addr: ULong,
                               memory_size: ULong, userspace_addr: ULong = 0) -> int: ...

    def set_user_memory_region2(self, vm: Fd, slot: UInt, flags: UInt, guest_phys_addr: ULong,
                                memory_size: ULong, userspace_addr: ULong = 0,
                                guest_memfd: Annotated[int, FD_U32] = -1,
                                guest_memfd_offset: ULong = 0) -> int: ...

    def set_memory_attributes(self, vm: Fd, address: ULong, size: ULong, attributes: ULong,
                              flags: ULong = 0) -> int: ...

    def enable_cap(self, vm: Fd, cap: UInt, args: Sequence[ULong] = (), flags: UInt = 0) -> int: ...

    def set_memory_attributes2(self, fd: Fd, offset: ULong, size: ULong, attributes: ULong,
                               flags: ULong = 0) -> int:
        """KVM_SET_MEMORY_ATTRIBUTES2 on a guest_memfd (in-place conversion): EAGAIN
        while a page is referenced, as errors.ConversionError with its error_offset."""
        ...

    def create_vcpu(self, vm: Fd, id: ULong = 0) -> int: ...

    def guest_access(self, vcpu: Fd, gpa: ULong, length: ULong, write: bool = False,
                     private: bool | None = None, data: bytes = b"") -> GuestAccess:
        """A guest's loads or stores.  private: the guest's choice where it has
        one (SNP, TDX; default shared); elsewhere KVM decides from the memory
        attributes, and a given value must agree with them (guestaccess.py)."""
        ...

    # --- housekeeping --------------------------------------------------------

    def unsupported(self, op: str) -> str | None:
        """Why this kernel cannot run op here, or None when it can."""
        ...

    def access_path(self) -> str:
        """Who executes guest_access here: "mmu" or "emulator" (see guestaccess.py)."""
        ...

    def behaves_as(self) -> str:
        """The model design whose guest_memfd behaves as this kernel's does."""
        ...

    def shutdown(self) -> None:
        """Release every resource the kernel object holds."""
        ...


@dataclass(frozen=True)
class FileState:
    """A restricted memfd's state as the model tracks it (model-only op file_state)."""

    size: int
    mapped: int  # mappings (VMAs) of the file
    destroyed: bool
    refs: int  # get_pfn references outstanding, all pages together
    has_mapping: bool

    def as_table(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Observation:
    """What the checker's promises look at (model-only op observe).

    Page sets are runs (inode, first page, last page exclusive), counted ones
    (inode, first, last, count); inodes and VMs are the model's ids, which a
    case replays deterministically.
    """

    private_pages: tuple[tuple[int, int, int], ...]
    host_references: tuple[tuple[int, int, int, int], ...]
    outstanding_references: tuple[tuple[int, int, int, int], ...]
    mappings: tuple[tuple[int, int], ...]  # (inode, VMAs mapping it)
    mmaps_in_progress: tuple[int, ...]  # inodes whose mmap notifier protocol is running
    mmap_pending: tuple[tuple[int, int, int], ...]  # (VM, memslot, inode): KVM saw mmap_start only
    stray_mmap_pending: tuple[tuple[int, int, int], ...]  # ... while no mmap holds the file's lock
    pkvm_problems: tuple[str, ...]

    def as_table(self) -> dict[str, Any]:
        return {k: _lists(v) for k, v in asdict(self).items()}


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


@dataclass(frozen=True)
class Costs:
    """What the operations so far cost, counted by the model (ModelKernel.costs()).

    Every design counts the same events, so two designs running the same
    workload can be compared field by field; subtracting two snapshots
    (``after - before``) gives the cost of what ran in between.  Counts are
    of operations, not of pages, unless the name says pages.
    """

    syscalls: int = 0  # system calls and ioctls the VMM made (set_memory_attributes2 included)
    hypercalls: int = 0  # pKVM hypercalls handled at EL2, host- or guest-initiated
    exits: int = 0  # guest exits to the host (accesses, hypercalls)
    vma_splits: int = 0  # VMAs split (munmap, mprotect, madvise inside a VMA)
    vma_merges: int = 0  # VMAs merged with a neighbour
    vma_count: int = 0  # VMAs in the host address space now (a level, not a count of events)
    host_pte_zaps: int = 0  # zaps of host user page tables (munmap, unmap_mapping_range, ...)
    kvm_zaps: int = 0  # zaps of KVM's secondary MMU / a guest's stage-2
    stage2_updates: int = 0  # pKVM changes to the host, hyp or a guest stage-2
    tlb_flushes: int = 0  # TLB invalidations the zaps and stage-2 changes needed
    pages_zeroed: int = 0  # pages cleared (allocation, pKVM reclaim)
    pages_allocated: int = 0  # pages allocated by fallocate
    pages_freed: int = 0  # pages freed (punch, release)
    refused: int = 0  # conversions refused because a page was still referenced
    deferred: int = 0  # conversions left waiting for the host's last reference (pkvm-inplace)

    def __sub__(self, other: Costs) -> Costs:
        """The cost between two snapshots (vma_count stays the later level)."""
        values = {k: v - getattr(other, k) for k, v in asdict(self).items()}
        values["vma_count"] = self.vma_count
        return Costs(**values)

    def as_table(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PkvmPage:
    """pKVM's record of one physical page (model-only op pkvm_page)."""

    host: str  # OWNED, SHARED_OWNED, SHARED_BORROWED or NOPAGE
    hyp: str
    pin_count: int  # hyp_page.refcount (hyp_pin_shared_mem)
    share_guest_count: int  # host_share_guest_count (shares with non-protected guests)

    def as_table(self) -> dict[str, Any]:
        return asdict(self)


class ModelOnly(Protocol):
    """Operations only the model has (docs/CASES.md, "Model-only operations"): kernel-internal users and
    hypervisor calls that no system call reaches.  Cases using them say
    kernel = "model"."""

    def get_pfn(self, fd: Fd, index: ULong) -> int:
        """KVM's restrictedmem_get_pfn: a pfn and one reference on the page."""
        ...

    def put_pfn(self, fd: Fd, index: ULong) -> int: ...

    def add_notifier(self, fd: Fd, name: str, fail: dict[str, Any] | None = None) -> int:
        """Register a scripted notifier; `fail` maps events to the errno (name)
        the notifier returns for them (only mmap_start can fail)."""
        ...

    def notifier_log(self, fd: Fd) -> list[str]: ...

    def file_state(self, fd: Fd) -> FileState: ...

    def wait_unreferenced(self, fd: Fd, timeout: ULong = 0) -> int:
        """Wait until no get_pfn reference is outstanding (restriction 5)."""
        ...

    def populate(self, vm: Fd, gpa: ULong, data: bytes) -> int:
        """Pre-boot copy of data into private memory (SNP/TDX launch update)."""
        ...

    def launch_finish(self, vm: Fd) -> int: ...

    def vma_count(self) -> int: ...

    def set_max_map_count(self, value: Int) -> int: ...

    def guest_hypercall(self, vcpu: Fd, nr: ULong, args: Sequence[ULong] = ()) -> GuestHypercall:
        """A 64-bit guest's vmcall at CPL 0, answered as __kvm_emulate_hypercall does."""
        ...

    # --- interleavings (the checker's counterexamples, docs/CHECKER.md) ---------

    def actor_begin(self, actor: str, call: str, args: dict[str, Any] | None = None) -> int:
        """Actor starts operation `call` (arguments as in a case step); actor_step runs it."""
        ...

    def actor_step(self, actor: str) -> Any:
        """Run the actor's next atomic step: the operation's result (or its errno or
        signal) when this step finished it, else the string "running"."""
        ...

    def observe(self) -> Observation:
        """The facts the checker's promises are judged on."""
        ...

    def audit_log(self, kind: str = "") -> list[list[Any]]:
        """The events recorded for the promises (all, or those of one kind), without the kind."""
        ...

    def costs(self) -> Costs:
        """What the operations so far cost (see Costs)."""
        ...

    # --- host references ---------------------------------------------------------

    def gup_pin(self, addr: ULong, length: ULong) -> int:
        """pin_user_pages(FOLL_LONGTERM) on [addr, addr+length), as O_DIRECT or
        VFIO do: all pages or none (EFAULT); the number of pages pinned."""
        ...

    def gup_unpin(self, addr: ULong, length: ULong) -> int:
        """Drop the oldest pin made with the same addr and length (EINVAL if none)."""
        ...

    # --- in-place designs (inplace, pkvm-inplace) -----------------------------------

    def page_attr(self, fd: Fd, index: ULong) -> str:
        """"shared" or "private" (pkvm-inplace also "none_shared") of a page."""
        ...

    # --- kvm-map ----------------------------------------------------------------------

    def kvm_map_shared(self, vm: Fd, gpa: ULong, size: ULong,
                       prot: Int = uapi.PROT_READ | uapi.PROT_WRITE) -> int:
        """KVM maps shared guest memory [gpa, gpa+size) into the host at the
        backing file's canonical address; the address of gpa."""
        ...

    # --- the pKVM hypervisor ------------------------------------------------------------

    def pkvm_host_share_hyp(self, pfn: ULong) -> int: ...

    def pkvm_host_unshare_hyp(self, pfn: ULong) -> int: ...

    def pkvm_host_donate_hyp(self, pfn: ULong, nr: ULong) -> int: ...

    def pkvm_hyp_donate_host(self, pfn: ULong, nr: ULong) -> int: ...

    def pkvm_host_share_ffa(self, pfn: ULong, nr: ULong) -> int: ...

    def pkvm_host_unshare_ffa(self, pfn: ULong, nr: ULong) -> int: ...

    def hyp_pin_shared_mem(self, pfn: ULong) -> int: ...

    def hyp_unpin_shared_mem(self, pfn: ULong) -> int: ...

    def pkvm_host_share_guest(self, pfn: ULong, gfn: ULong, vm: Fd, prot: ULong) -> int: ...

    def pkvm_host_unshare_guest(self, gfn: ULong, vm: Fd) -> int: ...

    def pkvm_host_donate_guest(self, pfn: ULong, gfn: ULong, vm: Fd) -> int: ...

    def pkvm_guest_share_host(self, vm: Fd, gfn: ULong) -> int: ...

    def pkvm_guest_unshare_host(self, vm: Fd, gfn: ULong) -> int: ...

    def pkvm_host_reclaim_page(self, vm: Fd, pfn: ULong) -> int: ...

    def pkvm_page_state(self, pfn: ULong, component: str, vm: Fd | None = None,
                        gfn: ULong | None = None) -> str:
        """OWNED, SHARED_OWNED, SHARED_BORROWED or NOPAGE of pfn for host, hyp
        or guest (the guest's leaf at gfn of vm, if it maps pfn)."""
        ...

    def pkvm_page(self, pfn: ULong) -> PkvmPage: ...


def _ops_of(proto: type, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(name for name in proto.__dict__
                 if not name.startswith("_") and callable(proto.__dict__[name]) and name not in skip)


# The operations of the interface, in the order above: the case-file vocabulary.
INTERFACE_OPS: tuple[str, ...] = _ops_of(Kernel, ("unsupported", "access_path", "behaves_as",
                                                  "shutdown"))
MODEL_ONLY_OPS: tuple[str, ...] = _ops_of(ModelOnly)


# --- argument checking, shared by every implementation -----------------------------

K = TypeVar("K")


def _checker(op: str, hint: Any) -> Callable[[str, object], object]:
    """A function that validates one argument against its annotation."""
    optional = False
    args = getattr(hint, "__args__", ())
    if type(None) in args:  # X | None
        optional = True
        hint = next(a for a in args if a is not type(None))
    meta = getattr(hint, "__metadata__", ())
    cint = next((m for m in meta if isinstance(m, CInt)), None)
    origin = getattr(hint, "__origin__", hint)

    def check(name: str, value: object) -> object:
        if value is None and optional:
            return None
        if cint is not None:
            return cint.check(op, name, value)
        if origin is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{op}: {name} must be true or false, got {value!r}")
            return value
        if origin is bytes:
            if isinstance(value, (bytes, bytearray, memoryview)):
                return bytes(value)
            raise UsageError(f"{op}: {name} must be bytes, got {type(value).__name__}")
        if origin is str:
            if not isinstance(value, str):
                raise UsageError(f"{op}: {name} must be a string, got {type(value).__name__}")
            return value
        if origin is dict:
            if not isinstance(value, dict):
                raise UsageError(f"{op}: {name} must be a table, got {type(value).__name__}")
            return dict(value)
        if origin is Sequence or origin is list:
            item = getattr(hint, "__args__", (int,))[0]
            inner = next((m for m in getattr(item, "__metadata__", ()) if isinstance(m, CInt)), U64)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise UsageError(f"{op}: {name} must be a list of integers, got {value!r}")
            return tuple(inner.check(op, f"{name}[{i}]", v) for i, v in enumerate(value))
        if origin is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{op}: {name} must be an integer, got {value!r}")
            return value
        return value

    return check


@functools.cache
def op_signature(op: str) -> inspect.Signature:
    """The Protocol's signature of op (without self)."""
    proto = Kernel if op in INTERFACE_OPS else ModelOnly if op in MODEL_ONLY_OPS else None
    if proto is None:
        raise UsageError(f"unknown operation {op!r}")
    sig = inspect.signature(getattr(proto, op))
    return sig.replace(parameters=list(sig.parameters.values())[1:])


@functools.cache
def _op_checkers(op: str) -> tuple[inspect.Signature, dict[str, Callable[[str, object], object]]]:
    sig = op_signature(op)  # first: an unknown op is a UsageError
    proto = Kernel if op in INTERFACE_OPS else ModelOnly
    hints = get_type_hints(getattr(proto, op), include_extras=True)
    return sig, {name: _checker(op, hints[name]) for name in sig.parameters}


# Calls gmemlab refuses on both kernels, because on the host they would harm
# the machine or the interpreter, and the model does not pretend to know them.
REFUSED_ADVICE = {
    100: "MADV_HWPOISON poisons real memory",
    101: "MADV_SOFT_OFFLINE offlines real memory",
    102: "guard regions (MADV_GUARD_INSTALL) are not modelled",
    103: "guard regions (MADV_GUARD_REMOVE) are not modelled",
    24: "MADV_DONTNEED_LOCKED is not modelled",
}


def _refuse(op: str, args: dict[str, Any]) -> None:
    if op == "mbind" and args["flags"] & uapi.MPOL_MF_VALID \
            and not args["flags"] & ~uapi.MPOL_MF_VALID:
        raise UsageError("mbind: flags MPOL_MF_STRICT, MOVE and MOVE_ALL refused: where pages "
                         "lie and their migration are not modelled")
    if op == "get_mempolicy" and args["flags"] & uapi.MPOL_F_NODE \
            and not args["flags"] & ~(uapi.MPOL_F_NODE | uapi.MPOL_F_ADDR):
        raise UsageError("get_mempolicy: MPOL_F_NODE refused: the node of a page or the next "
                         "interleave node is not modelled")
    if op == "madvise" and args["advice"] in REFUSED_ADVICE:
        raise UsageError(f"madvise: advice {args['advice']} refused: "
                         f"{REFUSED_ADVICE[args['advice']]}")
    if op == "enable_cap" and args["cap"] not in uapi.CAPS.values():
        raise UsageError(f"enable_cap: capability {args['cap']} is not one gmemlab knows "
                         f"({', '.join(sorted(uapi.CAPS))})")
    if op == "write_mem":
        if args["fill"] is not None:
            if args["data"]:
                raise UsageError("write_mem: give data or fill + length, not both")
            if args["length"] is None:
                raise UsageError("write_mem: fill needs a length")
        elif args["length"] is not None and args["length"] != len(args["data"]):
            raise UsageError(f"write_mem: length {args['length']} differs from the "
                             f"{len(args['data'])} bytes of data")


@functools.cache
def _op_plan(op: str) -> tuple[tuple[str, ...], dict[str, Any],
                                dict[str, Callable[[str, object], object]]]:
    """op's parameter names in order, the defaults of those that have one, and their checkers."""
    sig, checkers = _op_checkers(op)
    defaults = {name: p.default for name, p in sig.parameters.items()
                if p.default is not inspect.Parameter.empty}
    return tuple(sig.parameters), defaults, checkers


def _bind_error(op: str, args: tuple[object, ...], kwargs: dict[str, object]) -> UsageError:
    sig = op_signature(op)
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        return UsageError(f"{op}: {exc} (parameters: {', '.join(sig.parameters)})")
    return UsageError(f"{op}: cannot bind {args!r} {kwargs!r}")


def check_call(op: str, args: tuple[object, ...], kwargs: dict[str, object]) -> dict[str, Any]:
    """Bind and validate a call of op; the validated arguments by name."""
    # Binding and checking in one pass: Signature.bind alone cost microseconds
    # on every bulk read_mem/write_mem.  A call that does not bind is handed to
    # bind() for its message.
    names, defaults, checkers = _op_plan(op)
    npos = len(args)
    if npos > len(names):
        raise _bind_error(op, args, kwargs)
    checked_args: dict[str, Any] = {}
    for i, name in enumerate(names):
        if i < npos:
            if name in kwargs:
                raise _bind_error(op, args, kwargs)
            value = args[i]
        elif name in kwargs:
            value = kwargs[name]
        elif name in defaults:
            value = defaults[name]
        else:
            raise _bind_error(op, args, kwargs)
        if isinstance(value, str) and (op, name) in uapi.FLAG_ARGUMENTS:
            # From Python as in case files: flags by name ("READ|WRITE", "pkvm").
            try:
                value = uapi.parse_flags(value, uapi.FLAG_ARGUMENTS[op, name], f"{op}: {name}")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        checked_args[name] = checkers[name](name, value)
    if kwargs and not all(name in checkers for name in kwargs):
        raise _bind_error(op, args, kwargs)
    _refuse(op, checked_args)
    return checked_args


def checked(cls: type[K]) -> type[K]:
    """Class decorator: every interface operation of cls validates its arguments.

    Both kernels use it, so a malformed call fails with the same UsageError on
    either, before any state is touched or any system call is made.
    """
    for op in INTERFACE_OPS + MODEL_ONLY_OPS:
        impl = getattr(cls, op, None)
        if impl is None or getattr(impl, "__wrapped_op__", None) == op:
            continue

        def make(op: str, impl: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(impl)
            def wrapper(self: Any, *args: object, **kwargs: object) -> Any:
                return impl(self, **check_call(op, args, kwargs))
            wrapper.__wrapped_op__ = op  # type: ignore[attr-defined]
            return wrapper

        setattr(cls, op, make(op, impl))
    return cls
