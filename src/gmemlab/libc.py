"""The few libc entry points the host kernel needs, through ctypes.

Every wrapper returns the system call's result or raises OSError with the
errno the kernel set, exactly like the os module does.  Raw pointers are
plain ints.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

_c_void_p, _c_size_t, _c_int, _c_long, _c_ulong = (
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_long, ctypes.c_ulong)

MAP_FAILED = ctypes.c_void_p(-1).value

SYS_mmap = 9
SYS_mremap = 25
SYS_mbind = 237
SYS_set_mempolicy = 238
SYS_get_mempolicy = 239


def _fail() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


_ioctl_int = _libc.ioctl
_ioctl_int.argtypes = [_c_int, _c_ulong, _c_ulong]
_ioctl_int.restype = _c_int


def ioctl_int(fd: int, request: int, arg: int) -> int:
    """An ioctl whose argument is an integer (KVM_CREATE_VM, KVM_CHECK_EXTENSION, ...)."""
    r = _ioctl_int(fd, request, arg)
    if r < 0:
        raise _fail()
    return int(r)


_ioctl_ptr = ctypes.CFUNCTYPE(_c_int, _c_int, _c_ulong, _c_void_p, use_errno=True)(
    ("ioctl", _libc))


def ioctl_buf(fd: int, request: int, buf: bytearray) -> int:
    """An ioctl whose argument points at buf (read and written in place)."""
    cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
    r = _ioctl_ptr(fd, request, ctypes.addressof(cbuf))
    if r < 0:
        raise _fail()
    return int(r)


_syscall6 = ctypes.CFUNCTYPE(_c_long, _c_long, _c_ulong, _c_ulong, _c_ulong, _c_ulong, _c_ulong,
                             _c_ulong, use_errno=True)(("syscall", _libc))


def _syscall(nr: int, *args: int) -> int:
    padded = [a & ((1 << 64) - 1) for a in args] + [0] * (6 - len(args))
    r = _syscall6(nr, *padded)
    if r == -1:
        raise _fail()
    return int(r) & ((1 << 64) - 1)


def mmap(addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    return _syscall(SYS_mmap, addr, length, prot, flags, fd & 0xFFFFFFFF, offset)


def mremap(addr: int, old_length: int, new_length: int, flags: int, new_address: int) -> int:
    return _syscall(SYS_mremap, addr, old_length, new_length, flags, new_address)


def _checked(name: str, argtypes: list[type]) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    fn = getattr(_libc, name)
    fn.argtypes = argtypes
    fn.restype = _c_int
    return fn


_munmap = _checked("munmap", [_c_void_p, _c_size_t])
_mprotect = _checked("mprotect", [_c_void_p, _c_size_t, _c_int])
_madvise = _checked("madvise", [_c_void_p, _c_size_t, _c_int])
_fallocate = _checked("fallocate", [_c_int, _c_int, ctypes.c_int64, ctypes.c_int64])


def munmap(addr: int, length: int) -> int:
    if _munmap(addr, length) < 0:
        raise _fail()
    return 0


def mprotect(addr: int, length: int, prot: int) -> int:
    if _mprotect(addr, length, prot) < 0:
        raise _fail()
    return 0


def madvise(addr: int, length: int, advice: int) -> int:
    if _madvise(addr, length, advice) < 0:
        raise _fail()
    return 0


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    if _fallocate(fd, mode, offset, length) < 0:
        raise _fail()
    return 0


# --- NUMA memory policy: the raw system calls (libnuma is not needed) ---------------


def _words(mask: list[int]) -> ctypes.Array[ctypes.c_ulong] | None:
    return (_c_ulong * len(mask))(*mask) if mask else None


def mbind(addr: int, length: int, mode: int, nodemask: list[int], maxnode: int,
          flags: int) -> int:
    """mbind(2); an empty nodemask is NULL, else the words the kernel may read."""
    buf = _words(nodemask)
    r = _syscall6(SYS_mbind, addr & (2**64 - 1), length & (2**64 - 1), mode & (2**64 - 1),
                  ctypes.addressof(buf) if buf is not None else 0, maxnode & (2**64 - 1),
                  flags & 0xFFFFFFFF, 0)
    if r == -1:
        raise _fail()
    return 0


def set_mempolicy(mode: int, nodemask: list[int], maxnode: int) -> int:
    buf = _words(nodemask)
    r = _syscall6(SYS_set_mempolicy, mode & (2**64 - 1),
                  ctypes.addressof(buf) if buf is not None else 0, maxnode & (2**64 - 1),
                  0, 0, 0, 0)
    if r == -1:
        raise _fail()
    return 0


def get_mempolicy(words: int | None, maxnode: int, addr: int, flags: int) -> tuple[int, list[int]]:
    """get_mempolicy(2) with a mask of `words` words (None: a NULL mask): (mode, the words)."""
    mode = ctypes.c_int(0)
    buf = (_c_ulong * max(words or 0, 1))()
    r = _syscall6(SYS_get_mempolicy, ctypes.addressof(mode),
                  ctypes.addressof(buf) if words is not None else 0, maxnode & (2**64 - 1),
                  addr & (2**64 - 1), flags & (2**64 - 1), 0, 0)
    if r == -1:
        raise _fail()
    return mode.value, [int(w) for w in buf[:words or 0]]


_fstatfs = _checked("fstatfs", [_c_int, _c_void_p])


def fstatfs_type(fd: int) -> int:
    """statfs.f_type of the filesystem fd lives on (the first field, a long on x86-64)."""
    buf = ctypes.create_string_buffer(120)
    if _fstatfs(fd, buf) < 0:
        raise _fail()
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


class _IoVec(ctypes.Structure):
    _fields_ = [("base", _c_void_p), ("len", _c_size_t)]


_pvm_readv = _libc.process_vm_readv
_pvm_writev = _libc.process_vm_writev
for _fn in (_pvm_readv, _pvm_writev):
    _fn.argtypes = [_c_int, ctypes.POINTER(_IoVec), _c_ulong, ctypes.POINTER(_IoVec), _c_ulong,
                    _c_ulong]
    _fn.restype = ctypes.c_ssize_t

_PID = os.getpid()


def copy_from(addr: int, length: int, out: bytearray | memoryview, out_offset: int = 0) -> int:
    """Read our own memory at addr into out without ever faulting.

    process_vm_readv on our own pid pins the pages first and returns the
    number of bytes it could copy, or EFAULT where a plain load would have
    taken SIGSEGV or SIGBUS.
    """
    buf = (ctypes.c_char * len(out)).from_buffer(out)
    local = _IoVec(ctypes.addressof(buf) + out_offset, length)
    remote = _IoVec(addr, length)
    n = _pvm_readv(_PID, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        if err == 14:  # EFAULT at the very first page
            return 0
        raise OSError(err, os.strerror(err))
    return int(n)


def copy_to(addr: int, data: bytes | bytearray | memoryview, repeat: int = 1) -> int:
    """Write data (repeated `repeat` times) to our own memory at addr without
    ever faulting; returns the bytes written before the first bad page."""
    src = bytes(data) if not isinstance(data, bytes) else data
    cbuf = ctypes.create_string_buffer(src, len(src)) if src else ctypes.create_string_buffer(1)
    total = len(src) * repeat
    done = 0
    chunk = max(1, min(repeat, 1024))  # IOV_MAX local vectors per call
    while done < total:
        count = min(chunk, (total - done) // len(src))
        local = (_IoVec * count)(*[_IoVec(ctypes.addressof(cbuf), len(src))] * count)
        remote = _IoVec(addr + done, count * len(src))
        n = _pvm_writev(_PID, local, count, ctypes.byref(remote), 1, 0)
        if n < 0:
            err = ctypes.get_errno()
            if err == 14:
                return done
            raise OSError(err, os.strerror(err))
        done += int(n)
        if n < count * len(src):
            return done
    return done


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [_c_void_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object
_bytes_data = ctypes.pythonapi.PyBytes_AsString
_bytes_data.argtypes = [ctypes.py_object]
_bytes_data.restype = _c_void_p
HUGE = 1 << 21
MADV_HUGEPAGE = 14


def load(addr: int, length: int) -> bytes:
    """A new bytes object holding [addr, addr+length), which must be safe to read.

    A large result is fresh memory that the copy faults in page by page; it
    asks for transparent huge pages first (where the THP mode is
    madvise), which makes the first touch several times cheaper.
    """
    if length < 2 * HUGE:
        return ctypes.string_at(addr, length)
    out = _new_bytes(None, length)  # uninitialised, and ours until returned
    data = _bytes_data(out)
    lo, hi = (data + HUGE - 1) & ~(HUGE - 1), (data + length) & ~(HUGE - 1)
    if hi > lo:
        _madvise(lo, hi - lo, MADV_HUGEPAGE)  # a hint: failure changes nothing
    ctypes.memmove(data, addr, length)
    result: bytes = out
    return result
