"""Shared fixtures: kernels, and a skip with the reason when /dev/kvm is missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gmemlab.host import HostKernel, host_unavailable
from gmemlab.model import ModelKernel

HOST_MISSING = host_unavailable()
needs_kvm = pytest.mark.skipif(HOST_MISSING is not None, reason=f"no usable /dev/kvm: {HOST_MISSING}")


@pytest.fixture
def model() -> Iterator[ModelKernel]:
    with ModelKernel() as k:
        yield k


@pytest.fixture
def host() -> Iterator[HostKernel]:
    if HOST_MISSING is not None:
        pytest.skip(f"no usable /dev/kvm: {HOST_MISSING}")
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
            pytest.skip(f"no usable /dev/kvm: {HOST_MISSING}")
        with HostKernel() as h:
            yield h
