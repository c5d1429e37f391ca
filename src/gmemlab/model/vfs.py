"""File system calls: what the VFS checks, then what the kind of file does.

Each call runs the generic VFS checks in the kernel's order (negative
offsets before the fd lookup where the syscall does so, FMODE checks, mode
validation, overflow), then calls the file's operation from its kind's table
(fileops.py).  A kind without that operation gets the VFS default for a file
whose file_operations lack it.
"""

from __future__ import annotations

import errno

from .. import uapi
from ..errors import UsageError, kernel_error
from ..interface import Stat
from . import pages
from .core import Component

MAX_LFS_FILESIZE = (1 << 63) - 1
SEEK_MAX = 4

# st_dev of each filesystem the model's files live on: the numbers are the
# model's own (a real kernel hands out anonymous device numbers at boot); only
# which files share one is meant.
FS_DEVS = {"devtmpfs": 0x5, "anon_inodefs": 0xE, "shmem": 0x1, "guest_memfd": 0x2C,
           "restrictedmem": 0x2D}
INODE_FS = {"chardev": "devtmpfs", "anon": "anon_inodefs", "gmem": "anon_inodefs",
            "memfd": "shmem", "shmem": "shmem", "restricted": "restrictedmem"}


class Vfs(Component):
    """close, dup, stat, read and write, seek, size and allocation, on any fd."""

    def close(self, fd: int) -> int:
        self.core.drop_fd(fd)
        return 0

    def dup(self, fd: int) -> int:
        return self.core.install(self.core.file(fd))

    # --- metadata ---------------------------------------------------------------

    def fstat(self, fd: int) -> Stat:
        f = self.core.file(fd)
        inode = self.state.inodes[f.inode]
        ops = self.core.ops[f.kind]
        blocks = 0
        if ops.counts_blocks:
            blocks = pages.present(inode.pages) * (uapi.PAGE_SIZE // 512)
        return Stat(size=inode.size if ops.regular else 0, mode=inode.mode,
                    blksize=uapi.PAGE_SIZE, blocks=blocks, nlink=inode.nlink,
                    ino=inode.ino, dev=FS_DEVS[self._filesystem(inode.kind)])

    def _filesystem(self, kind: str) -> str:
        """The filesystem an inode of this kind lives on."""
        if kind == "gmem" and self.design.kvm.own_filesystem:
            return "guest_memfd"  # the guest_memfd pseudo-filesystem (6.19)
        return INODE_FS[kind]

    def fchmod(self, fd: int, mode: int) -> int:
        f = self.core.file(fd)
        ops = self.core.ops[f.kind]
        if not ops.regular:
            raise UsageError("fchmod: only guest_memfd and memfd files may be changed "
                             "(the others share a system-wide inode)")
        if not ops.chmod:
            raise kernel_error(errno.EINVAL, "setattr of this inode always fails")
        inode = self.state.inodes[f.inode]
        inode.mode = (inode.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def fsync(self, fd: int) -> int:
        f = self.core.file(fd)
        fsync = self.core.ops[f.kind].fsync
        if fsync is None:
            raise kernel_error(errno.EINVAL, "no fsync file operation")
        fsync(f)
        return 0

    # --- read and write -------------------------------------------------------------

    def read(self, fd: int, length: int) -> bytes:
        f = self.core.file(fd)
        read = self.core.ops[f.kind].read
        if read is None:
            raise kernel_error(errno.EINVAL, f"a {f.kind} file has no read operation")
        data = read(f, f.pos, length)
        f.pos += len(data)
        return data

    def write(self, fd: int, data: bytes) -> int:
        f = self.core.file(fd)
        write = self.core.ops[f.kind].write
        if write is None:
            raise kernel_error(errno.EINVAL, f"a {f.kind} file has no write operation")
        n = write(f, f.pos, data)
        f.pos += n
        return n

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        if offset < 0:
            raise kernel_error(errno.EINVAL, "negative offset")
        f = self.core.file(fd)
        ops = self.core.ops[f.kind]
        if not ops.seekable:
            raise kernel_error(errno.ESPIPE, f"a {f.kind} file is not seekable")
        if ops.read is None:
            raise kernel_error(errno.EINVAL, f"a {f.kind} file has no read operation")
        return ops.read(f, offset, length)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if offset < 0:
            raise kernel_error(errno.EINVAL, "negative offset")
        f = self.core.file(fd)
        ops = self.core.ops[f.kind]
        if not ops.seekable:
            raise kernel_error(errno.ESPIPE, f"a {f.kind} file is not seekable")
        if ops.write is None:
            raise kernel_error(errno.EINVAL, f"a {f.kind} file has no write operation")
        return ops.write(f, offset, data)

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        f = self.core.file(fd)
        if whence > SEEK_MAX:
            raise kernel_error(errno.EINVAL, f"whence {whence}")
        llseek = self.core.ops[f.kind].llseek
        if llseek is None:
            raise kernel_error(errno.ESPIPE, f"a {f.kind} file is not seekable")
        return llseek(f, offset, whence)

    # --- size and allocation ----------------------------------------------------------

    def ftruncate(self, fd: int, length: int) -> int:
        if length < 0:
            raise kernel_error(errno.EINVAL, "negative length")
        f = self.core.file(fd)
        ops = self.core.ops[f.kind]
        if not ops.regular:
            raise kernel_error(errno.EINVAL, f"a {f.kind} file is not a regular file")
        if ops.setsize is None:
            raise kernel_error(errno.EINVAL, "setattr of this inode always fails")
        ops.setsize(f, length)
        return 0

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
        ops = self.core.ops[f.kind]
        if not ops.regular:
            raise kernel_error(errno.ENODEV, f"a {f.kind} file is not a regular file")
        if offset + length > MAX_LFS_FILESIZE:
            raise kernel_error(errno.EFBIG, "offset + length overflows")
        if ops.fallocate is None:
            raise kernel_error(errno.EOPNOTSUPP, "no fallocate file operation")
        ops.fallocate(f, mode, offset, length)
        return 0
