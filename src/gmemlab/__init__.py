"""gmemlab: restricted guest memory on Linux/KVM, modelled exactly and checked
against the running kernel."""

from .errors import MemorySignal, UsageError
from .interface import GuestAccess, Kernel, Stat

__version__ = "0.1.0"

__all__ = ["GuestAccess", "Kernel", "MemorySignal", "Stat", "UsageError", "__version__"]
