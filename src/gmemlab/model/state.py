"""The model's whole state, as plain data.

Everything an operation can change lives in one State object: the fd table,
open files (struct file), inodes, VMs with their memslots and attributes, and
the host address space.  Objects refer to each other by integer id, never by
Python reference, so a snapshot is a copy of dictionaries of small records
plus copies of their RangeMaps (whose values are immutable and shared), and
two states can be compared or hashed field by field.

Behaviour lives elsewhere (the model's components, core.py and parts.py, and
the design policies); this module holds no functions that change state.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..rangemap import RangeMap
from ..uapi import PAGE_SHIFT
from .contract import Moves, Space, Touch, facts
from .events import Event
from .pages import PAGE_INDEX_LIMIT, PageStore, new_store

GFN_LIMIT = 1 << (64 - PAGE_SHIFT)
# Physical frame numbers of a 64-bit physical address.
PFN_LIMIT = 1 << (64 - PAGE_SHIFT)
# x86-64 user space ends at TASK_SIZE_MAX = 2^47 - 4096.
TASK_SIZE = (1 << 47) - (1 << PAGE_SHIFT)
VPAGE_LIMIT = 1 << (47 - PAGE_SHIFT)


@dataclass(frozen=True)
class Notifier:
    """A registered restricted-memfd notifier: a scripted one (name, events it
    fails with which errno) or KVM's, registered by a memslot binding."""

    name: str
    fail: tuple[tuple[str, int], ...] = ()
    vm: int | None = None  # KVM's notifier: the VM and memslot key it speaks for
    slot: int | None = None


@dataclass
class RestrictedState:
    """The per-file state of the 2022 restricted memfd (docs/DESIGNS.md, seed)."""

    has_mapping: bool = field(
        default=False,
        metadata=facts(moves=Moves.NOT, touch=(Touch.RESTRICTED, Touch.MAP_WRITES)))
    destroyed: bool = field(
        default=False,
        metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.RESTRICTED, Touch.HOST, Touch.MAP_WRITES)))
    # Unmapped while get_pfn references were outstanding (restriction 5's case),
    # whatever the design then did: what promise P9 is judged against.
    unmapped_referenced: bool = field(
        default=False,
        metadata=facts(moves=Moves.NOT, touch=(Touch.RESTRICTED, Touch.MAP_WRITES)))
    notifiers: list[Notifier] = field(
        default_factory=list,
        metadata=facts(moves=Moves.NOT, touch=(Touch.MAP,)))
    log: list[str] = field(default_factory=list, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP,)))
    # Designs that map the file piecewise (page-mmap, kvm-map): the virtual
    # page where file page 0 belongs, fixed by the first mapping, so that
    # every later mapping of page i lands at canonical + i and merges.
    canonical: int | None = field(
        default=None,
        metadata=facts(moves=Moves.NOT, touch=(Touch.MAP, Touch.MAP_WRITES)))
    # The file pages an mmap in progress covers (KVM's notifier checks them).
    mmap_range: tuple[int, int] = field(
        default=(0, 0),
        metadata=facts(moves=Moves.BY_RULE, touch=(Touch.MAP, Touch.MAP_WRITES)))


@dataclass(frozen=True)
class Policy:
    """A NUMA memory policy (struct mempolicy) as get_mempolicy and mpol_equal see it.

    nodes is the policy's node set after the intersection with the nodes that
    have memory (0 for MPOL_LOCAL); user_nodes the node set as the caller gave
    it, kept only with MPOL_F_STATIC_NODES or MPOL_F_RELATIVE_NODES.  Equal
    values are equal policies, so adjacent VMAs merge exactly when the kernel's
    vma_merge would.
    """

    mode: int
    flags: int = 0  # MPOL_F_STATIC_NODES, MPOL_F_RELATIVE_NODES, MPOL_F_NUMA_BALANCING
    nodes: int = 0
    user_nodes: int = 0


