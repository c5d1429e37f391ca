"""The running kernel behind the one interface."""

from .kernel import HostKernel, host_unavailable

__all__ = ["HostKernel", "host_unavailable"]
