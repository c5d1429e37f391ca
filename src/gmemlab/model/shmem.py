"""shmem: memfd_create's files and shared anonymous memory (mm/shmem.c).

Both are shmem files (shmem_file_operations, shmem_vm_ops); a shared
anonymous mapping's file simply has no fd.  Reads and writes go through the
page cache, the size changes with ftruncate and with fallocate without
KEEP_SIZE, a punched hole zeroes partial pages and frees whole ones, and a
fault beyond i_size raises SIGBUS.
"""

from __future__ import annotations

import errno

from .. import uapi
from ..errors import UsageError, kernel_error
from . import pages
from .core import Component
from .fileops import FileOps, noop_fsync
from .ptes import HostPtes
from .state import OpenFile

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
MAX_LFS_FILESIZE = (1 << 63) - 1
MAX_RW_COUNT = (1 << 31) - (1 << 12)  # INT_MAX & PAGE_MASK: reads are clamped
SEEK_DATA, SEEK_HOLE = 3, 4

MFD_VALID = uapi.MFD_CLOEXEC | uapi.MFD_ALLOW_SEALING | uapi.MFD_HUGETLB | 0x8 | 0x10
MFD_NOEXEC_SEAL, MFD_EXEC = 0x8, 0x10
MFD_NAME_MAX = 249


class Shmem(Component):
    """memfd files and shared anonymous memory."""

    ptes: HostPtes

    def connect(self, ptes: HostPtes) -> None:
        self.ptes = ptes

    def file_ops(self) -> FileOps:
        """shmem_file_operations and shmem_vm_ops (memfd and shared anonymous memory)."""
        return FileOps(regular=True, seekable=True, counts_blocks=True, chmod=True,
                       llseek=self.llseek, read=self.read, write=self.write, fsync=noop_fsync,
                       mmap=self.mmap, fallocate=self.fallocate, setsize=self.setsize,
                       fault=self.fault)

    def memfd_create(self, name: str = "gmemlab", flags: int = 0) -> int:
        if "\0" in name:
            raise UsageError("memfd_create: name must not contain NUL")
        if flags & ~MFD_VALID:
            raise kernel_error(errno.EINVAL, "unknown MFD_ flag")
        if flags & MFD_NOEXEC_SEAL and flags & MFD_EXEC:
            raise kernel_error(errno.EINVAL, "MFD_NOEXEC_SEAL with MFD_EXEC")
        if len(name.encode()) > MFD_NAME_MAX:
            raise kernel_error(errno.EINVAL, f"name longer than {MFD_NAME_MAX} bytes")
        mode = uapi.S_IFREG | (0o666 if flags & MFD_NOEXEC_SEAL else 0o777)
        inode = self.core.new_inode("memfd", mode, nlink=0)
        return self.core.install(self.core.new_file("memfd", inode))

    # --- file_operations -------------------------------------------------------------------

    def read(self, f: OpenFile, pos: int, length: int) -> bytes:
        inode = self.state.inodes[f.inode]
        n = max(0, min(length, MAX_RW_COUNT, inode.size - pos))
        return pages.read(inode.pages, pos, n) if n else b""

    def write(self, f: OpenFile, pos: int, data: bytes) -> int:
        if not data:
            return 0
        if pos + len(data) > MAX_LFS_FILESIZE:
            raise kernel_error(errno.EFBIG, "write beyond the maximum file size")
        inode = self.state.inodes[f.inode]
        pages.write(inode.pages, pos, data)
        inode.size = max(inode.size, pos + len(data))
        return len(data)

    def llseek(self, f: OpenFile, offset: int, whence: int) -> int:
        inode = self.state.inodes[f.inode]
        if whence in (SEEK_DATA, SEEK_HOLE):
            pos = self._seek_data_hole(inode.pages, inode.size, offset, whence)
        else:
            base = {uapi.SEEK_SET: 0, uapi.SEEK_CUR: f.pos, uapi.SEEK_END: inode.size}[whence]
            pos = base + offset
            if pos < 0 or pos > MAX_LFS_FILESIZE:
                raise kernel_error(errno.EINVAL, "resulting offset out of range")
        f.pos = pos
        return pos

    @staticmethod
    def _seek_data_hole(store: pages.PageStore, size: int, offset: int, whence: int) -> int:
        if offset < 0 or offset >= size:
            raise kernel_error(errno.ENXIO, "offset at or beyond end of file")
        first, last = offset >> SHIFT, (size + P - 1) >> SHIFT
        if whence == SEEK_DATA:
            index = store.find(first, last, lambda page: page is not None)
            if index is None:
                raise kernel_error(errno.ENXIO, "no data after offset")
        else:
            index = store.find(first, last, lambda page: page is None)
            if index is None:
                return size
        return max(offset, min(index << SHIFT, size))

    def setsize(self, f: OpenFile, length: int) -> None:
        inode = self.state.inodes[f.inode]
        if length <= inode.size:
            # shmem_setattr truncates whenever the size does not grow, to the
            # end of the file's page space (shmem_truncate_range(inode,
            # newsize, -1)): pages beyond the size (fallocated with KEEP_SIZE)
            # go too, even when the size stays the same.
            end = pages.PAGE_INDEX_LIMIT << SHIFT
            self._zero_range(inode.pages, length, end - length)
            self._zap_range(f.inode, length, inode.size - length)
        inode.size = length

    def fallocate(self, f: OpenFile, mode: int, offset: int, length: int) -> None:
        # shmem_fallocate
        if mode & ~(uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE):
            raise kernel_error(errno.EOPNOTSUPP, "shmem supports only KEEP_SIZE and PUNCH_HOLE")
        inode = self.state.inodes[f.inode]
        if mode & uapi.FALLOC_FL_PUNCH_HOLE:
            self._zero_range(inode.pages, offset, length)
            self._zap_range(f.inode, offset, length)
            return
        first = offset >> SHIFT
        last = (offset + length + P - 1) >> SHIFT
        pages.allocate(inode.pages, first, last)
        if not mode & uapi.FALLOC_FL_KEEP_SIZE:
            inode.size = max(inode.size, offset + length)

    @staticmethod
    def _zero_range(store: pages.PageStore, offset: int, length: int) -> None:
        """Zero the bytes of partial pages, free the whole pages in between."""
        end = offset + length
        first_full = (offset + P - 1) >> SHIFT
        last_full = end >> SHIFT
        if first_full < last_full:
            pages.punch(store, first_full, last_full)
        for lo, hi in ((offset, min(end, first_full << SHIFT)),
                       (max(offset, last_full << SHIFT), end)):
            if lo < hi and store[lo >> SHIFT] is not None:
                pages.write(store, lo, bytes(hi - lo))

    def _zap_range(self, ino: int, offset: int, length: int) -> None:
        """unmap_mapping_range: host PTEs of the pages the byte range touches go."""
        self.state.counters["host_pte_zaps"] += 1
        first = offset >> SHIFT
        last = (offset + length + P - 1) >> SHIFT
        self.ptes.zap_file(ino, first, min(last, pages.PAGE_INDEX_LIMIT))

    # --- shmem_vm_ops ------------------------------------------------------------------------------

    def mmap(self, f: OpenFile, shared: bool, prot: int, pgoff: int, npages: int) -> None:
        return None  # shmem_mmap refuses nothing the model lets through

    def fault(self, f: OpenFile, first: int, last: int, write: bool) -> int:
        inode = self.state.inodes[f.inode]
        return max(first, min(last, (inode.size + P - 1) >> SHIFT))
