"""The pKVM hypervisor: who owns each physical page, host, hyp or a guest.

Follows arch/arm64/kvm/hyp/nvhe/mem_protect.c (docs/DESIGNS.md, "The pKVM hypervisor"):
every physical page has a state per component, PKVM_PAGE_OWNED,
PKVM_PAGE_SHARED_OWNED, PKVM_PAGE_SHARED_BORROWED or the meta-state
PKVM_NOPAGE, kept for the host and the hypervisor in struct hyp_page (with the
hyp pin count and the count of shares with non-protected guests) and for a
guest in the software bits of its stage-2 leaves.  A transition is "check
all, then do": each hypercall checks the states of both sides in the order
the C code does and returns its errno with nothing changed, or makes the
whole change.

State is range-based like everything else in the model: ``PkvmState.pages``
is a RangeMap over pfns whose values are immutable HypPage records (all
memory starts host-OWNED, hyp NOPAGE: one run), and each guest's stage-2 is
a RangeMap over gfns of GuestPte leaves holding pfn - gfn, so that a range
donated in one go stays one run.

Physical memory is one memblock region, pfns [0x100000, 2^40) (4 GiB up to a
52-bit physical address space), where the model hands out frames
(State.next_pfn).  Below it lies MMIO.  check_range_allowed_memory is modelled
exactly, with the C code's u64 arithmetic: a range that crosses the region's
edge is EINVAL, one outside memory EPERM, and an empty or wrapping range
passes (its page loop runs zero times).

Where the C function cannot fail or would BUG() the model picks an errno
(docs/DESIGNS.md lists each choice): hyp_unpin_shared_mem of an unpinned
page is EINVAL, and __pkvm_host_unshare_ffa refuses (EPERM) pages the FF-A
proxy did not lend, which the proxy's own bookkeeping guarantees in the
kernel.

Besides the hypercalls, the hypervisor shows in two places of the host: a
host access to a page whose host state is NOPAGE stops at the host stage-2
(the model raises SIGBUS, the abort pKVM injects), and a VM's teardown
reclaims its pages (guest-owned ones are zeroed first).
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import Any

from .. import uapi
from ..errors import UsageError, kernel_error
from ..interface import PkvmPage
from ..rangemap import RangeMap
from . import pages
from .core import Component
from .events import HostAccessGuestPage
from .state import GFN_LIMIT, PFN_LIMIT, GuestPte, HypPage, Inode, PkvmState, Vm

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
U64 = (1 << 64) - 1

OWNED, SHARED_OWNED, SHARED_BORROWED, NOPAGE = 0, 1, 2, 3
STATE_NAMES = {OWNED: "OWNED", SHARED_OWNED: "SHARED_OWNED",
               SHARED_BORROWED: "SHARED_BORROWED", NOPAGE: "NOPAGE"}
COMPONENTS = ("host", "hyp", "guest")

# The one memblock region of RAM, in pfns, and the same in bytes.
RAM_FIRST_PFN = 0x100000
RAM_END_PFN = 1 << 40
RAM_START, RAM_END = RAM_FIRST_PFN << SHIFT, RAM_END_PFN << SHIFT
PROT_RWX = 7  # KVM_PGTABLE_PROT_R | _W | _X
IPA_BITS = 40  # a guest stage-2's input address size (KVM's default IPA size)


class Pkvm(Component):
    """The hypervisor: its hypercalls, and where it shows in the host."""

    # --- plumbing ----------------------------------------------------------------------

    def _pkvm(self) -> PkvmState:
        if self.state.pkvm is None:
            self.state.pkvm = PkvmState()
        return self.state.pkvm

    def _hypercall(self, guest: bool = False) -> PkvmState:
        self.state.counters["hypercalls"] += 1
        if guest:
            self.state.counters["exits"] += 1  # the guest's HVC reaches the host too
        return self._pkvm()

    def _changed(self, flush: bool = False, guest_zap: bool = False) -> None:
        counters = self.state.counters
        counters["stage2_updates"] += 1
        if flush or guest_zap:
            counters["tlb_flushes"] += 1
        if guest_zap:
            counters["kvm_zaps"] += 1

    @staticmethod
    def _phys(pfn: int, nr: int = 1) -> tuple[int, int]:
        """hyp_pfn_to_phys and PAGE_SIZE * nr_pages, in u64 as the C code computes them."""
        start = (pfn << SHIFT) & U64
        return start, (start + ((nr << SHIFT) & U64)) & U64

    @staticmethod
    def _allowed_memory(start: int, end: int) -> None:
        """check_range_allowed_memory: [start, end) within one region, and RAM."""
        if start < RAM_START:
            low, high, memory = 0, RAM_START, False
        elif start < RAM_END:
            low, high, memory = RAM_START, RAM_END, True
        else:
            low, high, memory = RAM_END, U64, False  # the last gap ends at ULONG_MAX
        if not low <= (end - 1) & U64 < high:
            raise kernel_error(errno.EINVAL, "the range crosses a memory region's edge")
        if not memory:
            raise kernel_error(errno.EPERM, "not memory")

    def _check(self, start: int, end: int, component: str, want: int) -> None:
        """__host_check_page_state_range / __hyp_check_page_state_range."""
        if component == "host":
            self._allowed_memory(start, end)
        if end <= start:
            return  # the C loop runs zero times
        for _, _, page in self._pkvm().pages.runs(start >> SHIFT, end >> SHIFT):
            if getattr(page, component) != want:
                raise kernel_error(errno.EPERM, f"{component} state is "
                                   f"{STATE_NAMES[getattr(page, component)]}, not {STATE_NAMES[want]}")

    # Each hypercall's checks and its other side's update, one method each
    # (as mem_protect.c names them), so that a broken hypervisor is one of
    # them changed.

    def _check_unpinned(self, start: int) -> None:
        """hyp_page_count: a page the hypervisor pinned stays shared with it."""
        if self._page(start >> SHIFT).pins:
            raise kernel_error(errno.EBUSY, "the hypervisor has the page pinned")

    def _check_pinnable(self, start: int, end: int) -> None:
        """hyp_pin_shared_mem: only a page the host shares with the hypervisor."""
        self._check(start, end, "host", SHARED_OWNED)
        self._check(start, end, "hyp", SHARED_BORROWED)

    def _check_hyp_owns(self, start: int, end: int) -> None:
        """__pkvm_hyp_donate_host: the hypervisor gives back only its own pages."""
        self._check(start, end, "hyp", OWNED)

    def _check_donatable(self, start: int, end: int) -> None:
        """__pkvm_host_donate_guest: the host donates only pages it owns."""
        self._check(start, end, "host", OWNED)

    def _check_ffa_lent(self, start: int, end: int) -> None:
        """__pkvm_host_unshare_ffa: only pages the FF-A proxy was lent."""
        if end > start and any(not p.ffa for _, _, p in
                               self._pkvm().pages.runs(start >> SHIFT, end >> SHIFT)):
            raise kernel_error(errno.EPERM, "the FF-A proxy lent no such page")

    @staticmethod
    def _may_share_with_guest(page: HypPage) -> bool:
        """Only host -> non-protected guest sharing may be repeated
        (host_share_guest_count)."""
        return page.host == OWNED or (page.host == SHARED_OWNED and bool(page.guest_shares))

    def _end_guest_share(self, pfn: int, page: HypPage) -> None:
        """The host's side of __pkvm_host_unshare_guest: one borrower fewer,
        the page the host's alone after the last."""
        shares = page.guest_shares - 1
        self._pkvm().pages.set(pfn, pfn + 1, replace(page, guest_shares=shares,
                                                     host=SHARED_OWNED if shares else OWNED))

    def _end_host_borrow(self, pfn: int, page: HypPage) -> None:
        """The host's side of the guest's MEM_UNSHARE: it borrows the page no more."""
        self._pkvm().pages.set(pfn, pfn + 1, replace(page, host=NOPAGE))

    def _set(self, start: int, end: int, **changes: Any) -> None:
        if end > start:
            self._pkvm().pages.update(start >> SHIFT, end >> SHIFT, lambda p: replace(p, **changes))

    def _page(self, pfn: int) -> HypPage:
        return self._pkvm().pages[pfn]

    def _hyp_vm(self, fd: int) -> Vm:
        """The VM a handle names; the hypervisor knows no other fds (EINVAL)."""
        fid = self.state.fds.get(fd)
        f = self.state.files.get(fid) if fid is not None else None
        if f is None or f.kind != "vm" or f.vm is None:
            raise kernel_error(errno.EINVAL, f"fd {fd} is no VM the hypervisor knows")
        return self.state.vms[f.vm]

    def _stage2(self, kvm: Vm) -> RangeMap[GuestPte | None]:
        guests = self._pkvm().guests
        if kvm.id not in guests:
            guests[kvm.id] = RangeMap(None, GFN_LIMIT)
        return guests[kvm.id]

    @staticmethod
    def _ipa(gfn: int) -> int:
        """The gfn's stage-2 index; ERANGE beyond the guest's IPA space, as
        kvm_pgtable_walk answers."""
        ipa = (gfn << SHIFT) & U64
        if ipa + P > 1 << IPA_BITS:
            raise kernel_error(errno.ERANGE, f"gfn {gfn:#x} is beyond the {IPA_BITS}-bit IPA space")
        return ipa >> SHIFT

    @staticmethod
    def _protected(kvm: Vm) -> bool:
        return kvm.type == uapi.MODEL_PKVM_VM

    # --- host <-> hyp --------------------------------------------------------------------

    def pkvm_host_share_hyp(self, pfn: int) -> int:
        self._hypercall()
        start, end = self._phys(pfn)
        self._check(start, end, "host", OWNED)
        self._check(start, end, "hyp", NOPAGE)
        self._set(start, end, host=SHARED_OWNED, hyp=SHARED_BORROWED)
        self._changed()
        return 0

    def pkvm_host_unshare_hyp(self, pfn: int) -> int:
        self._hypercall()
        start, end = self._phys(pfn)
        self._check(start, end, "host", SHARED_OWNED)
        self._check(start, end, "hyp", SHARED_BORROWED)
        self._check_unpinned(start)
        self._set(start, end, host=OWNED, hyp=NOPAGE)
        self._changed(flush=True)
        return 0

    def pkvm_host_donate_hyp(self, pfn: int, nr: int) -> int:
        self._hypercall()
        start, end = self._phys(pfn, nr)
        self._check(start, end, "host", OWNED)
        self._check(start, end, "hyp", NOPAGE)
        self._set(start, end, host=NOPAGE, hyp=OWNED)
        self._changed(flush=True)
        return 0

    def pkvm_hyp_donate_host(self, pfn: int, nr: int) -> int:
        self._hypercall()
        start, end = self._phys(pfn, nr)
        self._check_hyp_owns(start, end)
        self._check(start, end, "host", NOPAGE)
        self._set(start, end, host=OWNED, hyp=NOPAGE)
        self._changed(flush=True)
        return 0

    def hyp_pin_shared_mem(self, pfn: int) -> int:
        self._hypercall()
        start, end = self._phys(pfn)
        self._check_pinnable(start, end)
        self._set(start, end, pins=self._page(start >> SHIFT).pins + 1)
        return 0

    def hyp_unpin_shared_mem(self, pfn: int) -> int:
        self._hypercall()
        start, end = self._phys(pfn)
        if start >> SHIFT >= PFN_LIMIT or not self._page(start >> SHIFT).pins:
            # The C function is void and would BUG() at EL2 here.
            raise kernel_error(errno.EINVAL, "the page is not pinned")
        self._set(start, end, pins=self._page(start >> SHIFT).pins - 1)
        return 0

    # --- host <-> the secure world (FF-A) ------------------------------------------------

    def pkvm_host_share_ffa(self, pfn: int, nr: int) -> int:
        self._hypercall()
        start, end = self._phys(pfn, nr)
        self._check(start, end, "host", OWNED)
        self._set(start, end, host=SHARED_OWNED, ffa=True)
        self._changed()
        return 0

    def pkvm_host_unshare_ffa(self, pfn: int, nr: int) -> int:
        self._hypercall()
        start, end = self._phys(pfn, nr)
        self._check(start, end, "host", SHARED_OWNED)
        self._check_ffa_lent(start, end)
        self._set(start, end, host=OWNED, ffa=False)
        self._changed()
        return 0

    # --- host <-> non-protected guests ----------------------------------------------------

    def pkvm_host_share_guest(self, pfn: int, gfn: int, vm: int, prot: int) -> int:
        self._hypercall()
        kvm = self._hyp_vm(vm)
        if self._protected(kvm):
            raise kernel_error(errno.EINVAL, "a protected VM takes donations, not shares")
        if prot & ~PROT_RWX:
            raise kernel_error(errno.EINVAL, f"prot {prot:#x} is beyond RWX")
        start, end = self._phys(pfn)
        self._allowed_memory(start, end)
        index = self._ipa(gfn)
        s2 = self._stage2(kvm)
        if s2[index] is not None:
            raise kernel_error(errno.EPERM, "the guest already maps that gfn")
        page = self._page(start >> SHIFT)
        if not self._may_share_with_guest(page):
            raise kernel_error(errno.EPERM, f"host state is {STATE_NAMES[page.host]}")
        self._set(start, end, host=SHARED_OWNED, guest_shares=page.guest_shares + 1)
        pfn_index = start >> SHIFT
        s2.set(index, index + 1, GuestPte(SHARED_BORROWED, pfn_index - index, prot))
        self._changed()
        return 0

    def _guest_leaf(self, kvm: Vm, gfn: int) -> tuple[int, GuestPte]:
        """get_valid_guest_pte: the stage-2 index and leaf at gfn (ENOENT if none)."""
        index = self._ipa(gfn)
        leaf = self._stage2(kvm)[index]
        if leaf is None:
            raise kernel_error(errno.ENOENT, f"the guest maps nothing at gfn {gfn:#x}")
        return index, leaf

    def pkvm_host_unshare_guest(self, gfn: int, vm: int) -> int:
        self._hypercall()
        kvm = self._hyp_vm(vm)
        if self._protected(kvm):
            raise kernel_error(errno.EINVAL, "not a non-protected VM")
        index, leaf = self._guest_leaf(kvm, gfn)
        if leaf.state != SHARED_BORROWED:
            raise kernel_error(errno.EPERM, f"guest state is {STATE_NAMES[leaf.state]}")
        pfn = index + leaf.delta
        page = self._page(pfn)
        if page.host != SHARED_OWNED:
            raise kernel_error(errno.EPERM, f"host state is {STATE_NAMES[page.host]}")
        if not page.guest_shares:
            raise kernel_error(errno.EINVAL, "no share with a guest is counted")
        self._stage2(kvm).set(index, index + 1, None)
        self._end_guest_share(pfn, page)
        self._changed(guest_zap=True)
        return 0

    # --- host <-> protected guests -----------------------------------------------------------

    def pkvm_host_donate_guest(self, pfn: int, gfn: int, vm: int) -> int:
        self._hypercall()
        kvm = self._hyp_vm(vm)
        if not self._protected(kvm):
            raise kernel_error(errno.EINVAL, "only a protected VM takes donations")
        start, end = self._phys(pfn)
        self._check_donatable(start, end)
        index = self._ipa(gfn)
        s2 = self._stage2(kvm)
        if s2[index] is not None:
            raise kernel_error(errno.EPERM, "the guest already maps that gfn")
        pfn_index = start >> SHIFT
        self._set(start, end, host=NOPAGE, guest=(kvm.id, index - pfn_index))
        s2.set(index, index + 1, GuestPte(OWNED, pfn_index - index, PROT_RWX))
        self._changed(flush=True)
        return 0

    def pkvm_guest_share_host(self, vm: int, gfn: int) -> int:
        """The protected guest's MEM_SHARE: its page becomes the host's to borrow."""
        self._hypercall(guest=True)
        kvm = self._hyp_vm(vm)
        index, leaf = self._guest_leaf(kvm, gfn)
        if leaf.state != OWNED:
            raise kernel_error(errno.EPERM, f"guest state is {STATE_NAMES[leaf.state]}")
        pfn = index + leaf.delta
        page = self._page(pfn)
        if page.host != NOPAGE:
            raise kernel_error(errno.EPERM, f"host state is {STATE_NAMES[page.host]}")
        self._stage2(kvm).set(index, index + 1, replace(leaf, state=SHARED_OWNED))
        self._pkvm().pages.set(pfn, pfn + 1, replace(page, host=SHARED_BORROWED))
        self._changed()
        return 0

    def pkvm_guest_unshare_host(self, vm: int, gfn: int) -> int:
        """The protected guest's MEM_UNSHARE: the host loses its access."""
        self._hypercall(guest=True)
        kvm = self._hyp_vm(vm)
        index, leaf = self._guest_leaf(kvm, gfn)
        if leaf.state != SHARED_OWNED:
            raise kernel_error(errno.EPERM, f"guest state is {STATE_NAMES[leaf.state]}")
        pfn = index + leaf.delta
        page = self._page(pfn)
        if page.host != SHARED_BORROWED:
            raise kernel_error(errno.EPERM, f"host state is {STATE_NAMES[page.host]}")
        self._stage2(kvm).set(index, index + 1, replace(leaf, state=OWNED))
        self._end_host_borrow(pfn, page)
        self._changed(flush=True)
        return 0

    def pkvm_host_reclaim_page(self, vm: int, pfn: int) -> int:
        """__pkvm_host_reclaim_page_guest: the host takes a page back from a
        guest; a page the guest owned is zeroed first."""
        self._hypercall()
        kvm = self._hyp_vm(vm)
        found = self._leaf_of_pfn(kvm, pfn)
        if found is None:
            raise kernel_error(errno.ENOENT, f"the guest maps no gfn to pfn {pfn:#x}")
        index, leaf = found
        if leaf.state not in (OWNED, SHARED_OWNED):
            raise kernel_error(errno.EPERM, f"guest state is {STATE_NAMES[leaf.state]}")
        self._return_to_host(kvm, index, index + 1, leaf)
        return 0

    def _leaf_of_pfn(self, kvm: Vm, pfn: int) -> tuple[int, GuestPte] | None:
        for s, e, leaf in self._stage2(kvm).runs():
            if leaf is not None and s <= pfn - leaf.delta < e:
                return pfn - leaf.delta, leaf
        return None

    def _return_to_host(self, kvm: Vm, first: int, last: int, leaf: GuestPte) -> None:
        """Unmap guest leaves [first, last) (one run of leaf) and give their
        pages back to the host, zeroing the ones the guest owned."""
        lo, hi = first + leaf.delta, last + leaf.delta
        if leaf.state == OWNED:
            self._zero_frames(lo, hi)
        if leaf.state == SHARED_BORROWED:
            def unshare(p: HypPage) -> HypPage:
                shares = max(p.guest_shares - 1, 0)
                return replace(p, guest_shares=shares, host=SHARED_OWNED if shares else OWNED)
            self._pkvm().pages.update(lo, hi, unshare)
        else:
            self._pkvm().pages.update(lo, hi, lambda p: replace(p, host=OWNED, guest=None))
        self._stage2(kvm).set(first, last, None)
        self._changed(guest_zap=True)

    def _zero_frames(self, first: int, last: int) -> None:
        """hyp_poison_page over pfns [first, last): the file pages they hold read zero."""
        self.state.counters["pages_zeroed"] += last - first
        for s, e, owner in list(self.state.frames.runs(first, last)):
            if owner is None:
                continue
            ino, delta = owner
            inode = self.state.inodes.get(ino)
            if inode is None:
                continue
            for ps, pe, page in list(inode.pages.runs(s + delta, e + delta)):
                if page is not None:
                    inode.pages.set(ps, pe, pages.ZERO_PAGE)

    def vm_destroyed(self, vm: Vm) -> None:
        """VM teardown: the host reclaims every page the guest holds."""
        pkvm = self.state.pkvm
        if pkvm is not None and vm.id in pkvm.guests:
            for s, e, leaf in list(pkvm.guests[vm.id].runs()):
                if leaf is not None:
                    self._return_to_host(vm, s, e, leaf)
            del pkvm.guests[vm.id]

    # --- queries -------------------------------------------------------------------------------

    def pkvm_page_state(self, pfn: int, component: str, vm: int | None = None,
                        gfn: int | None = None) -> str:
        if component not in COMPONENTS:
            raise UsageError(f"pkvm_page_state: component must be one of {', '.join(COMPONENTS)}")
        if not RAM_FIRST_PFN <= pfn < RAM_END_PFN:
            raise kernel_error(errno.EINVAL, f"pfn {pfn:#x} is not memory")
        if component != "guest":
            if vm is not None or gfn is not None:
                raise UsageError("pkvm_page_state: vm and gfn are for the guest component")
            return STATE_NAMES[getattr(self._page(pfn), component)]
        if vm is None or gfn is None:
            raise UsageError("pkvm_page_state: the guest component needs vm and gfn")
        kvm = self._hyp_vm(vm)
        index = self._ipa(gfn)
        leaf = self._stage2(kvm)[index]
        if leaf is None or index + leaf.delta != pfn:
            return STATE_NAMES[NOPAGE]
        return STATE_NAMES[leaf.state]

    def pkvm_page(self, pfn: int) -> PkvmPage:
        if not RAM_FIRST_PFN <= pfn < RAM_END_PFN:
            raise kernel_error(errno.EINVAL, f"pfn {pfn:#x} is not memory")
        page = self._page(pfn)
        return PkvmPage(host=STATE_NAMES[page.host], hyp=STATE_NAMES[page.hyp],
                        pin_count=page.pins, share_guest_count=page.guest_shares)

    # --- the host stage-2 under host accesses --------------------------------------------------

    def stage2_limit(self, inode: Inode, first: int, served: int) -> int:
        """The first page of [first, served) the host stage-2 keeps the host
        from touching (its pfn is not the host's); served when there is none."""
        pkvm = self.state.pkvm
        if pkvm is None or served <= first:
            return served
        for s, e, delta in inode.pfns.runs(first, served):
            if delta is None:
                continue
            hit = pkvm.pages.find(s + delta, e + delta, lambda p: p.host == NOPAGE)
            if hit is not None:
                self.state.audit.append(HostAccessGuestPage(inode.ino, hit - delta))
                return hit - delta
        return served

    def why_sigbus(self, inode: Inode, index: int) -> str | None:
        """Why a host access to file page index stops at the host stage-2, if it does."""
        pkvm = self.state.pkvm
        if pkvm is None:
            return None
        delta = inode.pfns[index] if index < inode.pfns.limit else None
        if delta is not None and pkvm.pages[index + delta].host == NOPAGE:
            return (f"pKVM: the host does not own pfn {index + delta:#x} (it belongs to "
                    "the hypervisor or a guest); the host stage-2 fault is injected back")
        return None
