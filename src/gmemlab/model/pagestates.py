"""Each design's page state machine, as the model's own declaration.

A picture of a design's page states is worth having only if it is the
model's.  Here the model declares, once, what a page state is (a few named
facts of one page, read through its observers and its data) and which
operations move a page; model/statespace.py explores the states by running
the model, and gmemlab.diagrams draws them (docs/DESIGNS.md shows them;
`gmemlab draw states all -o docs/img/states` draws them again).

* `FileMachine`: page 0 of the file that backs a design's private memory
  (a restricted memfd or a guest_memfd), two pages long and bound to
  memslot 0 of a VM with private memory, with a vCPU.  The moves: conversion
  to private and to shared (KVM_SET_MEMORY_ATTRIBUTES, or
  KVM_SET_MEMORY_ATTRIBUTES2 where the file keeps the attributes), the
  host's mmap and munmap (of the whole file where the design demands it; or
  KVM's kvm_map_shared), a host store through the mapping, GUP pin and
  unpin, get_pfn and put_pfn, a guest store, and a hole punch.  The facts:
  shared, private or unshare pending (KVM's view: the observer's private
  pages, the file's own attribute in place), mapped (a VMA covers the page),
  faulted in (a page-table entry maps it), a get_pfn reference, a GUP pin,
  the file destroyed.  Where a design offers a kind of file only on a VM
  without private memory (6.18's INIT_SHARED), that file is a second
  component of the drawing.
* `HypervisorMachine`: one physical page under the pKVM hypervisor, the same
  in every design: the host's and the hypervisor's states of it, the
  hypervisor's pins, FF-A, the non-protected guests' leaves that borrow it
  and the protected guest's leaf; the moves are the fourteen hypercalls
  (the queries aside) and a protected VM's teardown.

The caller holds one mapping, and one reference at a time (a get_pfn
reference or a GUP pin): more of either shows nothing new and only makes
the drawing larger.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import replace

from .. import uapi
from .designs import DEFAULT_DESIGN, DESIGNS, VARIANTS, Design, make_design
from .kernel import ModelKernel
from .policies import MapScope, PrivateFile
from .state import Inode
from .statespace import Coarsening, Guard, Held, Move, PageStates, Refused, Setup, Step, explore

P = uapi.PAGE_SIZE
PAGES = 2  # the file's pages: page 0 is drawn, page 1 makes a whole-file mapping more than it
GPA = 0x80000000
RW = uapi.PROT_READ | uapi.PROT_WRITE
PUNCH = uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
# The name the hypervisor's machine goes by, beside the designs' names.
HYPERVISOR = "pkvm"


# --- page 0 of a design's private-memory file ---------------------------------------------------------


def _ino(k: ModelKernel, h: Held) -> int:
    return k.state.files[k.state.fds[h.fd("file")]].inode


def _mapped(k: ModelKernel, h: Held) -> bool:
    """The caller has its mapping of the page."""
    return h.addr is not None


def _unmapped(k: ModelKernel, h: Held) -> bool:
    return h.addr is None


class FileMachine:
    """Page 0 of the file that backs the design's private memory."""

    def __init__(self, design: Design) -> None:
        self.design = design
        self.name = design.name
        self.title = f"{design.name}: one page of guest memory"
        self.layout = "TB"
        restricted = design.kvm.private_file is PrivateFile.RESTRICTED
        self.restricted = restricted
        self.in_place = design.conversion.in_place
        self.scope = design.mapping.scope if restricted else None
        kind = "restricted memfd" if restricted else "guest_memfd"
        self.page = (f"page 0 of a {PAGES}-page {kind}, bound to memslot 0 at gfn {GPA >> 12:#x}; "
                     "a vCPU")

    # --- setups --------------------------------------------------------------------------------

    def setups(self) -> list[Setup]:
        """The restricted memfd on a VM with private memory.  A guest_memfd with
        every flag the design offers, with and without INIT_SHARED: each on a
        VM with private memory if the design lets one create it, else on the
        default VM (a second component)."""
        private_vm, default_vm = uapi.KVM_X86_SW_PROTECTED_VM, uapi.KVM_X86_DEFAULT_VM
        if self.restricted:
            return [Setup("memfd_restricted, ftruncate, memslot", "",
                          lambda k: self._build(k, private_vm, None))]
        out: list[Setup] = []
        full = self.design.gmem_flags(private_vm) | self.design.gmem_flags(default_vm)
        variants = [full, full & ~uapi.GUEST_MEMFD_FLAG_INIT_SHARED]
        groups = {private_vm: "a VM with private memory", default_vm: "a VM without private memory"}
        for flags in dict.fromkeys(variants):
            for vm_type in (private_vm, default_vm):
                if self.design.kvm.gmem_memslot_allowed(vm_type) and \
                        not flags & ~self.design.gmem_flags(vm_type):
                    label = f"create_guest_memfd({_gmem_flag_names(flags)}), memslot"
                    out.append(Setup(label, groups[vm_type], self._builder(vm_type, flags)))
                    break
        if len({s.group for s in out}) == 1:
            out = [replace(s, group="") for s in out]
        return out

    def _builder(self, vm_type: int, gmem_flags: int) -> Callable[[ModelKernel], Held]:
        return lambda k: self._build(k, vm_type, gmem_flags)

    def _build(self, k: ModelKernel, vm_type: int, gmem_flags: int | None) -> Held:
        vm = k.create_vm(vm_type)
        if gmem_flags is None:
            f = k.memfd_restricted(0)
            k.ftruncate(f, PAGES * P)
        else:
            f = k.create_guest_memfd(vm, PAGES * P, gmem_flags)
        # Shared guest memory outside the file, for the designs whose shared
        # accesses go through userspace_addr.
        anon = k.mmap(-1, PAGES * P, RW, uapi.MAP_SHARED | uapi.MAP_ANONYMOUS)
        k.set_user_memory_region2(vm, 0, uapi.KVM_MEM_GUEST_MEMFD, GPA, PAGES * P, anon,
                                  guest_memfd=f)
        cpu = k.create_vcpu(vm, 0)
        return Held(fds=(("vm", vm), ("file", f), ("vcpu", cpu)))

    # --- moves ---------------------------------------------------------------------------------

    def moves(self) -> list[Move]:
        whole = self.restricted and self.scope is MapScope.WHOLE_FILE
        out = [Move("to private", self._to_private), Move("to shared", self._to_shared),
               Move("mmap whole file" if whole else "mmap", self._mmap, _unmapped)]
        if self.scope is MapScope.KVM_ONLY:
            out.append(Move("kvm_map_shared", self._kvm_map, _unmapped))
        if whole:
            # Part of the whole-file mapping: the split the design refuses.
            out.append(Move("munmap page 0", self._munmap_page, _mapped))
        out += [
            Move("munmap whole file" if whole else "munmap", self._munmap, _mapped),
            Move("host access", self._host_access, _mapped),
            Move("gup_pin", self._pin, lambda k, h: _mapped(k, h) and not self._holds(k, h)),
            Move("gup_unpin", self._unpin, lambda k, h: h.pin is not None),
            Move("get_pfn", self._get_pfn, lambda k, h: not self._holds(k, h)),
            Move("put_pfn", self._put_pfn, lambda k, h: bool(self._inode(k, h).refs[0])),
            Move("guest access", self._guest_access),
            Move("punch", self._punch),
        ]
        return out

    def _holds(self, k: ModelKernel, h: Held) -> bool:
        """The caller holds a reference already: a get_pfn reference or a GUP pin."""
        return h.pin is not None or bool(self._inode(k, h).refs[0])

    def _convert(self, k: ModelKernel, h: Held, attributes: int) -> Held:
        if self.in_place:
            k.set_memory_attributes2(h.fd("file"), 0, P, attributes)
        else:
            k.set_memory_attributes(h.fd("vm"), GPA, P, attributes)
        return h

    def _to_private(self, k: ModelKernel, h: Held) -> Held:
        return self._convert(k, h, PRIVATE)

    def _to_shared(self, k: ModelKernel, h: Held) -> Held:
        return self._convert(k, h, 0)

    def _map_length(self) -> int:
        return PAGES * P if self.restricted and self.scope is MapScope.WHOLE_FILE else P

    def _mmap(self, k: ModelKernel, h: Held) -> Held:
        return replace(h, addr=k.mmap(h.fd("file"), self._map_length(), RW, uapi.MAP_SHARED))

    def _kvm_map(self, k: ModelKernel, h: Held) -> Held:
        return replace(h, addr=k.kvm_map_shared(h.fd("vm"), GPA, P))

    def _munmap(self, k: ModelKernel, h: Held) -> Held:
        assert h.addr is not None
        k.munmap(h.addr, self._map_length())
        return replace(h, addr=None)

    def _munmap_page(self, k: ModelKernel, h: Held) -> Held:
        assert h.addr is not None
        k.munmap(h.addr, P)
        return replace(h, addr=None)

    def _host_access(self, k: ModelKernel, h: Held) -> Held:
        assert h.addr is not None
        k.write_mem(h.addr, fill=0x5A, length=1)
        return h

    def _pin(self, k: ModelKernel, h: Held) -> Held:
        assert h.addr is not None
        k.gup_pin(h.addr, P)
        return replace(h, pin=h.addr)

    def _unpin(self, k: ModelKernel, h: Held) -> Held:
        assert h.pin is not None
        k.gup_unpin(h.pin, P)
        return replace(h, pin=None)

    def _get_pfn(self, k: ModelKernel, h: Held) -> Held:
        k.get_pfn(h.fd("file"), 0)
        return h

    def _put_pfn(self, k: ModelKernel, h: Held) -> Held:
        k.put_pfn(h.fd("file"), 0)
        return h

    def _guest_access(self, k: ModelKernel, h: Held) -> Held:
        result = k.guest_access(h.fd("vcpu"), GPA, 1, write=True, data=b"\x9e")
        if result.exit != "none":
            raise Refused(f"exit {result.errno or result.exit}")
        return h

    def _punch(self, k: ModelKernel, h: Held) -> Held:
        k.fallocate(h.fd("file"), PUNCH, 0, P)
        return h

    # --- facts ---------------------------------------------------------------------------------

    def _inode(self, k: ModelKernel, h: Held) -> Inode:
        return k.state.inodes[_ino(k, h)]

    def attribute(self, k: ModelKernel, h: Held) -> str:
        """shared, private, or (pkvm-inplace) an unshare waiting for the host."""
        ino = _ino(k, h)
        if any(i == ino and s <= 0 < e for i, s, e in k.private_pages()):
            return "private"
        if self.in_place and k.page_attr(h.fd("file"), 0) == "none_shared":
            return "unshare pending"
        return "shared"

    def facts(self, k: ModelKernel, h: Held) -> tuple[str, ...]:
        inode = self._inode(k, h)
        out = [self.attribute(k, h)]
        if inode.vma_cover[0]:
            out.append("mapped")
        if inode.host_ptes[0]:
            out.append("faulted in")
        if inode.refs[0]:
            out.append("get_pfn reference")
        if inode.pins[0]:
            out.append("GUP pin")
        if self.restricted and k.file_state(h.fd("file")).destroyed:
            out.append("file destroyed")
        return tuple(out)

    def key(self, k: ModelKernel, h: Held) -> Hashable:
        return self.facts(k, h), h.addr is not None, h.pin is not None

    def tone(self, facts: tuple[str, ...]) -> str:
        if "file destroyed" in facts:
            return "gone"
        return {"shared": "shared", "private": "private"}.get(facts[0], "pending")

    def glossary(self) -> list[tuple[str, str]]:
        return list(FILE_GLOSSARY)

    def coarsenings(self) -> list[Coarsening]:
        return [
            Coarsening("page-table entries are not drawn", _without("faulted in"), 3),
            Coarsening("GUP pins are not drawn", _without("GUP pin"), 4),
            Coarsening("get_pfn references are not drawn", _without("get_pfn reference"), 5),
            Coarsening("a get_pfn reference and a GUP pin are drawn as one fact, held",
                       lambda f: _merge_facts(f, ("get_pfn reference", "GUP pin"), "held"), 1),
            Coarsening("a page-table entry, a get_pfn reference and a GUP pin are drawn as one "
                       "fact, held by the host", lambda f: _merge_facts(
                           f, ("faulted in", "get_pfn reference", "GUP pin", "held"),
                           "held by the host"), 2),
        ]


