"""The model core's shared plumbing: fds, references, lifetimes.

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
"""

from __future__ import annotations

import errno
from typing import Any

from ..errors import kernel_error
from .designs import Design
from .pages import present
from .state import Inode, OpenFile, State, Vm

# What an ioctl meant for one kind of fd returns when issued on another
# (kvm_dev_ioctl / kvm_vcpu_ioctl default to EINVAL, kvm_vm_ioctl and
# files without an ioctl handler to ENOTTY).
_WRONG_FD_ERRNO = {"kvm": errno.EINVAL, "vcpu": errno.EINVAL}

FIRST_FD = 3  # 0, 1 and 2 belong to the process's stdio


class ModelBase:
    """State plus the helpers every group of operations uses."""

    name = "model"

    def __init__(self, design: Design) -> None:
        self.design = design
        self.state = State()

    # --- fds -------------------------------------------------------------------

    def _file(self, fd: int) -> OpenFile:
        fid = self.state.fds.get(fd)
        if fid is None:
            raise kernel_error(errno.EBADF, f"fd {fd} is not open")
        return self.state.files[fid]

    def _ioctl_file(self, fd: int, want: str) -> OpenFile:
        """The file an ioctl of kind `want` ("kvm", "vm", "vcpu") is issued on."""
        f = self._file(fd)
        if f.kind != want:
            raise kernel_error(_WRONG_FD_ERRNO.get(f.kind, errno.ENOTTY),
                               f"fd {fd} is a {f.kind} fd, not a {want} fd")
        return f

    def _vm_of(self, fd: int) -> Vm:
        f = self._ioctl_file(fd, "vm")
        assert f.vm is not None
        return self.state.vms[f.vm]

    def _install(self, file: OpenFile) -> int:
        fds = self.state.fds
        fd = FIRST_FD
        while fd in fds:
            fd += 1
        fds[fd] = file.id
        file.fds += 1
        return fd

    def _new_inode(self, kind: str, mode: int, size: int = 0, nlink: int = 1) -> Inode:
        inode = Inode(ino=self.state.new_id(), kind=kind, mode=mode, size=size, nlink=nlink)
        self.state.inodes[inode.ino] = inode
        return inode

    def _new_file(self, kind: str, inode: Inode, vm: Vm | None = None) -> OpenFile:
        f = OpenFile(id=self.state.new_id(), kind=kind, inode=inode.ino,
                     vm=vm.id if vm is not None else None)
        inode.files += 1
        if vm is not None:
            vm.refs += 1
        self.state.files[f.id] = f
        return f

    # --- release -----------------------------------------------------------------

    def _drop_fd(self, fd: int) -> None:
        f = self._file(fd)
        del self.state.fds[fd]
        f.fds -= 1
        self._maybe_release(f)

    def _maybe_release(self, f: OpenFile) -> None:
        """Release a struct file whose last fd and last mapping are gone."""
        if f.fds or f.mapped_pages or f.holders or f.released:
            return
        f.released = True
        self._release_file(f)
        del self.state.files[f.id]
        inode = self.state.inodes[f.inode]
        inode.files -= 1
        if inode.files == 0:
            # No file and hence no mapping is left: the memory is freed.
            self.state.counters["pages_freed"] += present(inode.pages)
            del self.state.inodes[inode.ino]
        if f.vm is not None:
            self._put_vm(self.state.vms[f.vm])

    def _release_file(self, f: OpenFile) -> None:
        """Kind-specific release (guest_memfd clears its bindings)."""

    def _put_vm(self, vm: Vm) -> None:
        vm.refs -= 1
        if vm.refs == 0:
            vm.alive = False
            self._destroy_vm(vm)
            del self.state.vms[vm.id]

    def _destroy_vm(self, vm: Vm) -> None:
        """Free memslots of a VM nobody references any more."""
        vm.memslots.clear()

    # --- physical frames --------------------------------------------------------

    def _assign_pfn(self, inode: Inode, index: int) -> int:
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

    def _free_pfns(self, inode: Inode, first: int, last: int) -> None:
        """Pages [first, last) left the file: their frames hold nothing any more."""
        last = min(last, inode.pfns.limit)
        for s, e, delta in list(inode.pfns.runs(first, last)):
            if delta is not None:
                self.state.frames.set(s + delta, e + delta, None)
        inode.pfns.set(first, last, None)

    # --- hooks the designs fill in ----------------------------------------------

    def _zap_file_ptes(self, ino: int, first: int, last: int) -> None:
        """unmap_mapping_range: drop every host PTE of file pages [first, last)."""

    def _host_refs_dropped(self, inode: Inode, first: int, last: int) -> None:
        """References on pages [first, last) went away (PTE, pin or get_pfn)."""

    def _design_blocker(self, actor: str, pending: Any) -> str | None:
        """Why a design keeps actor's next step waiting (model/steps.py), or None."""
        return None

    # --- housekeeping -----------------------------------------------------------

    def unsupported(self, op: str) -> str | None:
        return None

    def shutdown(self) -> None:
        for fd in list(self.state.fds):
            self._drop_fd(fd)

    def snapshot(self) -> State:
        """A copy of the whole model state; restore() brings it back."""
        return self.state.snapshot()

    def restore(self, state: State) -> None:
        self.state = state.snapshot()