@dataclass
class Inode:
    """An inode: the memory and the per-file facts that outlive any one fd."""

    ino: int = field(metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    # "gmem", "memfd", "shmem", "chardev", "anon", "restricted"
    kind: str = field(metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    mode: int = field(metadata=facts(moves=Moves.NOT, touch=(Touch.HOST, Touch.MAP)))
    size: int = field(default=0, metadata=facts(moves=Moves.NOT, touch=(Touch.RESTRICTED, Touch.HOST)))
    nlink: int = field(default=1, metadata=facts(moves=Moves.NOT))
    pages: PageStore = field(
        default_factory=new_store,
        metadata=facts(Space.FILE_PAGE, Moves.WITH_PAGES, touch=(Touch.PAGES, Touch.FAULT)))
    # guest_memfd creation flags
    flags: int = field(default=0, metadata=facts(moves=Moves.NOT, touch=(Touch.HOST, Touch.MAP)))
    # owning VM of a guest_memfd
    vm: int | None = field(default=None, metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    # open files (struct file) on this inode
    files: int = field(default=0, metadata=facts(moves=Moves.NOT))
    # References taken on pages beyond the page cache's own (get_pfn), per page.
    refs: RangeMap[int] = field(
        default_factory=lambda: RangeMap(0, PAGE_INDEX_LIMIT),
        metadata=facts(Space.FILE_PAGE, Moves.WITH_PAGES, touch=(Touch.PAGES, Touch.MAP)))
    # pfn - index per page, None where no physical page has been handed out;
    # contiguous allocations share one delta and so one run.
    pfns: RangeMap[int | None] = field(
        default_factory=lambda: RangeMap(None, PAGE_INDEX_LIMIT),
        metadata=facts(Space.FILE_PAGE, Moves.WITH_PAGES, touch=(Touch.PAGES,)))
    restricted: RestrictedState | None = field(
        default=None,
        metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.RESTRICTED, Touch.HOST)))
    # Long-term GUP pins (gup_pin) per page: references beyond the page cache.
    pins: RangeMap[int] = field(
        default_factory=lambda: RangeMap(0, PAGE_INDEX_LIMIT),
        metadata=facts(Space.FILE_PAGE, Moves.WITH_PAGES, visible=True, touch=(Touch.HOST_MAPPING,)))
    # Host page-table entries mapping each page, over all shared mappings.
    host_ptes: RangeMap[int] = field(
        default_factory=lambda: RangeMap(0, PAGE_INDEX_LIMIT),
        metadata=facts(Space.FILE_PAGE, Moves.WITH_PAGES, visible=True,
                       touch=(Touch.HOST_MAPPING, Touch.FAULT)))
    # VMAs covering each page (a VMA that covers a page can fault it in).
    vma_cover: RangeMap[int] = field(
        default_factory=lambda: RangeMap(0, PAGE_INDEX_LIMIT),
        metadata=facts(Space.FILE_PAGE, Moves.WITH_PAGES, visible=True, touch=(Touch.HOST_MAPPING,)))
    # In-place designs: the file's own shared/private state per page
    # (model/inplace.py); None where attributes live in the VM.
    attributes: RangeMap[int] | None = field(
        default=None,
        metadata=facts(Space.FILE_PAGE, Moves.WITH_PAGES, visible=True,
                       touch=(Touch.COMMON, Touch.MAP_WRITES)))
    # The file's shared NUMA policy per page index (shmem, and guest_memfd from
    # Linux 6.19), created by the first mbind that sets one; None: no policy anywhere.
    policy: RangeMap[Policy | None] | None = field(default=None, metadata=facts(Space.FILE_PAGE, Moves.NEVER))


def total_refs(inode: Inode) -> int:
    """References held on the file's pages beyond the page cache's own: get_pfn's
    and long-term GUP pins through a mapping (each raises the page's refcount,
    which is what the restricted memfd's "outstanding references" count)."""
    return sum((e - s) * n for table in (inode.refs, inode.pins) for s, e, n in table.runs() if n)


@dataclass
class OpenFile:
    """A struct file: what fds and mappings hold a reference to."""

    id: int = field(metadata=facts(moves=Moves.NOT, touch=(Touch.COMMON,)))
    # "kvm", "vm", "vcpu", "gmem", "memfd", "shmem"
    kind: str = field(metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    inode: int = field(metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    # fd table entries pointing here
    fds: int = field(default=0, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP,)))
    # pages of VMAs whose vm_file is this file
    mapped_pages: int = field(
        default=0,
        metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.RESTRICTED, Touch.MAP_WRITES)))
    # kernel references (a restricted memfd's memslot bindings)
    holders: int = field(default=0, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP,)))
    pos: int = field(default=0, metadata=facts(moves=Moves.NOT))
    vm: int | None = field(default=None, metadata=facts(moves=Moves.NOT, touch=(Touch.COMMON,)))
    vcpu: int | None = field(default=None, metadata=facts(moves=Moves.NOT))
    # guest_memfd: file page index -> bound memslot key (as_id << 16 | id)
    bindings: RangeMap[int | None] | None = field(
        default=None,
        metadata=facts(Space.FILE_PAGE, Moves.BY_RULE, visible=True, touch=(Touch.HOST, Touch.MAP)))
    released: bool = field(default=False, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP,)))


