"""File system calls: what the VFS checks, then what each kind of file does.

Each call runs the generic VFS checks in the kernel's order (negative
offsets before the fd lookup where the syscall does so, FMODE checks, mode
validation, overflow), then dispatches to ``_<call>_<kind>`` for the kind of
file (gmem, memfd, ...).  A kind without a handler gets the VFS default for a
file whose file_operations lack that method.
"""

from __future__ import annotations

import errno
from typing import Any

from .. import uapi
from ..errors import UsageError, kernel_error
from ..interface import Stat
from . import pages
from .base import ModelBase
from .state import OpenFile

MAX_LFS_FILESIZE = (1 << 63) - 1
MAX_RW_COUNT = (1 << 31) - (1 << 12)  # INT_MAX & PAGE_MASK: reads are clamped
SEEK_DATA, SEEK_HOLE, SEEK_MAX = 3, 4, 4

# Kinds whose inode is S_IFREG (ftruncate and fallocate reach them).
REGULAR = frozenset({"gmem", "memfd", "restricted"})
# Kinds whose files have FMODE_PREAD/PWRITE and FMODE_LSEEK.
SEEKABLE = frozenset({"memfd", "kvm"})
# Kinds whose llseek is noop_llseek (returns the position, changes nothing).
NOOP_LLSEEK = frozenset({"kvm", "vm", "vcpu"})

MFD_VALID = uapi.MFD_CLOEXEC | uapi.MFD_ALLOW_SEALING | uapi.MFD_HUGETLB | 0x8 | 0x10
MFD_NOEXEC_SEAL, MFD_EXEC = 0x8, 0x10
MFD_NAME_MAX = 249

MODES = {
    "kvm": 0o020600,  # /dev/kvm, a character device
    "vm": 0o600,  # anon inode
    "vcpu": 0o600,
    "gmem": uapi.S_IFREG | 0o600,
    "memfd": uapi.S_IFREG | 0o777,
    "restricted": uapi.S_IFREG | 0o600,
}


# st_dev of each filesystem the model's files live on: the numbers are the
# model's own (a real kernel hands out anonymous device numbers at boot); only
# which files share one is meant.
FS_DEVS = {"devtmpfs": 0x5, "anon_inodefs": 0xE, "shmem": 0x1, "guest_memfd": 0x2C,
           "restrictedmem": 0x2D}
INODE_FS = {"chardev": "devtmpfs", "anon": "anon_inodefs", "gmem": "anon_inodefs",
            "memfd": "shmem", "shmem": "shmem", "restricted": "restrictedmem"}


