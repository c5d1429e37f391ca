"""The differential state machine: random operation sequences on two kernels at once.

Every rule is one call of the interface, made on the model and on the host
with each kernel's own fds and addresses, and the outcomes must be equal.
A divergence raises `Divergence` carrying the steps so far as a case file;
Hypothesis then shrinks the sequence, so the case that is finally reported
is a minimal one.

What is generated stays inside what both kernels can be asked safely and
alike:

* memory is only ever touched inside regions the case mapped, and a region
  stays mapped until it is retired as a whole: "unmapping" part of it maps
  anonymous PROT_NONE memory over that part (MAP_FIXED, atomically), so the
  host never has a hole the interpreter could take;
* VM type 1 and KVM_CAP_VM_TYPES are left out, because the model implements
  the software-protected VM that x86 kernels offer only when built with
  CONFIG_KVM_SW_PROTECTED_VM (docs/CONFORMANCE.md);
* what the kernel under test lacks is left out (`Offer`): without guest_memfd
  the machine fuzzes memfds, mappings and memslots of ordinary memory, and a
  capability whose value differs between the model's design and the kernel's
  build is not asked;
* guest accesses use GPAs below 2^40, which any guest can reach.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from .. import uapi
from ..interface import Kernel
from ..outcome import USAGE, Outcome
from .steps import Handle, Ref, Region, Step, render_case, run_side

P = uapi.PAGE_SIZE
SIDES = ("a", "b")  # the two kernels of the pair
REFERENCE = "b"  # the kernel whose outcome a divergence's case expects (the host)


class Divergence(AssertionError):
    """The kernels disagreed at the last of `steps`; `case()` is a runnable case file."""

    def __init__(self, steps: list[Step], requires: list[str],
                 labels: dict[str, str] | None = None, header: dict[str, str] | None = None) -> None:
        self.steps = steps
        self.requires = requires
        self.labels = labels or {"a": "model", "b": "host"}
        self.header = header or {}  # the case's kernel and design, when not model against host
        super().__init__(self.message)

    @property
    def message(self) -> str:
        step = self.steps[-1]
        return (f"divergence at step {len(self.steps)} ({step.op}): "
                f"{self.labels['a']} {step.describe('a')}, {self.labels['b']} {step.describe('b')}")

    def case(self, case_id: str = "fuzz-divergence") -> str:
        step = self.steps[-1]
        uses_guest = any(s.op == "guest_access" for s in self.steps)
        return render_case(self.steps, case_id, REFERENCE, self.requires if uses_guest else [],
                           f"{self.labels['a']}: {step.describe('a')}; {self.labels['b']}: "
                           f"{step.describe('b')}", self.labels, self.header)


KernelPair = tuple[Callable[[], Kernel], Callable[[], Kernel]]

# Small menus: the interesting values of each argument, and a few bad ones.
GMEM_SIZES = (P, 2 * P, 4 * P, 8 * P, 16 * P, 0, 100, 1 << 40)
GMEM_FLAGS = (3, 3, 3, 1, 0, 2, 4, 7)  # 7: with NO_DIRECT_MAP (an error where not offered)
PROTS = (uapi.PROT_READ | uapi.PROT_WRITE,) * 3 + (uapi.PROT_READ, uapi.PROT_NONE,
                                                  uapi.PROT_READ | uapi.PROT_EXEC)
ADVICE = (uapi.MADV_DONTNEED, uapi.MADV_REMOVE, uapi.MADV_NORMAL, uapi.MADV_WILLNEED,
          uapi.MADV_HUGEPAGE, uapi.MADV_FREE)
FALLOC_MODES = (uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE,) * 2 + (
    uapi.FALLOC_FL_KEEP_SIZE, 0, uapi.FALLOC_FL_PUNCH_HOLE, uapi.FALLOC_FL_ZERO_RANGE)
# 0xfee00000 is the APIC page, MMIO for KVM's emulator whatever memslot covers it.
GPA_BASES = (0x100000,) * 3 + (0x200000, 0xC0000000, 0x100000000, 0xFEE00000, 0)
SLOT_FLAGS = (uapi.KVM_MEM_GUEST_MEMFD,) * 3 + (0, 0, uapi.KVM_MEM_READONLY,
                                                uapi.KVM_MEM_LOG_DIRTY_PAGES,
                                                uapi.KVM_MEM_GUEST_MEMFD | uapi.KVM_MEM_READONLY)
CAPS = tuple(v for k, v in uapi.CAPS.items() if k != "VM_TYPES")
MAX_FDS = 12
MAX_REGIONS = 6


def pages(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n)


@dataclass(frozen=True)
class Offer:
    """What the fuzzer asks both kernels: the operations the kernel under test has.

    A kernel without guest_memfd is still fuzzed on memfds, mappings,
    memslots of ordinary memory and guest accesses through them; `left_out`
    says what was not asked and why.
    """

    guest_memfd: bool = True  # create guest_memfds, bind them, map them
    gmem_mmap: bool = True  # guest_memfds can be created MMAP|INIT_SHARED and mapped
    guest_access: bool = True
    attributes: bool = True  # KVM_SET_MEMORY_ATTRIBUTES answers alike on both
    caps: tuple[int, ...] = CAPS
    # Two models: the software-protected VM (which a host may lack) and the
    # model-only conversion ioctl of the in-place designs are asked too.
    private_vms: bool = False
    model_only: bool = False
    left_out: tuple[str, ...] = ()

    @property
    def slot_flags(self) -> tuple[int, ...]:
        if self.guest_memfd:
            return SLOT_FLAGS
        return tuple(f for f in SLOT_FLAGS if not f & uapi.KVM_MEM_GUEST_MEMFD)

    @property
    def files(self) -> tuple[str, ...]:
        """The kinds of fd mmap draws from (anon stands for MAP_ANONYMOUS)."""
        gmem = ("gmem",) * 3 if self.guest_memfd else ()
        restricted = ("restricted",) * 2 if self.model_only else ()
        return (*gmem, *restricted, "memfd", "memfd", "anon", "vm")


class DifferentialMachine(RuleBasedStateMachine):
    """Subclassed by make_machine() with the kernel factories and an observer."""

    factories: ClassVar[KernelPair]
    offer: ClassVar[Offer] = Offer()
    requires: ClassVar[list[str]] = []
    labels: ClassVar[dict[str, str]] = {"a": "model", "b": "host"}
    header: ClassVar[dict[str, str]] = {}
    # Set to collect every divergence instead of stopping at the first (two
    # designs differ in many ways, and each is a finding): an example that
    # diverged is recorded here and does nothing more.
    collected: ClassVar[list[Divergence] | None] = None
    # ... and a call that diverged once (same operation, same literal arguments)
    # is not made again in later batches, so that they reach the differences
    # behind it.  Within a batch `known` stays fixed (Hypothesis requires the
    # same choices to behave the same); what a batch learns waits in `learned`.
    known: ClassVar[set[tuple[Any, ...]]] = set()
    learned: ClassVar[set[tuple[Any, ...]]] = set()
    observers: ClassVar[list[Callable[[DifferentialMachine], None]]] = []
    stats: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.kernels = {"a": self.factories[0](), "b": self.factories[1]()}
        self.steps: list[Step] = []
        self.fds: list[Handle] = []
        self.regions: list[Region] = []
        self.names: Counter[str] = Counter()
        self.slots: list[tuple[Handle, int, int, int]] = []  # vm, slot, gpa, size
        self.pinned: set[str] = set()  # regions a memslot's userspace_addr points into
        self.stopped = False  # this example diverged (when collecting)
        type(self).stats["examples"] += 1
        self.observed()

    def teardown(self) -> None:
        for kernel in self.kernels.values():
            kernel.shutdown()

    # --- the one way to call ---------------------------------------------------------------

    def _name(self, prefix: str) -> str:
        self.names[prefix] += 1
        return f"{prefix}{self.names[prefix]}"

    def call(self, op: str, bind: str | None = None, **args: Any) -> Outcome:
        if self.stopped:
            return Outcome(USAGE, "this example already diverged")
        if self.collected is not None and _pattern(op, args) in self.known:
            return Outcome(USAGE, "a known difference")
        step = Step(op, args, bind)
        self.steps.append(step)
        for side in SIDES:
            step.outcomes[side] = run_side(self.kernels[side], op, step.resolve(side))
        stats = type(self).stats
        stats["steps"] += 1
        stats[f"op {op}"] += 1
        outcome = step.outcomes[REFERENCE]
        stats[f"outcome {'ok' if outcome.ok else outcome.kind}"] += 1
        if op == "guest_access" and outcome.ok:
            stats[f"guest exit {outcome.value.exit}"] += 1
        if not step.agreed:
            self._diverged(step)
        return outcome

    def _diverged(self, step: Step) -> None:
        found = Divergence(list(self.steps), list(self.requires), dict(self.labels),
                           dict(self.header))
        if self.collected is None:
            raise found
        self.collected.append(found)
        self.learned.add(_pattern(step.op, step.args))
        self.stopped = True

    def _new_fd(self, op: str, kind: str, prefix: str, owner: Handle | None = None,
                **args: Any) -> Handle | None:
        name = self._name(prefix)
        outcome = self.call(op, bind=name, **args)
        if not outcome.ok:
            return None
        step = self.steps[-1]
        handle = Handle(name, kind, step.outcomes["a"].value, step.outcomes["b"].value, owner)
        self.fds.append(handle)
        return handle

    def _pick(self, data: st.DataObject, kinds: tuple[str, ...]) -> Handle | None:
        choices = [h for h in self.fds if h.kind in kinds]
        if not choices:
            return None
        # Mostly the first (the VM a vCPU was started with): states get deep.
        if data.draw(st.integers(0, 3)):
            return choices[0]
        return data.draw(st.sampled_from(choices))

    def _pick_slot_vm(self, data: st.DataObject) -> Handle:
        """The VM a new memslot goes into: mostly one a vCPU can reach."""
        vm = self._pick(data, ("vm",))
        assert vm is not None
        cpu_vms = [h.vm for h in self.fds if h.kind == "vcpu" and h.vm in self.fds]
        roll = data.draw(st.integers(0, 3))
        if cpu_vms and roll:
            vm = data.draw(st.sampled_from(cpu_vms))
            assert vm is not None
        return vm

    def _has(self, *kinds: str) -> bool:
        return any(h.kind in kinds for h in self.fds)

    # --- fds ----------------------------------------------------------------------------------

    @initialize(data=st.data(), cpu=st.integers(0, 4), setup=st.integers(0, 2),
                kind=st.integers(0, 3))
    def start(self, data: st.DataObject, cpu: int, setup: int, kind: int) -> None:
        """Most examples are about one VM with a vCPU and guest memory: start with them
        (between two models, a VM with private memory half of the time)."""
        vm_type = 0
        if self.offer.private_vms and kind >= 2:
            vm_type = (uapi.KVM_X86_SW_PROTECTED_VM, uapi.MODEL_PKVM_VM)[kind - 2]
        vm = self._new_fd("create_vm", "vm", "vm", type=vm_type)
        if vm is not None and cpu:
            self._new_fd("create_vcpu", "vcpu", "cpu", vm, vm=Ref(vm), id=0)
        if vm is not None and setup and self.offer.guest_memfd:
            self.vmm_setup(data, data.draw(st.sampled_from(GPA_BASES)),
                           data.draw(st.sampled_from((1, 2, 4))), data.draw(st.sampled_from((3, 3, 1))),
                           data.draw(st.integers(0, 3)), 0)

    @rule(vm_type=st.sampled_from((0, 0, 0, 2, 5, -1, 1, 1, uapi.MODEL_PKVM_VM)))
    def create_vm(self, vm_type: int) -> None:
        if len(self.fds) >= MAX_FDS:
            return
        if vm_type in (uapi.KVM_X86_SW_PROTECTED_VM, uapi.MODEL_PKVM_VM) and \
                not self.offer.private_vms:
            vm_type = 0
        if vm_type < 0:
            self._new_fd("open_kvm", "kvm", "kvm")
        else:
            self._new_fd("create_vm", "vm", "vm", type=vm_type)

    @precondition(lambda self: self._has("vm") and len(self.regions) < MAX_REGIONS
                  and self.offer.guest_memfd)
    @rule(data=st.data(), base=st.sampled_from(GPA_BASES), npages=st.sampled_from((1, 2, 4)),
          flags=st.sampled_from((3, 3, 1)), map_it=st.integers(0, 3), slot=st.integers(0, 3))
    def vmm_setup(self, data: st.DataObject, base: int, npages: int, flags: int, map_it: int,
                  slot: int) -> None:
        """What a VMM does: a guest_memfd, mapped or not, bound to a memslot at userspace_addr."""
        vm = self._pick_slot_vm(data)
        gmem = self._new_fd("create_guest_memfd", "gmem", "f", vm, vm=Ref(vm), size=npages * P,
                            flags=flags)
        if gmem is None:
            return
        uaddr: Ref | int = 0
        if map_it:
            name = self._name("r")
            if self.call("mmap", bind=name, fd=Ref(gmem), length=npages * P,
                         prot=uapi.PROT_READ | uapi.PROT_WRITE, flags=uapi.MAP_SHARED).ok:
                step = self.steps[-1]
                region = Region(name, step.outcomes["a"].value, step.outcomes["b"].value, npages)
                self.regions.append(region)
                self.pinned.add(name)
                uaddr = Ref(region)
        outcome = self.call("set_user_memory_region2", vm=Ref(vm), slot=slot,
                            flags=uapi.KVM_MEM_GUEST_MEMFD, guest_phys_addr=base,
                            memory_size=npages * P, userspace_addr=uaddr, guest_memfd=Ref(gmem),
                            guest_memfd_offset=0)
        if outcome.ok:
            self.slots.append((vm, slot, base, npages * P))

    @precondition(lambda self: self._has("vm") and len(self.regions) < MAX_REGIONS)
    @rule(data=st.data(), base=st.sampled_from(GPA_BASES), npages=st.sampled_from((1, 2, 4)),
          slot=st.integers(0, 3), anon=st.booleans())
    def vmm_setup_plain(self, data: st.DataObject, base: int, npages: int, slot: int,
                        anon: bool) -> None:
        """What a VMM does without guest_memfd: ordinary memory (a memfd or anonymous),
        mapped and bound to a memslot at userspace_addr."""
        vm = self._pick_slot_vm(data)
        fd: Ref | int = -1
        flags = uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS
        if not anon and len(self.fds) < MAX_FDS:
            memfd = self._new_fd("memfd_create", "memfd", "m", name="guest", flags=0)
            if memfd is None:
                return
            self.call("ftruncate", fd=Ref(memfd), length=npages * P)
            fd, flags = Ref(memfd), uapi.MAP_SHARED
        name = self._name("r")
        if not self.call("mmap", bind=name, fd=fd, length=npages * P,
                         prot=uapi.PROT_READ | uapi.PROT_WRITE, flags=flags).ok:
            return
        step = self.steps[-1]
        region = Region(name, step.outcomes["a"].value, step.outcomes["b"].value, npages)
        self.regions.append(region)
        self.pinned.add(name)
        outcome = self.call("set_user_memory_region2", vm=Ref(vm), slot=slot, flags=0,
                            guest_phys_addr=base, memory_size=npages * P,
                            userspace_addr=Ref(region))
        if outcome.ok:
            self.slots = [s for s in self.slots if (s[0], s[1]) != (vm, slot)]
            self.slots.append((vm, slot, base, npages * P))

    @precondition(lambda self: self._has("vm") and self.offer.guest_memfd)
    @rule(data=st.data(), size=st.sampled_from(GMEM_SIZES), flags=st.sampled_from(GMEM_FLAGS),
          wrong_fd=st.integers(0, 9))
    def create_guest_memfd(self, data: st.DataObject, size: int, flags: int, wrong_fd: int) -> None:
        kinds = ("vm",) if wrong_fd else ("vm", "kvm", "gmem", "vcpu")
        vm = self._pick(data, kinds)
        if vm is not None and len(self.fds) < MAX_FDS:
            self._new_fd("create_guest_memfd", "gmem", "f", vm if vm.kind == "vm" else None,
                         vm=Ref(vm), size=size, flags=flags)

    @rule(size=st.sampled_from((P, 4 * P, 16 * P, 0, 5000)))
    def memfd(self, size: int) -> None:
        if len(self.fds) < MAX_FDS:
            handle = self._new_fd("memfd_create", "memfd", "m", name="fuzz", flags=0)
            if handle is not None:
                self.call("ftruncate", fd=Ref(handle), length=size)

    @precondition(lambda self: self.offer.model_only)
    @rule(size=st.sampled_from((2 * P, 4 * P, 4 * P, 0)))
    def restricted_memfd(self, size: int) -> None:
        """The 2022 proposal's memfd_restricted (model only; ENOSYS outside its designs)."""
        if len(self.fds) < MAX_FDS:
            handle = self._new_fd("memfd_restricted", "restricted", "r", flags=0)
            if handle is not None:
                self.call("ftruncate", fd=Ref(handle), length=size)

    @precondition(lambda self: self._has("memfd", "gmem", "restricted"))
    @rule(data=st.data(), size=st.sampled_from((0, P, 8 * P, 5000, -1)))
    def ftruncate(self, data: st.DataObject, size: int) -> None:
        f = self._pick(data, ("memfd", "gmem", "restricted"))
        assert f is not None
        self.call("ftruncate", fd=Ref(f), length=size)

    @precondition(lambda self: bool(self.fds))
    @rule(data=st.data())
    def dup(self, data: st.DataObject) -> None:
        f = data.draw(st.sampled_from(self.fds))
        if len(self.fds) < MAX_FDS:
            self._new_fd("dup", f.kind, f.name.rstrip("0123456789") + "d", f.vm, fd=Ref(f))

    @precondition(lambda self: bool(self.fds))
    @rule(data=st.data(), keep_vms=st.booleans())
    def close(self, data: st.DataObject, keep_vms: bool) -> None:
        others = [h for h in self.fds if h.kind not in ("vm", "vcpu")]
        f = data.draw(st.sampled_from(others if keep_vms and others else self.fds))
        self.fds.remove(f)
        self.call("close", fd=Ref(f))

    @precondition(lambda self: bool(self.fds))
    @rule(data=st.data(), which=st.sampled_from(("fsync", "fchmod", "lseek", "read", "write")),
          offset=st.sampled_from((0, 1, P, -1)), whence=st.sampled_from((0, 1, 2, 3, 4, 9)))
    def file_op(self, data: st.DataObject, which: str, offset: int, whence: int) -> None:
        f = data.draw(st.sampled_from(self.fds))
        if which == "fsync":
            self.call("fsync", fd=Ref(f))
        elif which == "fchmod" and f.kind in ("gmem", "memfd"):
            self.call("fchmod", fd=Ref(f), mode=0o600)
        elif which == "lseek":
            self.call("lseek", fd=Ref(f), offset=offset, whence=whence)
        elif which == "read":
            self.call("read", fd=Ref(f), length=16)
        elif which == "write":
            self.call("write", fd=Ref(f), data=b"gmemlab")

    @precondition(lambda self: self._has("vm"))
    @rule(data=st.data(), attributes=st.sampled_from((0, 8, 1)),
          arg=st.sampled_from((0, 1 << 12, 1 << 11, 3)), cap=st.sampled_from(CAPS))
    def vm_op(self, data: st.DataObject, attributes: int, arg: int, cap: int) -> None:
        vm = self._pick(data, ("vm", "vcpu", "gmem"))
        assert vm is not None
        if data.draw(st.booleans()) and self.offer.attributes:
            self.call("set_memory_attributes", vm=Ref(vm), address=0x100000, size=P,
                      attributes=attributes)
        elif cap == uapi.KVM_CAP_EXIT_HYPERCALL or data.draw(st.booleans()):
            self.call("enable_cap", vm=Ref(vm), cap=uapi.KVM_CAP_EXIT_HYPERCALL, args=[arg])

    @precondition(lambda self: self._has("gmem", "restricted") and self.offer.model_only)
    @rule(data=st.data(), attributes=st.sampled_from((0, 8, 8)), first=pages(4),
          npages=st.sampled_from((1, 2, 4)))
    def convert_in_place(self, data: st.DataObject, attributes: int, first: int,
                         npages: int) -> None:
        """KVM_SET_MEMORY_ATTRIBUTES2 on a guest_memfd (the in-place designs; ENOTTY elsewhere)."""
        f = self._pick(data, ("gmem", "restricted"))
        assert f is not None
        self.call("set_memory_attributes2", fd=Ref(f), offset=first * P, size=npages * P,
                  attributes=attributes)

    @precondition(lambda self: bool(self.fds))
    @rule(data=st.data())
    def fstat(self, data: st.DataObject) -> None:
        self.call("fstat", fd=Ref(data.draw(st.sampled_from(self.fds))))

    @precondition(lambda self: self._has("memfd", "gmem"))
    @rule(data=st.data(), length=st.sampled_from((1, 16, P)), offset=st.sampled_from((0, 8, P, -1)),
          write=st.booleans())
    def pread_pwrite(self, data: st.DataObject, length: int, offset: int, write: bool) -> None:
        f = self._pick(data, ("memfd", "gmem"))
        assert f is not None
        if write:
            self.call("pwrite", fd=Ref(f), data=bytes([0x42]) * length, offset=offset)
        else:
            self.call("pread", fd=Ref(f), length=length, offset=offset)

    @precondition(lambda self: self._has("memfd", "gmem"))
    @rule(data=st.data(), mode=st.sampled_from(FALLOC_MODES), first=pages(16),
          npages=st.sampled_from((1, 2, 4, 16, 1 << 20)), unaligned=st.integers(0, 7))
    def fallocate(self, data: st.DataObject, mode: int, first: int, npages: int,
                  unaligned: int) -> None:
        f = self._pick(data, ("memfd", "gmem"))
        assert f is not None
        if not mode & uapi.FALLOC_FL_PUNCH_HOLE:
            npages = min(npages, 16)  # allocation is real memory on the host
        offset = first * P + (100 if unaligned == 0 else 0)
        self.call("fallocate", fd=Ref(f), mode=mode, offset=offset, length=npages * P)

    @precondition(lambda self: bool(self.fds))
    @rule(data=st.data(), cap=st.sampled_from(CAPS), on_vm=st.booleans())
    def check_extension(self, data: st.DataObject, cap: int, on_vm: bool) -> None:
        if cap not in self.offer.caps:
            return
        if on_vm:
            self.call("check_extension", cap=cap, vm=Ref(data.draw(st.sampled_from(self.fds))))
        else:
            self.call("check_extension", cap=cap)

    # --- the address space ----------------------------------------------------------------------

    def _file_arg(self, data: st.DataObject) -> tuple[Ref | int, int]:
        """A file to map (or -1 with MAP_ANONYMOUS), and the mapping type."""
        kind = data.draw(st.sampled_from(self.offer.files))
        files = [h for h in self.fds if h.kind == kind]
        shared = data.draw(st.sampled_from((uapi.MAP_SHARED, uapi.MAP_SHARED, uapi.MAP_PRIVATE)))
        if not files:
            return -1, uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS
        return Ref(data.draw(st.sampled_from(files))), shared

    @rule(data=st.data(), npages=st.integers(1, 8), prot=st.sampled_from(PROTS),
          offset=pages(4))
    def mmap(self, data: st.DataObject, npages: int, prot: int, offset: int) -> None:
        if len(self.regions) >= MAX_REGIONS:
            return
        fd, flags = self._file_arg(data)
        name = self._name("r")
        outcome = self.call("mmap", bind=name, fd=fd, length=npages * P, prot=prot, flags=flags,
                            offset=offset * P if fd != -1 else 0)
        if outcome.ok:
            step = self.steps[-1]
            self.regions.append(Region(name, step.outcomes["a"].value,
                                       step.outcomes["b"].value, npages))

    def _range(self, data: st.DataObject) -> tuple[Region, int, int]:
        region = data.draw(st.sampled_from(self.regions))
        first = data.draw(st.integers(0, region.pages - 1))
        count = data.draw(st.integers(1, region.pages - first))
        return region, first, count

    @precondition(lambda self: bool(self.regions))
    @rule(data=st.data(), prot=st.sampled_from(PROTS), offset=pages(4))
    def mmap_fixed(self, data: st.DataObject, prot: int, offset: int) -> None:
        region, first, count = self._range(data)
        fd, flags = self._file_arg(data)
        where = Ref(region, first * P)
        outcome = self.call("mmap", fd=fd, length=count * P, prot=prot,
                            flags=flags | uapi.MAP_FIXED, offset=offset * P if fd != -1 else 0,
                            addr=where)
        # A MAP_FIXED whose f_op->mmap failed may have left a gap: ask both
        # kernels, and fill it at once so the region stays mapped (and the
        # interpreter cannot take the addresses on the host).
        if outcome.kind == "errno" and self.call(
                "madvise", addr=where, length=count * P, advice=uapi.MADV_NORMAL).kind == "errno":
            self._reserve(where, count)

    def _reserve(self, where: Ref, count: int) -> None:
        self.call("mmap", fd=-1, length=count * P, prot=uapi.PROT_NONE,
                  flags=uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_FIXED, addr=where)

    @precondition(lambda self: bool(self.regions))
    @rule(data=st.data())
    def unmap_part(self, data: st.DataObject) -> None:
        region, first, count = self._range(data)
        self._reserve(Ref(region, first * P), count)

    @precondition(lambda self: any(r.name not in self.pinned for r in self.regions))
    @rule(data=st.data())
    def munmap(self, data: st.DataObject) -> None:
        # A region behind a memslot stays: once unmapped the interpreter could
        # take its addresses, and the host refuses guest accesses there.
        region = data.draw(st.sampled_from([r for r in self.regions if r.name not in self.pinned]))
        self.regions.remove(region)
        self.call("munmap", addr=Ref(region), length=region.pages * P)

    @precondition(lambda self: bool(self.regions))
    @rule(data=st.data(), prot=st.sampled_from(PROTS))
    def mprotect(self, data: st.DataObject, prot: int) -> None:
        region, first, count = self._range(data)
        self.call("mprotect", addr=Ref(region, first * P), length=count * P, prot=prot)

    @precondition(lambda self: bool(self.regions))
    @rule(data=st.data(), advice=st.sampled_from(ADVICE))
    def madvise(self, data: st.DataObject, advice: int) -> None:
        region, first, count = self._range(data)
        self.call("madvise", addr=Ref(region, first * P), length=count * P, advice=advice)

    def _bytes_range(self, data: st.DataObject) -> tuple[Region, int, int]:
        region = data.draw(st.sampled_from(self.regions))
        size = region.pages * P
        start = data.draw(st.integers(0, size - 1))
        length = data.draw(st.integers(1, min(size - start, 2 * P)))
        return region, start, length

    @precondition(lambda self: bool(self.regions))
    @rule(data=st.data(), byte=st.integers(0, 255), fill=st.booleans())
    def write_mem(self, data: st.DataObject, byte: int, fill: bool) -> None:
        region, start, length = self._bytes_range(data)
        if fill:
            self.call("write_mem", addr=Ref(region, start), fill=byte, length=length)
        else:
            length = min(length, 64)  # distinct bytes: keep case files readable
            payload = bytes((byte + i) & 0xFF for i in range(length))
            self.call("write_mem", addr=Ref(region, start), data=payload)

    @precondition(lambda self: bool(self.regions) and self.offer.model_only)
    @rule(data=st.data(), unpin=st.booleans())
    def pin(self, data: st.DataObject, unpin: bool) -> None:
        """A long-term GUP pin (O_DIRECT, VFIO) on mapped pages, or its release (model only)."""
        region, first, count = self._range(data)
        op = "gup_unpin" if unpin else "gup_pin"
        self.call(op, addr=Ref(region, first * P), length=count * P)

    @precondition(lambda self: bool(self.regions))
    @rule(data=st.data())
    def read_mem(self, data: st.DataObject) -> None:
        region, start, length = self._bytes_range(data)
        self.call("read_mem", addr=Ref(region, start), length=length)

    # --- KVM ------------------------------------------------------------------------------------

    @precondition(lambda self: self._has("vm"))
    @rule(data=st.data(), slot=st.integers(0, 3), flags=st.sampled_from(SLOT_FLAGS),
          base=st.sampled_from(GPA_BASES), npages=st.sampled_from((1, 2, 4, 8)),
          gmem_page=pages(8), v1=st.integers(0, 5))
    def set_memory_region(self, data: st.DataObject, slot: int, flags: int, base: int,
                          npages: int, gmem_page: int, v1: int) -> None:
        vm = self._pick(data, ("vm",))
        assert vm is not None
        if flags not in self.offer.slot_flags:
            flags &= ~uapi.KVM_MEM_GUEST_MEMFD
        uaddr: Ref | int = 0
        roll = data.draw(st.integers(0, 3))
        if self.regions and roll:
            # The slot stays inside the region: its userspace_addr range is
            # then never memory of the interpreter, which the host refuses.
            region = data.draw(st.sampled_from(self.regions))
            first = data.draw(st.integers(0, region.pages - 1))
            npages = min(npages, region.pages - first)
            uaddr = Ref(region, first * P)
            self.pinned.add(region.name)
        if v1 == 0:
            self.call("set_user_memory_region", vm=Ref(vm), slot=slot, flags=flags,
                      guest_phys_addr=base, memory_size=npages * P, userspace_addr=uaddr)
        else:
            gmem = self._pick(data, ("gmem", "restricted")) if flags & uapi.KVM_MEM_GUEST_MEMFD \
                else None
            extra: dict[str, Any] = {}
            if gmem is not None:
                extra = {"guest_memfd": Ref(gmem), "guest_memfd_offset": gmem_page * P}
            self.call("set_user_memory_region2", vm=Ref(vm), slot=slot, flags=flags,
                      guest_phys_addr=base, memory_size=npages * P, userspace_addr=uaddr, **extra)
        if self.steps[-1].outcomes[REFERENCE].ok:
            self.slots = [s for s in self.slots if (s[0], s[1]) != (vm, slot)]
            self.slots.append((vm, slot, base, npages * P))

    @precondition(lambda self: self._has("vm"))
    @rule(data=st.data(), slot=st.integers(0, 3))
    def delete_memory_region(self, data: st.DataObject, slot: int) -> None:
        vm = self._pick(data, ("vm",))
        assert vm is not None
        if self.call("set_user_memory_region2", vm=Ref(vm), slot=slot, flags=0, guest_phys_addr=0,
                     memory_size=0).ok:
            self.slots = [s for s in self.slots if (s[0], s[1]) != (vm, slot)]

    @precondition(lambda self: self._has("vm"))
    @rule(data=st.data(), vcpu_id=st.integers(0, 2))
    def create_vcpu(self, data: st.DataObject, vcpu_id: int) -> None:
        vm = self._pick(data, ("vm",))
        if vm is not None and len(self.fds) < MAX_FDS:
            self._new_fd("create_vcpu", "vcpu", "cpu", vm, vm=Ref(vm), id=vcpu_id)

    @precondition(lambda self: self._has("vcpu") and self.offer.guest_access)
    @rule(data=st.data(), write=st.booleans(), byte=st.integers(0, 255),
          length=st.sampled_from((1, 2, 4, 8, 3, 13, 64, P, 2 * P + 5)), where=st.integers(0, 9),
          offset=st.integers(0, 3 * P))
    def guest_access(self, data: st.DataObject, write: bool, byte: int, length: int, where: int,
                     offset: int) -> None:
        cpu = self._pick(data, ("vcpu",))
        assert cpu is not None
        with_slots = [h for h in self.fds
                      if h.kind == "vcpu" and any(s[0] is h.vm for s in self.slots)]
        if with_slots and where > 1:
            cpu = data.draw(st.sampled_from(with_slots))
        slots = [s for s in self.slots if s[0] is cpu.vm]
        if slots and where:
            _, _, base, size = data.draw(st.sampled_from(slots))
            gpa = base + offset % (size if where > 2 else size + P)
        else:
            gpa = data.draw(st.sampled_from(GPA_BASES)) + offset
        args: dict[str, Any] = {"vcpu": Ref(cpu), "gpa": gpa, "length": length}
        if write:
            length = min(length, 64)  # distinct bytes: keep case files readable
            args["length"] = length
            args.update(write=True, data=bytes((byte + i) & 0xFF for i in range(length)))
        self.call("guest_access", **args)

    @invariant()
    def observed(self) -> None:
        for observer in self.observers:
            observer(self)


def _pattern(op: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """A call's operation and literal arguments (its fds and addresses left out)."""
    def frozen(v: Any) -> Any:
        return tuple(frozen(x) for x in v) if isinstance(v, (list, tuple)) else v
    return (op, *sorted((k, frozen(v)) for k, v in args.items() if not isinstance(v, Ref)))


def make_machine(factories: KernelPair, requires: list[str],
                 observer: Callable[[DifferentialMachine], None] | None = None,
                 offer: Offer | None = None, labels: dict[str, str] | None = None,
                 header: dict[str, str] | None = None,
                 collect: bool = False) -> type[DifferentialMachine]:
    """A DifferentialMachine class bound to two kernel factories."""
    return type("Differential", (DifferentialMachine,),
                {"factories": factories, "requires": requires, "offer": offer or Offer(),
                 "collected": [] if collect else None, "known": set(), "learned": set(),
                 "labels": labels or {"a": "model", "b": "host"}, "header": header or {},
                 "observers": [observer] if observer is not None else [], "stats": Counter()})
