"""A small VMM on /dev/kvm, standard library only.

* `Vcpu`: one vCPU's kvm_run page, registers, CPUID; `run()` is one
  KVM_RUN decoded into a typed exit, `deadline()` bounds a run in time.
* `modes`: real, protected and long mode through KVM_SET_SREGS, and page
  tables for long mode.
* `asm`: guest programs, assembly source in `guests/`, assembled by GNU as
  at first use.
* `Machine`: a VM with anonymous memory slots, for tools and benchmarks.
"""

from .errors import AssemblerMissing, GuestTimeout, VmmError
from .exits import (
    ExceptionExit,
    Exit,
    FailEntryExit,
    HltExit,
    HypercallExit,
    InternalErrorExit,
    IoExit,
    MemoryFaultExit,
    MmioExit,
    OtherExit,
    ShutdownExit,
    SystemEventExit,
)
from .machine import Machine, Memory
from .regs import DTable, Regs, Segment, Sregs
from .vcpu import Vcpu

__all__ = [
    "AssemblerMissing", "DTable", "ExceptionExit", "Exit", "FailEntryExit", "GuestTimeout",
    "HltExit", "HypercallExit", "InternalErrorExit", "IoExit", "Machine", "Memory",
    "MemoryFaultExit", "MmioExit", "OtherExit", "Regs", "Segment", "ShutdownExit", "Sregs",
    "SystemEventExit", "Vcpu", "VmmError",
]
