"""The model's core: the state, the design, and what every component shares.

The core holds the fd table's plumbing, the lifetimes of files, inodes and
VMs, and the physical frames handed out to file pages.  Every component
(parts.py lists them) is a `Component`: it holds the same state and design
and the core, and is given the few peers it talks to when the model is
assembled.

Lifetimes follow the kernel's reference counts, because several guest_memfd
behaviours are lifetime behaviours:

* an fd and every VMA hold a reference on their struct file, so a
  guest_memfd stays alive (bindings intact, VM pinned) while it is mapped
  even after close(), and is released only when the last fd *and* the last
  mapping are gone;
* a guest_memfd file, a vCPU file and a VM fd each hold a reference on the
  VM, so closing the VM fd does not destroy a VM whose guest_memfd is open;
* a memslot binding holds no file reference: releasing the file clears the
  binding's file pointer and leaves the slot in place.

Two events go up to components above the core, which the assembly connects:
a VM nobody references is destroyed (KVM's teardown, kvm.py), and references
beyond the page cache went away (the final folio_put, which completes an
in-place conversion waiting for it, inplace.py).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from ..errors import kernel_error
from .designs import Design
from .fileops import FileOps
from .pages import allocate, present
from .state import Inode, OpenFile, State, Vm

# What an ioctl meant for one kind of fd returns when issued on another
# (kvm_dev_ioctl / kvm_vcpu_ioctl default to EINVAL, kvm_vm_ioctl and
# files without an ioctl handler to ENOTTY).
_WRONG_FD_ERRNO = {"kvm": errno.EINVAL, "vcpu": errno.EINVAL}

FIRST_FD = 3  # 0, 1 and 2 belong to the process's stdio


def _forget_memslots(vm: Vm) -> None:
    vm.memslots.clear()


def _no_waiter(inode: Inode, first: int, last: int) -> None:
    return None


class Core:
    """State, design, fds, files, inodes, VMs' lifetimes and physical frames."""

    def __init__(self, design: Design, guest_path: str = "mmu") -> None:
        self.design = design
        # Who executes a guest access: "mmu" or "emulator" (guestaccess.py).
        self.guest_path = guest_path
        self.state = State()
        # The operations of each kind of file (fileops.py), by OpenFile.kind.
        self.ops: dict[str, FileOps] = {}
        # kvm_destroy_vm: what happens to a VM nobody references (kvm.py).
        self.destroy_vm: Callable[[Vm], None] = _forget_memslots
        # References on file pages [first, last) beyond the page cache went away
        # (a host PTE, a GUP pin, a get_pfn reference): inplace.py listens.
        self.refs_dropped: Callable[[Inode, int, int], None] = _no_waiter

    # --- fds -------------------------------------------------------------------

    def file(self, fd: int) -> OpenFile:
        fid = self.state.fds.get(fd)
        if fid is None:
            raise kernel_error(errno.EBADF, f"fd {fd} is not open")
        return self.state.files[fid]

    def file_or_none(self, fd: int) -> OpenFile | None:
        fid = self.state.fds.get(fd)
        return self.state.files[fid] if fid is not None else None

    def vm_or_none(self, fd: int) -> Vm | None:
        f = self.file_or_none(fd)
        return self.state.vms.get(f.vm) if f is not None and f.kind == "vm" and f.vm is not None \
            else None

    def ioctl_file(self, fd: int, want: str) -> OpenFile:
        """The file an ioctl of kind `want` ("kvm", "vm", "vcpu") is issued on."""
        f = self.file(fd)
        if f.kind != want:
            raise kernel_error(_WRONG_FD_ERRNO.get(f.kind, errno.ENOTTY),
                               f"fd {fd} is a {f.kind} fd, not a {want} fd")
        return f

    def vm_of(self, fd: int) -> Vm:
        f = self.ioctl_file(fd, "vm")
        assert f.vm is not None
        return self.state.vms[f.vm]

    def install(self, file: OpenFile) -> int:
        fds = self.state.fds
        fd = FIRST_FD
        while fd in fds:
            fd += 1
        fds[fd] = file.id
        file.fds += 1
        return fd

    def new_inode(self, kind: str, mode: int, size: int = 0, nlink: int = 1) -> Inode:
        inode = Inode(ino=self.state.new_id(), kind=kind, mode=mode, size=size, nlink=nlink)
        self.state.inodes[inode.ino] = inode
        return inode

    def new_file(self, kind: str, inode: Inode, vm: Vm | None = None) -> OpenFile:
        f = OpenFile(id=self.state.new_id(), kind=kind, inode=inode.ino,
                     vm=vm.id if vm is not None else None)
        inode.files += 1
        if vm is not None:
            vm.refs += 1
        self.state.files[f.id] = f
        return f

    # --- release -----------------------------------------------------------------

    def drop_fd(self, fd: int) -> None:
        f = self.file(fd)
        del self.state.fds[fd]
        f.fds -= 1
        self.maybe_release(f)

    def maybe_release(self, f: OpenFile) -> None:
        """Release a struct file whose last fd and last mapping are gone."""
        if f.fds or f.mapped_pages or f.holders or f.released:
            return
        f.released = True
        release = self.ops[f.kind].release
        if release is not None:
            release(f)
        del self.state.files[f.id]
        inode = self.state.inodes[f.inode]
        inode.files -= 1
        if inode.files == 0:
            # No file and hence no mapping is left: the memory is freed.
            self.state.counters["pages_freed"] += present(inode.pages)
            del self.state.inodes[inode.ino]
        if f.vm is not None:
            self.put_vm(self.state.vms[f.vm])

    def put_vm(self, vm: Vm) -> None:
        vm.refs -= 1
        if vm.refs == 0:
            vm.alive = False
            self.destroy_vm(vm)
            del self.state.vms[vm.id]

    # --- physical frames --------------------------------------------------------

    def assign_pfn(self, inode: Inode, index: int) -> int:
        """The pfn of page index, handing out a new frame if it has none.
        Frames are never reused, so a pfn names one page for the model's life."""
        delta = inode.pfns[index]
        if delta is None:
            delta = self.state.next_pfn - index
            self.state.next_pfn += 1
            inode.pfns.set(index, index + 1, delta)
            pfn = index + delta
            self.state.frames.set(pfn, pfn + 1, (inode.ino, -delta))
        return index + delta

    # --- references on file pages (the folio's refcount beyond the page cache) ---

    def reference(self, inode: Inode, index: int) -> int:
        """Take one reference on page index, allocating it (zeroed) if the file
        has none there: its pfn (kvm_gmem_get_pfn's folio_get, get_pfn's)."""
        self.state.counters["pages_zeroed"] += allocate(inode.pages, index, index + 1)
        pfn = self.assign_pfn(inode, index)
        inode.refs.set(index, index + 1, inode.refs[index] + 1)
        return pfn

    def unreference(self, inode: Inode, index: int) -> None:
        """Drop one reference on page index (folio_put); EINVAL when none is held."""
        if index >= inode.refs.limit or inode.refs[index] == 0:
            raise kernel_error(errno.EINVAL, f"no reference is held on page {index}")
        inode.refs.set(index, index + 1, inode.refs[index] - 1)
        self.refs_dropped(inode, index, index + 1)

    def free_pfns(self, inode: Inode, first: int, last: int) -> None:
        """Pages [first, last) left the file: their frames hold nothing any more."""
        last = min(last, inode.pfns.limit)
        for s, e, delta in list(inode.pfns.runs(first, last)):
            if delta is not None:
                self.state.frames.set(s + delta, e + delta, None)
        inode.pfns.set(first, last, None)


class Component:
    """One subsystem of the model, composed by the core (not a mixin).

    It holds the shared state and design and the core; the peers it talks to
    are handed to its `connect` when the model is assembled (parts.py).
    ModelKernel re-points `state` on every component when a state is restored.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self.state = core.state
        self.design = core.design