FILE_GLOSSARY = (
    ("shared", "KVM holds the page shared (the VM's attribute of its gfn, or in place the file's)"),
    ("private", "KVM holds the page private"),
    ("unshare pending", "the guest unshared the page while the host held it (none_shared): "
                        "neither may fault it"),
    ("mapped", "a host VMA covers the page"),
    ("faulted in", "a host page-table entry maps it"),
    ("get_pfn reference", "KVM took a reference with get_pfn"),
    ("GUP pin", "a long-term GUP pin holds it"),
    ("held", "a get_pfn reference or a GUP pin holds it"),
    ("held by the host", "a page-table entry, a get_pfn reference or a GUP pin holds it"),
    ("file destroyed", "the restricted memfd was unmapped with references out: dead for good"),
)


def _without(fact: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    return lambda facts: tuple(f for f in facts if f != fact)


def _merge_facts(facts: tuple[str, ...], parts: tuple[str, ...], into: str) -> tuple[str, ...]:
    out: list[str] = []
    for f in facts:
        if f in parts:
            if into not in out:
                out.append(into)
        else:
            out.append(f)
    return tuple(out)


def _gmem_flag_names(flags: int) -> str:
    names = [name for bit, name in ((uapi.GUEST_MEMFD_FLAG_MMAP, "MMAP"),
                                    (uapi.GUEST_MEMFD_FLAG_INIT_SHARED, "INIT_SHARED"),
                                    (uapi.GUEST_MEMFD_FLAG_NO_DIRECT_MAP, "NO_DIRECT_MAP"))
             if flags & bit]
    return "|".join(names) or "0"


# --- one physical page under the pKVM hypervisor ---------------------------------------------------


GFNS = (0x10, 0x11)  # the gfns a page is shared or donated at


class HypervisorMachine:
    """One physical page under pKVM: what the host, the hypervisor and the
    guests hold of it (model/pkvm.py), the same under every design."""

    name = HYPERVISOR
    title = "the pKVM hypervisor: one physical page"
    page = (f"a frame get_pfn handed out; a protected VM (type pkvm) and a non-protected one; "
            f"gfns {GFNS[0]:#x} and {GFNS[1]:#x}")
    design = make_design(DEFAULT_DESIGN)
    layout = "LR"

    def setups(self) -> list[Setup]:
        return [Setup("get_pfn hands out the frame", "", self._build)]

    def _build(self, k: ModelKernel) -> Held:
        pvm = k.create_vm(uapi.MODEL_PKVM_VM)
        npvm = k.create_vm(uapi.KVM_X86_SW_PROTECTED_VM)
        f = k.create_guest_memfd(npvm, P)
        pfn = k.get_pfn(f, 0)
        k.put_pfn(f, 0)
        return Held(fds=(("pvm", pvm), ("npvm", npvm), ("file", f)), pfn=pfn)

    # --- what each side knows of the page --------------------------------------------------------

    @staticmethod
    def _pfn(h: Held) -> int:
        assert h.pfn is not None
        return h.pfn

    def _host_has(self, k: ModelKernel, h: Held) -> bool:
        """The host still owns the page (alone or lending it): it may try to give it."""
        return k.pkvm_page(self._pfn(h)).host in ("OWNED", "SHARED_OWNED")

    def _leaf(self, k: ModelKernel, h: Held, vm: str, gfn: int) -> str:
        return k.pkvm_page_state(self._pfn(h), "guest", h.fd(vm), gfn)

    def _guest_shares(self, k: ModelKernel, h: Held) -> list[int]:
        return [g for g in GFNS if self._leaf(k, h, "npvm", g) != "NOPAGE"]

    def _donated(self, k: ModelKernel, h: Held) -> bool:
        return self._leaf(k, h, "pvm", GFNS[0]) != "NOPAGE"

    # --- moves -------------------------------------------------------------------------------------

    def moves(self) -> list[Move]:
        pfn, gfn = self._pfn, GFNS[0]

        def hyp(want: str) -> Guard:
            return lambda k, h: k.pkvm_page(pfn(h)).hyp == want

        def lent(k: ModelKernel, h: Held) -> bool:
            return k.pkvm_page(pfn(h)).host == "SHARED_OWNED"

        def step(call: Callable[[ModelKernel, Held], object]) -> Step:
            def run(k: ModelKernel, h: Held) -> Held:
                call(k, h)
                return h
            return run

        host_has, donated = self._host_has, self._donated
        return [
            Move("host_share_hyp", step(lambda k, h: k.pkvm_host_share_hyp(pfn(h))), host_has),
            Move("host_unshare_hyp", step(lambda k, h: k.pkvm_host_unshare_hyp(pfn(h))), lent),
            Move("hyp_pin_shared_mem", step(lambda k, h: k.hyp_pin_shared_mem(pfn(h))),
                 lambda k, h: hyp("SHARED_BORROWED")(k, h) and not k.pkvm_page(pfn(h)).pin_count),
            Move("hyp_unpin_shared_mem", step(lambda k, h: k.hyp_unpin_shared_mem(pfn(h))),
                 hyp("SHARED_BORROWED")),
            Move("host_donate_hyp", step(lambda k, h: k.pkvm_host_donate_hyp(pfn(h), 1)), host_has),
            Move("hyp_donate_host", step(lambda k, h: k.pkvm_hyp_donate_host(pfn(h), 1)),
                 hyp("OWNED")),
            Move("host_share_ffa", step(lambda k, h: k.pkvm_host_share_ffa(pfn(h), 1)), host_has),
            Move("host_unshare_ffa", step(lambda k, h: k.pkvm_host_unshare_ffa(pfn(h), 1)), lent),
            Move("host_share_guest", self._share_guest,
                 lambda k, h: host_has(k, h) and len(self._guest_shares(k, h)) < len(GFNS)),
            Move("host_unshare_guest", self._unshare_guest,
                 lambda k, h: bool(self._guest_shares(k, h))),
            Move("host_donate_guest",
                 step(lambda k, h: k.pkvm_host_donate_guest(pfn(h), gfn, h.fd("pvm"))), host_has),
            Move("guest_share_host", step(lambda k, h: k.pkvm_guest_share_host(h.fd("pvm"), gfn)),
                 donated),
            Move("guest_unshare_host", step(lambda k, h: k.pkvm_guest_unshare_host(h.fd("pvm"), gfn)),
                 donated),
            Move("host_reclaim_page",
                 step(lambda k, h: k.pkvm_host_reclaim_page(h.fd("pvm"), pfn(h))), donated),
            Move("VM teardown", self._teardown, donated),
        ]

    def _share_guest(self, k: ModelKernel, h: Held) -> Held:
        free = [g for g in GFNS if g not in self._guest_shares(k, h)]
        k.pkvm_host_share_guest(self._pfn(h), free[0], h.fd("npvm"), 7)
        return h

    def _unshare_guest(self, k: ModelKernel, h: Held) -> Held:
        k.pkvm_host_unshare_guest(self._guest_shares(k, h)[-1], h.fd("npvm"))
        return h

    def _teardown(self, k: ModelKernel, h: Held) -> Held:
        """The protected VM goes (its last fd closed) and a new one takes its place."""
        k.close(h.fd("pvm"))
        fds = dict(h.fds)
        fds["pvm"] = k.create_vm(uapi.MODEL_PKVM_VM)
        return replace(h, fds=tuple(fds.items()))

    # --- facts -------------------------------------------------------------------------------------

    def facts(self, k: ModelKernel, h: Held) -> tuple[str, ...]:
        page = k.pkvm_page(self._pfn(h))
        out = [f"host {page.host}", f"hyp {page.hyp}"]
        if page.pin_count:
            out.append("pinned by hyp")
        pkvm = k.state.pkvm
        if pkvm is not None and pkvm.pages[self._pfn(h)].ffa:
            out.append("lent to FF-A")
        if page.share_guest_count:
            n = page.share_guest_count
            out.append(f"{n} non-protected guest {'leaves' if n > 1 else 'leaf'} SHARED_BORROWED")
        leaf = self._leaf(k, h, "pvm", GFNS[0])
        if leaf != "NOPAGE":
            out.append(f"protected guest {leaf}")
        return tuple(out)

    def key(self, k: ModelKernel, h: Held) -> Hashable:
        return self.facts(k, h)

    def tone(self, facts: tuple[str, ...]) -> str:
        if any(f.startswith("protected guest") for f in facts):
            return "guest"
        if "hyp OWNED" in facts:
            return "hyp"
        return "host" if facts[0] == "host OWNED" else "lent"

    def glossary(self) -> list[tuple[str, str]]:
        return list(HYPERVISOR_GLOSSARY)

    def coarsenings(self) -> list[Coarsening]:
        return []


HYPERVISOR_GLOSSARY = (
    ("host", "the page's state for the host (its stage-2)"),
    ("hyp", "for the hypervisor"),
    ("pinned by hyp", "hyp_pin_shared_mem holds it"),
    ("lent to FF-A", "the FF-A proxy lent it to the secure world"),
    ("non-protected guest", "that many stage-2 leaves of a non-protected guest borrow it "
                            "(host_share_guest_count)"),
    ("protected guest", "the protected guest's stage-2 leaf for it"),
)


# --- entry points -----------------------------------------------------------------------------------


def names() -> list[str]:
    """Every machine this module declares: the designs, the variants, the hypervisor."""
    return [*DESIGNS, *VARIANTS, HYPERVISOR]


def page_states(name: str) -> PageStates:
    if name == HYPERVISOR:
        return explore(HypervisorMachine())
    return explore(FileMachine(make_design(name)))


