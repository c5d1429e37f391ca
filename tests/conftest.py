"""Shared fixtures: kernels, and skips that name the kernel feature a test needs.

The kernel is probed once (gmemlab.host.probe); a test that touches the host
says what it needs with one of the marks below and is skipped, with the
reason, on a kernel that lacks it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gmemlab import uapi
from gmemlab.host import HostKernel, probe
from gmemlab.model import ModelKernel

PROFILE = probe.profile()
HOST_MISSING = None if PROFILE.usable else f"no usable /dev/kvm: {PROFILE.kvm_missing}"
GMEM_MISSING = HOST_MISSING or (None if PROFILE.has_guest_memfd else
                                "the kernel has no guest_memfd (KVM_CAP_GUEST_MEMFD = 0)")
MMAP_MISSING = GMEM_MISSING or (None if PROFILE.gmem_flags & uapi.GUEST_MEMFD_FLAG_MMAP else
                                "the kernel's guest_memfd has no MMAP flag (before Linux 6.18)")
GUEST_MISSING = HOST_MISSING or PROFILE.access_missing
NUMA_MISSING = PROFILE.numa_missing

needs_kvm = pytest.mark.skipif(HOST_MISSING is not None, reason=str(HOST_MISSING))
needs_gmem = pytest.mark.skipif(GMEM_MISSING is not None, reason=str(GMEM_MISSING))
needs_gmem_mmap = pytest.mark.skipif(MMAP_MISSING is not None, reason=str(MMAP_MISSING))
needs_numa = pytest.mark.skipif(NUMA_MISSING is not None, reason=str(NUMA_MISSING))
needs_guest = pytest.mark.skipif(GUEST_MISSING is not None,
                                 reason=f"no guest can run here: {GUEST_MISSING}")


@pytest.fixture
def model() -> Iterator[ModelKernel]:
    with ModelKernel() as k:
        yield k


@pytest.fixture
def host() -> Iterator[HostKernel]:
    if HOST_MISSING is not None:
        pytest.skip(HOST_MISSING)
    with HostKernel() as k:
        yield k


@pytest.fixture(params=["model", "host"])
def kernel(request: pytest.FixtureRequest) -> Iterator[ModelKernel | HostKernel]:
    """Each test using this runs on both kernels."""
    if request.param == "model":
        with ModelKernel() as k:
            yield k
    else:
        if HOST_MISSING is not None:
            pytest.skip(HOST_MISSING)
        with HostKernel() as h:
            yield h


def guest_memory(k: ModelKernel | HostKernel, vm: int, size: int) -> int:
    """A file that backs guest memory and can be mapped: a guest_memfd (MMAP |
    INIT_SHARED) where the kernel has one that maps, else a memfd of that size."""
    if isinstance(k, ModelKernel) or MMAP_MISSING is None:
        return k.create_guest_memfd(vm, size, uapi.GUEST_MEMFD_FLAG_MMAP
                                    | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    fd = k.memfd_create("guest", 0)
    k.ftruncate(fd, size)
    return fd
