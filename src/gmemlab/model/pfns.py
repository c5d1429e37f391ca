"""Physical frames for guest_memfd pages: get_pfn and put_pfn on guest_memfd.

The 2022 restricted memfd hands pages to KVM through get_pfn (restricted.py);
guest_memfd does the same through kvm_gmem_get_pfn, which the model offers
under the same two model-only names so that a pKVM case can donate a
guest_memfd page to a guest whatever the design.  The reference it takes is
one beyond the page cache: the in-place designs count it when they decide
whether a page may become private.
"""

from __future__ import annotations

import errno

from .. import uapi
from ..errors import kernel_error
from . import pages
from .restricted import RestrictedOps
from .state import Inode

SHIFT = uapi.PAGE_SHIFT


class PfnOps(RestrictedOps):
    def _gmem_inode(self, fd: int) -> Inode | None:
        f = self.core.file(fd)
        return self.state.inodes[f.inode] if f.kind == "gmem" else None

    def get_pfn(self, fd: int, index: int) -> int:
        inode = self._gmem_inode(fd)
        if inode is None:
            return super().get_pfn(fd, index)
        if index >= inode.size >> SHIFT:
            raise kernel_error(errno.EINVAL, f"page {index} is beyond the file size")
        self.state.counters["pages_zeroed"] += pages.allocate(inode.pages, index, index + 1)
        pfn = self.core.assign_pfn(inode, index)
        inode.refs.set(index, index + 1, inode.refs[index] + 1)
        return pfn

    def put_pfn(self, fd: int, index: int) -> int:
        inode = self._gmem_inode(fd)
        if inode is None:
            return super().put_pfn(fd, index)
        if index >= inode.refs.limit or inode.refs[index] == 0:
            raise kernel_error(errno.EINVAL, f"no reference is held on page {index}")
        inode.refs.set(index, index + 1, inode.refs[index] - 1)
        self._host_refs_dropped(inode, index, index + 1)
        return 0
