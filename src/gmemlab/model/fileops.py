"""What one kind of file does: its operations as one explicit table.

The kernel attaches behaviour to a file through tables of function pointers
(struct file_operations such as kvm_gmem_fops, the vm_operations_struct of
its mappings) and callers test a pointer for NULL to do the default.  The
model does the same: each kind of file (OpenFile.kind: "gmem", "restricted",
"memfd", "shmem", "kvm", "vm", "vcpu") has one FileOps, built in one place by
the component that implements the kind (its `file_ops()`), and assembled in
parts.py.  A handler that is None is a missing pointer: the caller does what
the kernel does without it (ENODEV for mmap, EOPNOTSUPP for fallocate, ESPIPE
for llseek, EINVAL for read, SIGBUS for a fault, ...).  A table may differ by
design where a kernel build would (the restricted memfd's mappings may split
in the page-granular designs); the callers never look at the design.

Adding a kind of file is one table: its handlers and the three facts about
its inode and mount below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..uapi import PAGE_SHIFT
from .pages import PageStore
from .state import Inode, Mapping, Memslot, OpenFile, Vm

# The page behind a private guest access, or the errno getting it fails with.
Backing = tuple[PageStore, int] | int


def beyond_size(inode: Inode, index: int) -> str | None:
    """The SIGBUS of a fault at or beyond i_size, which every fault handler gives."""
    if index << PAGE_SHIFT >= inode.size:
        return f"file offset {index << PAGE_SHIFT:#x} is at or beyond i_size {inode.size:#x}"
    return None


def noop_llseek(f: OpenFile, offset: int, whence: int) -> int:
    """noop_llseek: the position, unchanged."""
    return f.pos


def noop_fsync(f: OpenFile) -> None:
    """noop_fsync: nothing to write back."""


@dataclass(frozen=True)
class FileOps:
    """One kind of file's operations; None where the kernel's pointer is NULL."""

    # --- the inode and the mount ---------------------------------------------------------
    regular: bool = False  # S_IFREG: ftruncate, fallocate and fstat's size reach it
    seekable: bool = False  # FMODE_LSEEK | FMODE_PREAD | FMODE_PWRITE
    noexec: bool = False  # on a noexec mount (the anonymous-inode filesystems): no PROT_EXEC
    counts_blocks: bool = False  # fstat's st_blocks counts its pages (shmem)
    chmod: bool = False  # setattr may change the mode (else EINVAL)

    # --- file_operations ---------------------------------------------------------------------
    llseek: Callable[[OpenFile, int, int], int] | None = None  # (file, offset, whence) -> pos
    read: Callable[[OpenFile, int, int], bytes] | None = None  # (file, pos, length)
    write: Callable[[OpenFile, int, bytes], int] | None = None  # (file, pos, data)
    fsync: Callable[[OpenFile], None] | None = None
    # (file, shared, prot, pgoff, npages); raises the errno that refuses the mapping
    mmap: Callable[[OpenFile, bool, int, int, int], None] | None = None
    # (file, pgoff, npages, addr, fixed) -> where the mapping goes (a hint unless fixed)
    get_unmapped_area: Callable[[OpenFile, int, int, int, bool], int] | None = None
    fallocate: Callable[[OpenFile, int, int, int], None] | None = None  # (file, mode, offset, len)
    setsize: Callable[[OpenFile, int], None] | None = None  # setattr(ATTR_SIZE): ftruncate
    release: Callable[[OpenFile], None] | None = None  # the last reference went

    # --- vm_operations_struct of its shared mappings -------------------------------------------
    # (file, first, last, write) -> the first file page of [first, last) not served
    fault: Callable[[OpenFile, int, int, bool], int] | None = None
    may_split: Callable[[Mapping, int], None] | None = None  # raises to refuse a split there
    mremap: Callable[[Mapping], None] | None = None  # raises to refuse a move
    close: Callable[[Mapping], None] | None = None  # a VMA of it went away
    # Why a fault on file page index failed, for the SIGBUS: refuses_page is the
    # file holding this page back (it is private), asked before the hypervisor's
    # stage-2; why_sigbus the file refusing it otherwise (size, state).
    refuses_page: Callable[[OpenFile, int], str | None] | None = None
    why_sigbus: Callable[[OpenFile, int], str] | None = None

    # --- KVM's side: the file that backs private memory -----------------------------------------
    bind: Callable[[Vm, Memslot, OpenFile, int], None] | None = None  # (vm, slot, file, offset)
    unbind: Callable[[Vm, Memslot], None] | None = None
    private_backing: Callable[[Vm, Memslot, int], Backing] | None = None  # (vm, slot, gfn)
    get_pfn: Callable[[OpenFile, int], int] | None = None  # (file, index) -> pfn
    put_pfn: Callable[[OpenFile, int], int] | None = None
