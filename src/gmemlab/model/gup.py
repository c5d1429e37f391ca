"""Long-term GUP pins: the host references that block a conversion.

pin_user_pages(FOLL_LONGTERM), as O_DIRECT, vmsplice, io_uring fixed
buffers or VFIO take them, faults the pages of a host range in and holds a
reference on each until unpin_user_pages.  The reference is on the page, not
the address: unmapping the range later does not drop it.  So gup_pin records
which file pages it pinned, and gup_unpin drops the pin made by the oldest
call with the same addr and length.

The designs read the pins (Inode.pins) when they decide whether a page may
become private: page-mmap and kvm-map refuse with EBUSY, inplace with EAGAIN,
and pkvm-inplace waits for the last reference (docs/DESIGNS.md).  A guest_memfd
created with GUEST_MEMFD_FLAG_NO_DIRECT_MAP (design gmem-nodirectmap) cannot be
pinned at all: its pages are not in the kernel's direct map.
"""

from __future__ import annotations

import errno

from .. import uapi
from ..errors import kernel_error
from .core import Component
from .mm import AddressSpace
from .ptes import HostPtes
from .state import TASK_SIZE, GupPin

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT


class Gup(Component):
    """pin_user_pages(FOLL_LONGTERM) and unpin_user_pages."""

    mm: AddressSpace
    ptes: HostPtes

    def connect(self, mm: AddressSpace, ptes: HostPtes) -> None:
        self.mm, self.ptes = mm, ptes

    def gup_pin(self, addr: int, length: int) -> int:
        if length == 0:
            return 0
        if addr >= TASK_SIZE or length > TASK_SIZE - addr:
            raise kernel_error(errno.EFAULT, "the range is not in user space")
        first, last = addr >> SHIFT, (addr + length + P - 1) >> SHIFT
        segments, fault = self.mm.resolve(first << SHIFT, (last - first) << SHIFT, write=False)
        if fault is not None:
            # GUP turns VM_FAULT_SIGBUS and a missing VMA alike into -EFAULT;
            # a long-term pin is all or nothing.
            raise kernel_error(errno.EFAULT, f"page at {fault.addr:#x} cannot be pinned: {fault.why}")
        for _store, offset, _n, m in segments:
            inode = self.ptes.mapping_inode(m)
            if inode is not None and m.file is not None \
                    and inode.flags & uapi.GUEST_MEMFD_FLAG_NO_DIRECT_MAP \
                    and self.state.files[m.file].kind == "gmem":
                # A folio outside the direct map has no struct page address GUP
                # can hand out: the pin fails, as for any VM_PFNMAP-like memory.
                raise kernel_error(errno.EFAULT, f"page {offset >> SHIFT} of a guest_memfd "
                                   "created with NO_DIRECT_MAP cannot be pinned")
        runs: list[tuple[int, int, int]] = []
        for _store, offset, n, m in segments:
            inode = self.ptes.mapping_inode(m)
            if inode is None:
                continue  # anonymous or private memory: no file page to hold
            lo, hi = offset >> SHIFT, ((offset + n - 1) >> SHIFT) + 1
            inode.pins.update(lo, hi, lambda c: c + 1)
            runs.append((inode.ino, lo, hi))
        self.state.gup_pins.setdefault((addr, length), []).append(GupPin(tuple(runs)))
        return last - first

    def gup_unpin(self, addr: int, length: int) -> int:
        pins = self.state.gup_pins.get((addr, length))
        if not pins:
            raise kernel_error(errno.EINVAL, f"no pin of {length:#x} bytes at {addr:#x}")
        pin = pins.pop(0)
        if not pins:
            del self.state.gup_pins[(addr, length)]
        for ino, lo, hi in pin.runs:
            inode = self.state.inodes.get(ino)
            if inode is None:
                continue
            inode.pins.update(lo, hi, lambda c: c - 1)
            self.core.refs_dropped(inode, lo, hi)
        return 0