@dataclass
class Memslot:
    as_id: int
    id: int
    base_gfn: int
    npages: int
    flags: int
    userspace_addr: int
    private_file: int | None = None  # OpenFile id; None once the file is released
    private_pgoff: int = 0
    private_bound: bool = False  # created with KVM_MEM_GUEST_MEMFD
    gmem_only: bool = False  # KVM_MEMSLOT_GMEM_ONLY: all faults served by guest_memfd

    @property
    def key(self) -> int:
        return self.as_id << 16 | self.id


@dataclass
class Vm:
    id: int = field(metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    type: int = field(metadata=facts(moves=Moves.NOT, touch=(Touch.KVM,)))
    # VM fds + guest_memfd files + vCPU files
    refs: int = field(default=0, metadata=facts(moves=Moves.NOT))
    alive: bool = field(default=True, metadata=facts(moves=Moves.NOT))
    memslots: dict[int, Memslot] = field(
        default_factory=dict,
        metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.KVM, Touch.HOST)))
    # gfn -> memslot key, per address space 0 (the only one without SMM)
    gfn_slots: RangeMap[int | None] = field(
        default_factory=lambda: RangeMap(None, GFN_LIMIT),
        metadata=facts(Space.GFN, Moves.NOT, touch=(Touch.KVM, Touch.HOST)))
    attributes: RangeMap[int] = field(
        default_factory=lambda: RangeMap(0, GFN_LIMIT),
        metadata=facts(Space.GFN, Moves.BY_RULE, visible=True, touch=(Touch.KVM, Touch.HOST)))
    vcpus: set[int] = field(default_factory=set, metadata=facts(moves=Moves.NOT))
    exit_hypercall: int = field(default=0, metadata=facts(moves=Moves.NOT))
    # Memslots whose KVM notifier saw mmap_start without mmap_end or mmap_abort:
    # their file's mapping is being set up, so conversions must wait.
    mmap_pending: set[int] = field(
        default_factory=set,
        metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.KVM, Touch.MAP_WRITES)))
    # SNP/TDX: the pre-boot (measured) phase is over
    launched: bool = field(default=False, metadata=facts(moves=Moves.NOT))
    # a KVM_SET_MEMORY_ATTRIBUTES is between zap and store
    converting: bool = field(default=False, metadata=facts(moves=Moves.NOT, touch=(Touch.KVM, Touch.HOST)))


@dataclass(frozen=True)
class Mapping:
    """What a run of virtual pages maps.  Equal values on adjacent pages are
    one VMA: delta = pgoff - vpage is constant along a VMA exactly when the
    file offsets are contiguous, which is the kernel's merge rule."""

    file: int | None  # OpenFile id, None for private anonymous memory
    delta: int
    prot: int
    shared: bool
    maywrite: bool
    mayexec: bool
    advice: int = 0  # VM_* bits set by madvise (hugepage, random, ...)
    overlay: int | None = None  # private pages (COW or anonymous): State.overlays key
    tag: int = 0  # distinguishes VMAs the kernel left unmerged
    policy: Policy | None = None  # vma->vm_policy (mbind); None: no policy of its own


@dataclass(frozen=True)
class HypPage:
    """pKVM's record of one physical page (struct hyp_page and the host
    stage-2 state, model/pkvm.py).  Equal records on adjacent pfns are one run."""

    host: int = 0  # PKVM_PAGE_OWNED: the host owns all memory it has not given away
    hyp: int = 3  # PKVM_NOPAGE
    pins: int = 0  # hyp_page.refcount: hyp_pin_shared_mem
    guest_shares: int = 0  # host_share_guest_count: shares with non-protected guests
    ffa: bool = False  # lent to the secure world by the FF-A proxy
    # The protected guest the page was donated to: (VM id, gfn - pfn), the
    # annotation pKVM keeps in the host stage-2 entry.
    guest: tuple[int, int] | None = None


@dataclass(frozen=True)
class GuestPte:
    """A leaf of a guest's stage-2 as pKVM keeps it: the page state in the
    software bits, the frame (as pfn - gfn, so contiguous leaves merge) and
    the permissions."""

    state: int
    delta: int
    prot: int


@dataclass
class PkvmState:
    """The pKVM hypervisor's memory state: per physical page, and per guest
    stage-2 page table (VM id -> gfn -> leaf)."""

    pages: RangeMap[HypPage] = field(default_factory=lambda: RangeMap(HypPage(), PFN_LIMIT))
    guests: dict[int, RangeMap[GuestPte | None]] = field(default_factory=dict)


@dataclass
class GupPin:
    """One gup_pin call: the file pages it pinned, as (inode, first, last) runs."""

    runs: tuple[tuple[int, int, int], ...]