class VfsOps(ModelBase):
    def _handler(self, call: str, f: OpenFile) -> Any:
        return getattr(self, f"_{call}_{f.kind}", None)

    # --- opening ---------------------------------------------------------------

    def open_kvm(self) -> int:
        inode = self.core.new_inode("chardev", MODES["kvm"])
        return self.core.install(self.core.new_file("kvm", inode))

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

    def close(self, fd: int) -> int:
        self.core.drop_fd(fd)
        return 0

    def dup(self, fd: int) -> int:
        return self.core.install(self.core.file(fd))

    # --- metadata ---------------------------------------------------------------

    def fstat(self, fd: int) -> Stat:
        f = self.core.file(fd)
        inode = self.state.inodes[f.inode]
        blocks = 0
        if f.kind == "memfd":
            blocks = pages.present(inode.pages) * (uapi.PAGE_SIZE // 512)
        return Stat(size=inode.size if f.kind in REGULAR else 0, mode=inode.mode,
                    blksize=uapi.PAGE_SIZE, blocks=blocks, nlink=inode.nlink,
                    ino=inode.ino, dev=FS_DEVS[self._filesystem(inode.kind)])

    def _filesystem(self, kind: str) -> str:
        """The filesystem an inode of this kind lives on."""
        if kind == "gmem" and self.design.kvm.own_filesystem:
            return "guest_memfd"  # the guest_memfd pseudo-filesystem (6.19)
        return INODE_FS[kind]

    def fchmod(self, fd: int, mode: int) -> int:
        f = self.core.file(fd)
        if f.kind not in ("gmem", "memfd", "restricted"):
            raise UsageError("fchmod: only guest_memfd and memfd files may be changed "
                             "(the others share a system-wide inode)")
        if f.kind in ("gmem", "restricted"):
            raise kernel_error(errno.EINVAL, "setattr of this inode always fails")
        inode = self.state.inodes[f.inode]
        inode.mode = (inode.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def fsync(self, fd: int) -> int:
        f = self.core.file(fd)
        if f.kind == "memfd":
            return 0  # noop_fsync
        raise kernel_error(errno.EINVAL, "no fsync file operation")

    # --- read and write -------------------------------------------------------------

    def read(self, fd: int, length: int) -> bytes:
        f = self.core.file(fd)
        if f.kind != "memfd":
            raise kernel_error(errno.EINVAL, f"a {f.kind} file has no read operation")
        data = self._memfd_read(f, f.pos, length)
        f.pos += len(data)
        return data

    def write(self, fd: int, data: bytes) -> int:
        f = self.core.file(fd)
        if f.kind != "memfd":
            raise kernel_error(errno.EINVAL, f"a {f.kind} file has no write operation")
        n = self._memfd_write(f, f.pos, data)
        f.pos += n
        return n

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        if offset < 0:
            raise kernel_error(errno.EINVAL, "negative offset")
        f = self.core.file(fd)
        if f.kind not in SEEKABLE:
            raise kernel_error(errno.ESPIPE, f"a {f.kind} file is not seekable")
        if f.kind != "memfd":
            raise kernel_error(errno.EINVAL, f"a {f.kind} file has no read operation")
        return self._memfd_read(f, offset, length)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if offset < 0:
            raise kernel_error(errno.EINVAL, "negative offset")
        f = self.core.file(fd)
        if f.kind not in SEEKABLE:
            raise kernel_error(errno.ESPIPE, f"a {f.kind} file is not seekable")
        if f.kind != "memfd":
            raise kernel_error(errno.EINVAL, f"a {f.kind} file has no write operation")
        return self._memfd_write(f, offset, data)

    def _memfd_read(self, f: OpenFile, pos: int, length: int) -> bytes:
        inode = self.state.inodes[f.inode]
        n = max(0, min(length, MAX_RW_COUNT, inode.size - pos))
        return pages.read(inode.pages, pos, n) if n else b""

    def _memfd_write(self, f: OpenFile, pos: int, data: bytes) -> int:
        if not data:
            return 0
        if pos + len(data) > MAX_LFS_FILESIZE:
            raise kernel_error(errno.EFBIG, "write beyond the maximum file size")
        inode = self.state.inodes[f.inode]
        pages.write(inode.pages, pos, data)
        inode.size = max(inode.size, pos + len(data))
        return len(data)

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        f = self.core.file(fd)
        if whence > SEEK_MAX:
            raise kernel_error(errno.EINVAL, f"whence {whence}")
        if f.kind in NOOP_LLSEEK:
            return f.pos
        if f.kind != "memfd":
            raise kernel_error(errno.ESPIPE, f"a {f.kind} file is not seekable")
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
        first, last = offset >> uapi.PAGE_SHIFT, (size + uapi.PAGE_SIZE - 1) >> uapi.PAGE_SHIFT
        if whence == SEEK_DATA:
            index = store.find(first, last, lambda page: page is not None)
            if index is None:
                raise kernel_error(errno.ENXIO, "no data after offset")
        else:
            index = store.find(first, last, lambda page: page is None)
            if index is None:
                return size
        return max(offset, min(index << uapi.PAGE_SHIFT, size))

    # --- size and allocation ----------------------------------------------------------

    def ftruncate(self, fd: int, length: int) -> int:
        if length < 0:
            raise kernel_error(errno.EINVAL, "negative length")
        f = self.core.file(fd)
        if f.kind not in REGULAR:
            raise kernel_error(errno.EINVAL, f"a {f.kind} file is not a regular file")
        handler = self._handler("ftruncate", f)
        if handler is not None:
            handler(f, length)
            return 0
        raise kernel_error(errno.EINVAL, "setattr of this inode always fails")

    def _ftruncate_memfd(self, f: OpenFile, length: int) -> None:
        inode = self.state.inodes[f.inode]
        if length <= inode.size:
            # shmem_setattr truncates whenever the size does not grow, to the
            # end of the file's page space (shmem_truncate_range(inode,
            # newsize, -1)): pages beyond the size (fallocated with KEEP_SIZE)
            # go too, even when the size stays the same.
            end = pages.PAGE_INDEX_LIMIT << uapi.PAGE_SHIFT
            self._shmem_zero_range(inode.pages, length, end - length)
            self._zap_file_range(f.inode, length, inode.size - length)
        inode.size = length

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> int:
        # vfs_fallocate, in its order of checks.
        if offset < 0 or length <= 0:
            raise kernel_error(errno.EINVAL, "offset < 0 or length <= 0")
        mask = uapi.FALLOC_FL_SUPPORTED_MASK & ~uapi.FALLOC_FL_KEEP_SIZE
        if mode & ~(mask | uapi.FALLOC_FL_KEEP_SIZE):
            raise kernel_error(errno.EOPNOTSUPP, "unknown fallocate mode bits")
        kind = mode & mask
        if kind == uapi.FALLOC_FL_PUNCH_HOLE:
            if not mode & uapi.FALLOC_FL_KEEP_SIZE:
                raise kernel_error(errno.EOPNOTSUPP, "PUNCH_HOLE needs KEEP_SIZE")
        elif kind in (uapi.FALLOC_FL_COLLAPSE_RANGE, uapi.FALLOC_FL_INSERT_RANGE):
            if mode & uapi.FALLOC_FL_KEEP_SIZE:
                raise kernel_error(errno.EOPNOTSUPP, "COLLAPSE/INSERT with KEEP_SIZE")
        elif kind not in (0, uapi.FALLOC_FL_ZERO_RANGE, uapi.FALLOC_FL_UNSHARE_RANGE):
            raise kernel_error(errno.EOPNOTSUPP, "modes are exclusive")
        f = self.core.file(fd)
        if f.kind not in REGULAR:
            raise kernel_error(errno.ENODEV, f"a {f.kind} file is not a regular file")
        if offset + length > MAX_LFS_FILESIZE:
            raise kernel_error(errno.EFBIG, "offset + length overflows")
        handler = self._handler("fallocate", f)
        if handler is None:
            raise kernel_error(errno.EOPNOTSUPP, "no fallocate file operation")
        handler(f, mode, offset, length)
        return 0

    def _fallocate_memfd(self, f: OpenFile, mode: int, offset: int, length: int) -> None:
        # shmem_fallocate
        if mode & ~(uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE):
            raise kernel_error(errno.EOPNOTSUPP, "shmem supports only KEEP_SIZE and PUNCH_HOLE")
        inode = self.state.inodes[f.inode]
        if mode & uapi.FALLOC_FL_PUNCH_HOLE:
            self._shmem_zero_range(inode.pages, offset, length)
            self._zap_file_range(f.inode, offset, length)
            return
        first = offset >> uapi.PAGE_SHIFT
        last = (offset + length + uapi.PAGE_SIZE - 1) >> uapi.PAGE_SHIFT
        pages.allocate(inode.pages, first, last)
        if not mode & uapi.FALLOC_FL_KEEP_SIZE:
            inode.size = max(inode.size, offset + length)

    @staticmethod
    def _shmem_zero_range(store: pages.PageStore, offset: int, length: int) -> None:
        """Zero the bytes of partial pages, free the whole pages in between."""
        end = offset + length
        first_full = (offset + uapi.PAGE_SIZE - 1) >> uapi.PAGE_SHIFT
        last_full = end >> uapi.PAGE_SHIFT
        if first_full < last_full:
            pages.punch(store, first_full, last_full)
        for lo, hi in ((offset, min(end, first_full << uapi.PAGE_SHIFT)),
                       (max(offset, last_full << uapi.PAGE_SHIFT), end)):
            if lo < hi and store[lo >> uapi.PAGE_SHIFT] is not None:
                pages.write(store, lo, bytes(hi - lo))

    def _zap_file_range(self, ino: int, offset: int, length: int) -> None:
        """unmap_mapping_range: host PTEs of the pages the byte range touches go."""
        self.state.counters["host_pte_zaps"] += 1
        first = offset >> uapi.PAGE_SHIFT
        last = (offset + length + uapi.PAGE_SIZE - 1) >> uapi.PAGE_SHIFT
        self._zap_file_ptes(ino, first, min(last, pages.PAGE_INDEX_LIMIT))
