"""Random walks over the page-level designs and pKVM: no state is ever lost.

Each example builds a protected VM (and a non-protected one) with guest
memory in one memslot backed by the design's file, then runs a random
sequence of host, KVM, guest and hypervisor operations, legal and illegal
alike, with arguments drawn around the interesting values (pages inside and
beyond the file, pfns handed out and MMIO ones, gfns inside and beyond the
IPA space).  After every step:

* nothing but OSError or MemorySignal escaped the model (an illegal call gets
  its errno, never an exception from inside);
* pKVM's ownership is consistent, no host mapping covers a page the design
  calls private, and the per-page counts equal a recount
  (model/invariants.py).

CI runs a few examples per design; the recorded run in docs/DESIGNS.md sets
GMEMLAB_PROPERTY_EXAMPLES (examples per design) much higher.

The deliberately broken designs these walks used to hunt for (a conversion
check skipped, a zap forgotten, a refcount check that finds every page free,
an FF-A unshare or a guest unshare that forgets half the state) are now the
checker's mutants (gmemlab.checker.mutations, tests/test_mutations.py): a
random walk caught some of them only now and then (three of five went
uncaught at 300 examples), while the checker refutes each one exhaustively on
a small scenario, with the shortest counterexample, in every CI run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from gmemlab import MemorySignal, uapi
from gmemlab.errors import UsageError
from gmemlab.model import ModelKernel
from gmemlab.model.invariants import violations
from gmemlab.model.policies import MapScope, PrivateFile

P = 4096
G = 0x80000  # first gfn of guest memory
FILE_PAGES = 8
SLOT_PAGES = 6
EXAMPLES = int(os.environ.get("GMEMLAB_PROPERTY_EXAMPLES", "30"))
DESIGNS = ["seed", "page-mmap", "kvm-map", "inplace", "pkvm-inplace", "gmem-6.18"]


@dataclass
class World:
    k: ModelKernel
    f: int
    pvm: int
    nvm: int
    cpu: int
    addrs: list[int] = field(default_factory=list)
    pfns: list[int] = field(default_factory=list)
    pins: list[tuple[int, int]] = field(default_factory=list)
    gfns: list[int] = field(default_factory=list)  # gfns donated to the protected guest
    np_gfns: list[int] = field(default_factory=list)  # gfns shared with the non-protected guest
    hyp_pfns: list[int] = field(default_factory=list)  # pfns shared with the hypervisor


def _world(design: str, init_shared: bool) -> World:
    k = ModelKernel(design)
    pvm = k.create_vm(uapi.MODEL_PKVM_VM)
    nvm = k.create_vm(0)
    cpu = k.create_vcpu(pvm, 0)
    if k.design.kvm.private_file is PrivateFile.RESTRICTED:
        f = k.memfd_restricted(0)
        k.ftruncate(f, FILE_PAGES * P)
    else:
        flags = uapi.GUEST_MEMFD_FLAG_MMAP
        if init_shared and k.design.gmem_flags(uapi.MODEL_PKVM_VM) & \
                uapi.GUEST_MEMFD_FLAG_INIT_SHARED:
            flags |= uapi.GUEST_MEMFD_FLAG_INIT_SHARED
        f = k.create_guest_memfd(pvm, FILE_PAGES * P, flags)
    k.set_user_memory_region2(pvm, 0, uapi.KVM_MEM_GUEST_MEMFD, G * P, SLOT_PAGES * P, 0, f, 0)
    return World(k, f, pvm, nvm, cpu)


# Mostly the values that lead somewhere, sometimes the edges.
pages = st.one_of(st.integers(0, SLOT_PAGES - 1), st.integers(0, FILE_PAGES + 1))
counts = st.one_of(st.just(1), st.integers(1, 3))


def _often(d: st.DataObject, label: str) -> bool:
    return d.draw(st.integers(0, 7), label=label) != 0


def _addr(w: World, d: st.DataObject) -> int:
    if w.addrs and _often(d, "known address"):
        base = d.draw(st.sampled_from(w.addrs), label="address")
        return base + d.draw(st.one_of(st.just(0), st.integers(-1, 3)), label="page delta") * P
    return d.draw(st.sampled_from([0x10000, 0x7EFFFFFF0000]), label="address")


def _pfn(w: World, d: st.DataObject) -> int:
    if w.pfns and _often(d, "known pfn"):
        return d.draw(st.sampled_from(w.pfns), label="pfn") + d.draw(st.sampled_from([0, 0, 1]), label="+")
    return d.draw(st.sampled_from([0x1000, 0xFFFFF, 0x100000, 1 << 40, 0x3000000, 1 << 52]), label="pfn")


def _gfn(w: World, d: st.DataObject) -> int:
    if w.gfns and _often(d, "donated gfn"):
        return d.draw(st.sampled_from(w.gfns), label="gfn")
    if _often(d, "slot gfn"):
        return G + d.draw(st.integers(0, SLOT_PAGES - 1), label="gfn")
    return d.draw(st.sampled_from([G - 1, G + FILE_PAGES, 1 << 28]), label="gfn")


def _gpa(w: World, d: st.DataObject) -> int:
    return _gfn(w, d) * P


# Each operation draws its arguments and calls the kernel.
Op = Callable[[World, st.DataObject], Any]


def op_mmap(w: World, d: st.DataObject) -> Any:
    n, off = d.draw(counts, label="pages"), d.draw(pages, label="offset")
    prot = d.draw(st.sampled_from([uapi.PROT_READ, uapi.PROT_READ | uapi.PROT_WRITE]), label="prot")
    addr = w.k.mmap(w.f, n * P, prot, uapi.MAP_SHARED, off * P)
    w.addrs.append(addr)
    return addr


def op_munmap(w: World, d: st.DataObject) -> Any:
    return w.k.munmap(_addr(w, d), d.draw(counts, label="pages") * P)


def op_mprotect(w: World, d: st.DataObject) -> Any:
    prot = d.draw(st.sampled_from([uapi.PROT_READ, uapi.PROT_READ | uapi.PROT_WRITE]), label="prot")
    return w.k.mprotect(_addr(w, d), d.draw(counts, label="pages") * P, prot)


def op_dontneed(w: World, d: st.DataObject) -> Any:
    return w.k.madvise(_addr(w, d), d.draw(counts, label="pages") * P, uapi.MADV_DONTNEED)


def op_read(w: World, d: st.DataObject) -> Any:
    return w.k.read_mem(_addr(w, d), d.draw(counts, label="pages") * P)


def op_write(w: World, d: st.DataObject) -> Any:
    return w.k.write_mem(_addr(w, d), fill=d.draw(st.integers(0, 255), label="byte"),
                         length=d.draw(counts, label="pages") * P)


def op_touch(w: World, d: st.DataObject) -> Any:
    """The host touches one page it mapped (a fault that leaves a PTE)."""
    if not w.addrs:
        return None
    return w.k.read_mem(d.draw(st.sampled_from(w.addrs), label="address"), 1)


def op_pin(w: World, d: st.DataObject) -> Any:
    addr, length = _addr(w, d), d.draw(counts, label="pages") * P
    n = w.k.gup_pin(addr, length)
    w.pins.append((addr, length))
    return n


def op_unpin(w: World, d: st.DataObject) -> Any:
    if w.pins and d.draw(st.booleans(), label="known pin"):
        addr, length = w.pins.pop(d.draw(st.integers(0, len(w.pins) - 1), label="pin"))
    else:
        addr, length = _addr(w, d), P
    return w.k.gup_unpin(addr, length)


def op_punch(w: World, d: st.DataObject) -> Any:
    return w.k.fallocate(w.f, uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE,
                         d.draw(pages, label="offset") * P, d.draw(counts, label="pages") * P)


def op_get_pfn(w: World, d: st.DataObject) -> Any:
    pfn = w.k.get_pfn(w.f, d.draw(pages, label="index"))
    w.pfns.append(pfn)
    return pfn


def op_put_pfn(w: World, d: st.DataObject) -> Any:
    return w.k.put_pfn(w.f, d.draw(pages, label="index"))


def op_attributes(w: World, d: st.DataObject) -> Any:
    attr = d.draw(st.sampled_from([0, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE]), label="attributes")
    return w.k.set_memory_attributes(w.pvm, _gpa(w, d), d.draw(counts, label="pages") * P, attr)


def op_attributes2(w: World, d: st.DataObject) -> Any:
    attr = d.draw(st.sampled_from([0, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE]), label="attributes")
    return w.k.set_memory_attributes2(w.f, d.draw(pages, label="offset") * P,
                                      d.draw(counts, label="pages") * P, attr)


def op_kvm_map(w: World, d: st.DataObject) -> Any:
    addr = w.k.kvm_map_shared(w.pvm, _gpa(w, d), d.draw(counts, label="pages") * P)
    w.addrs.append(addr)
    return addr


def op_guest(w: World, d: st.DataObject) -> Any:
    write = d.draw(st.booleans(), label="write")
    private = d.draw(st.sampled_from([None, True, False]), label="private")
    try:
        return w.k.guest_access(w.cpu, _gpa(w, d) + d.draw(st.integers(0, 8), label="offset"), 4,
                                write=write, private=private, data=b"\x5a" * 4 if write else b"")
    except UsageError as exc:
        # The one usage error a guest access may give here: an explicit
        # private that KVM, deciding from the attributes, would not make.
        assert private is not None and "no guest can make" in str(exc), exc
        return None


def op_teardown(w: World, d: st.DataObject) -> Any:
    """Now and then destroy the protected VM: every page it holds goes back."""
    if d.draw(st.integers(0, 9), label="teardown") == 0:
        w.k.close(w.cpu)
        w.k.close(w.pvm)


def op_donate(w: World, d: st.DataObject) -> Any:
    """KVM faults a page in for the protected guest: get_pfn, donate, put_pfn."""
    index = d.draw(pages, label="index")
    pfn = w.k.get_pfn(w.f, index)
    w.pfns.append(pfn)
    try:
        w.k.pkvm_host_donate_guest(pfn, G + index, w.pvm)
        w.gfns.append(G + index)
    finally:
        w.k.put_pfn(w.f, index)


def op_guest_shares(w: World, d: st.DataObject) -> Any:
    """The guest shares a page; the VMM converts it and makes it reachable."""
    gfn = _gfn(w, d)
    w.k.pkvm_guest_share_host(w.pvm, gfn)
    if w.k.design.conversion.in_place:
        w.k.set_memory_attributes2(w.f, (gfn - G) * P, P, 0)
    else:
        w.k.set_memory_attributes(w.pvm, gfn * P, P, 0)
    if w.k.design.mapping.scope is MapScope.KVM_ONLY:
        w.addrs.append(w.k.kvm_map_shared(w.pvm, gfn * P, P))
    elif w.k.design.mapping.scope is MapScope.PAGES:
        w.addrs.append(w.k.mmap(w.f, P, uapi.PROT_READ | uapi.PROT_WRITE, uapi.MAP_SHARED, (gfn - G) * P))


def op_np_share(w: World, d: st.DataObject) -> Any:
    gfn = G + d.draw(st.integers(0, SLOT_PAGES - 1), label="gfn")
    w.k.pkvm_host_share_guest(_pfn(w, d), gfn, w.nvm, d.draw(st.sampled_from([7, 4, 9]), label="prot"))
    w.np_gfns.append(gfn)


def op_np_unshare(w: World, d: st.DataObject) -> Any:
    gfn = d.draw(st.sampled_from(w.np_gfns), label="gfn") if w.np_gfns else _gfn(w, d)
    return w.k.pkvm_host_unshare_guest(gfn, w.nvm)


def _hyp_pfn(w: World, d: st.DataObject) -> int:
    if w.hyp_pfns and _often(d, "hyp pfn"):
        return d.draw(st.sampled_from(w.hyp_pfns), label="pfn")
    return _pfn(w, d)


def op_hyp_share(w: World, d: st.DataObject) -> Any:
    pfn = _pfn(w, d)
    w.k.pkvm_host_share_hyp(pfn)
    w.hyp_pfns.append(pfn)


def op_hyp_pin(w: World, d: st.DataObject) -> Any:
    return w.k.hyp_pin_shared_mem(_hyp_pfn(w, d))


def op_hyp_unpin(w: World, d: st.DataObject) -> Any:
    return w.k.hyp_unpin_shared_mem(_hyp_pfn(w, d))


def op_hyp_unshare(w: World, d: st.DataObject) -> Any:
    return w.k.pkvm_host_unshare_hyp(_hyp_pfn(w, d))


def op_guest_unshares(w: World, d: st.DataObject) -> Any:
    """The VMM takes a page back from the host, then the guest unshares it."""
    gfn = _gfn(w, d)
    if w.k.design.conversion.in_place:
        w.k.set_memory_attributes2(w.f, (gfn - G) * P, P, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
    else:
        w.k.set_memory_attributes(w.pvm, gfn * P, P, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
    w.k.pkvm_guest_unshare_host(w.pvm, gfn)


def _hypercall(name: str, *shape: str) -> Op:
    def call(w: World, d: st.DataObject) -> Any:
        args: list[int] = []
        for kind in shape:
            if kind == "pfn":
                args.append(_pfn(w, d))
            elif kind == "gfn":
                args.append(_gfn(w, d))
            elif kind == "nr":
                args.append(d.draw(st.sampled_from([0, 1, 2, 3, 1 << 52]), label="nr"))
            elif kind == "prot":
                args.append(d.draw(st.sampled_from([7, 4, 6, 8]), label="prot"))
            elif kind == "vm":
                args.append(d.draw(st.sampled_from([w.pvm, w.pvm, w.pvm, w.nvm, w.f]), label="vm"))
        return getattr(w.k, name)(*args)
    call.__name__ = name
    return call


OPS: list[Op] = [
    op_mmap, op_munmap, op_mprotect, op_dontneed, op_read, op_write, op_pin, op_unpin, op_punch,
    op_get_pfn, op_get_pfn, op_put_pfn, op_attributes, op_attributes2, op_kvm_map, op_guest,
    op_teardown, op_donate, op_touch, op_touch, op_guest_shares, op_guest_shares, op_guest_unshares,
    op_mmap, op_read, op_write, op_np_share, op_np_unshare, op_hyp_share, op_hyp_pin, op_hyp_pin,
    op_hyp_unpin, op_hyp_unshare,
    _hypercall("pkvm_host_share_hyp", "pfn"), _hypercall("pkvm_host_unshare_hyp", "pfn"),
    _hypercall("pkvm_host_donate_hyp", "pfn", "nr"), _hypercall("pkvm_hyp_donate_host", "pfn", "nr"),
    _hypercall("pkvm_host_share_ffa", "pfn", "nr"), _hypercall("pkvm_host_unshare_ffa", "pfn", "nr"),
    _hypercall("hyp_pin_shared_mem", "pfn"), _hypercall("hyp_unpin_shared_mem", "pfn"),
    _hypercall("pkvm_host_share_guest", "pfn", "gfn", "vm", "prot"),
    _hypercall("pkvm_host_unshare_guest", "gfn", "vm"),
    _hypercall("pkvm_host_donate_guest", "pfn", "gfn", "vm"),
    _hypercall("pkvm_host_donate_guest", "pfn", "gfn", "vm"),
    _hypercall("pkvm_guest_share_host", "vm", "gfn"), _hypercall("pkvm_guest_share_host", "vm", "gfn"),
    _hypercall("pkvm_guest_unshare_host", "vm", "gfn"),
    _hypercall("pkvm_host_reclaim_page", "vm", "pfn"),
]


def walk(design: str, data: st.DataObject) -> None:
    w = _world(design, data.draw(st.booleans(), label="INIT_SHARED"))
    steps = data.draw(st.integers(5, 40), label="steps")
    for i in range(steps):
        op = data.draw(st.sampled_from(OPS), label=f"op {i}")
        with contextlib.suppress(OSError, MemorySignal):
            op(w, data)
        problems = violations(w.k.state, w.k.design)
        assert not problems, f"after {op.__name__} (step {i}): {problems}"


@pytest.mark.parametrize("design", DESIGNS)
@given(data=st.data())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_walks_keep_every_promise(design: str, data: st.DataObject) -> None:
    walk(design, data)