@dataclass
class State:
    # fd -> OpenFile id
    fds: dict[int, int] = field(default_factory=dict, metadata=facts(moves=Moves.NOT, touch=(Touch.COMMON,)))
    files: dict[int, OpenFile] = field(
        default_factory=dict,
        metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    inodes: dict[int, Inode] = field(
        default_factory=dict,
        metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    vms: dict[int, Vm] = field(
        default_factory=dict,
        metadata=facts(moves=Moves.NOT, visible=True, touch=(Touch.COMMON,)))
    vmas: RangeMap[Mapping | None] = field(
        default_factory=lambda: RangeMap(None, VPAGE_LIMIT),
        metadata=facts(Space.VIRTUAL_PAGE, Moves.BY_RULE, visible=True,
                       touch=(Touch.HOST, Touch.MAP, Touch.MAP_WRITES)))
    map_count: int = field(default=0, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP, Touch.MAP_WRITES)))
    max_map_count: int = field(default=65530, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP,)))
    overlays: dict[int, PageStore] = field(
        default_factory=dict,
        metadata=facts(moves=Moves.NEVER, touch=(Touch.HOST, Touch.FAULT, Touch.MAP, Touch.MAP_WRITES),
                       keys_move=Moves.NOT, keys_touch=(Touch.HOST, Touch.MAP, Touch.MAP_WRITES)))
    # mapped pages per overlay
    overlay_pages: dict[int, int] = field(
        default_factory=dict,
        metadata=facts(moves=Moves.NEVER, touch=(Touch.HOST, Touch.MAP, Touch.MAP_WRITES),
                       keys_move=Moves.NOT, keys_touch=(Touch.MAP, Touch.MAP_WRITES)))
    # get_unmapped_area's free-area cache (as Linux kept before the maple
    # tree): top-down searches start below free_area unless a hole above it
    # may fit, which cached_hole bounds from above.
    free_area: int = field(default=0, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP, Touch.MAP_WRITES)))
    cached_hole: int = field(default=0, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP, Touch.MAP_WRITES)))
    anon_ino: int | None = field(default=None, metadata=facts(moves=Moves.NOT))
    next_id: int = field(default=1, metadata=facts(moves=Moves.NOT, touch=(Touch.MAP, Touch.MAP_WRITES)))
    # physical frames handed out so far (from 4 GiB up)
    next_pfn: int = field(default=0x100000, metadata=facts(moves=Moves.NOT, touch=(Touch.PAGES,)))
    # Which file page each handed-out frame holds: (inode, index - pfn).
    frames: RangeMap[tuple[int, int] | None] = field(
        default_factory=lambda: RangeMap(None, PFN_LIMIT),
        metadata=facts(Space.PFN, Moves.BY_RULE, touch=(Touch.PAGES,)))
    # Host page-table entries present, per virtual page.
    ptes: RangeMap[bool] = field(
        default_factory=lambda: RangeMap(False, VPAGE_LIMIT),
        metadata=facts(Space.VIRTUAL_PAGE, Moves.BY_RULE, touch=(Touch.HOST_MAPPING, Touch.FAULT)))
    # Long-term pins by (addr, length) of the gup_pin call, oldest first.
    gup_pins: dict[tuple[int, int], list[GupPin]] = field(
        default_factory=dict,
        metadata=facts(moves=Moves.NEVER, keys_move=Moves.NOT))
    # created by the first pKVM hypercall
    pkvm: PkvmState | None = field(
        default=None,
        metadata=facts(Space.PFN, Moves.NEVER, visible=True, touch=(Touch.COMMON,)))
    # the process's policy (set_mempolicy); None: default
    task_policy: Policy | None = field(default=None, metadata=facts(moves=Moves.NEVER))
    counters: Counter[str] = field(default_factory=Counter)
    # Stepwise execution (model/steps.py): each actor's operation in progress,
    # and who holds the mm's mmap_lock and each restricted memfd's lock.
    pending: dict[str, Any] = field(default_factory=dict, metadata=facts(Space.ACTOR, Moves.BY_RULE))
    mm_lock: str | None = field(
        default=None,
        metadata=facts(moves=Moves.BY_RULE, touch=(Touch.COMMON, Touch.MAP_WRITES)))
    file_locks: dict[int, str] = field(
        default_factory=dict,
        metadata=facts(moves=Moves.BY_RULE, visible=True, touch=(Touch.COMMON, Touch.MAP_WRITES),
                       keys_move=Moves.NOT))
    # Events the checker's promises are about (a host access to a private page,
    # a page turned private under a host mapping, get_pfn under a mapping).
    audit: list[Event] = field(default_factory=list)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def snapshot(self) -> State:
        return copy.deepcopy(self)
