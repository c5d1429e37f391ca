"""The vCPU run loop on its own: modes, typed exits, deadlines, guest programs."""

from __future__ import annotations

import errno
import struct
import threading
import time

import pytest

from gmemlab.vmm import (
    GuestTimeout,
    HltExit,
    IoExit,
    Machine,
    Memory,
    MmioExit,
    Regs,
    Vcpu,
    VmmError,
    asm,
    modes,
)
from gmemlab.vmm.regs import Sregs
from gmemlab.vmm.timer import RUN_SIGNAL, drain

from .conftest import needs_kvm

needs_as = pytest.mark.skipif(asm.missing_reason() is not None, reason=str(asm.missing_reason()))

OUT_AL_DX = b"\xee"
HLT = b"\xf4"
JMP_SELF = b"\xeb\xfe"


def test_sregs_round_trip() -> None:
    s = Sregs()
    s.cs.selector, s.cr3, s.efer = 0x10, 0x1234000, 0xD01
    s.gdt.base, s.interrupt_bitmap = 0xFFFF0000, (1, 2, 3, 4)
    assert Sregs.unpack(s.pack()) == s
    r = Regs(rax=1, r15=-1 & 0xFFFF_FFFF_FFFF_FFFF, rip=0x1000)
    assert Regs.unpack(r.pack()) == r


def test_page_tables_map_large_pages() -> None:
    pt = modes.PageTables(0x200000)
    pt.map_large(0x40000000, 0xC0000000, 2 << 21)
    pml4 = struct.unpack_from("<Q", pt.buf, 0)[0]
    assert pml4 & ~0xFFF == 0x201000 and pml4 & 3 == 3
    pdpt_entry = struct.unpack_from("<Q", pt.buf, 4096 + 8)[0]  # VA 1 GiB: PDPT index 1
    pd = (pdpt_entry & ~0xFFF) - 0x200000
    assert struct.unpack_from("<2Q", pt.buf, pd) == (0xC0000000 | 0x83, 0xC0200000 | 0x83)
    with pytest.raises(ValueError):
        pt.map_large(0x1000, 0)


@needs_as
def test_program_symbols_come_from_the_source() -> None:
    prog = asm.load("access")
    assert prog.code and prog["access"] == 0
    assert prog["DONE_PORT"] == 0x0FF0 and prog["FAULT_PORT"] == 0x0FF1
    assert prog["vectors"] % prog["VECTOR_STUB_SIZE"] == 0
    with pytest.raises(VmmError, match="no symbol"):
        prog["nonexistent"]


@needs_as
def test_relocations_are_refused() -> None:
    text = "        .text\n        .code64\nhere:\n        .quad here\n"
    obj = asm._assemble(str(asm.assembler()), "reloc", text)
    with pytest.raises(VmmError, match="relocations"):
        asm.parse_object(obj, "reloc")


def _real_mode(m: Machine, code: bytes) -> tuple[Memory, Vcpu]:
    mem = m.add_memory(0, 0x10000)
    mem.write(0x1000, code)
    cpu = m.create_vcpu()
    cpu.set_sregs(modes.real_mode(cpu.get_sregs(), 0))
    cpu.set_regs(Regs(rip=0x1000, rdx=0x42, rax=0x99))
    return mem, cpu


@needs_kvm
@needs_as
def test_real_mode_out_loop_exits() -> None:
    prog = asm.load("outloop")
    with Machine() as m:
        mem = m.add_memory(0, 0x10000)
        mem.write(0, prog.code)
        cpu = m.create_vcpu()
        cpu.set_sregs(modes.real_mode(cpu.get_sregs(), 0))
        cpu.set_regs(Regs(rip=prog["start"]))
        for i in range(1, 4):
            exit = cpu.run_for(5)
            assert isinstance(exit, IoExit) and exit.out
            assert (exit.port, exit.size, exit.count, exit.value) == (prog["OUT_PORT"], 2, 1, i)


@needs_kvm
def test_hlt_and_registers() -> None:
    with Machine() as m:
        _, cpu = _real_mode(m, b"\x40" + HLT)  # inc %ax; hlt
        assert isinstance(cpu.run_for(5), HltExit)
        assert cpu.get_regs().rax & 0xFFFF == 0x9A


@needs_kvm
def test_mmio_exit_and_completion() -> None:
    with Machine() as m:
        # mov 0x8000(%bx), %al with bx = 0 in a 64 KiB slot at 0: 0x8000 is
        # inside; the data segment base moves it outside every slot.
        mem = m.add_memory(0, 0x10000)
        mem.write(0x1000, b"\x8a\x87\x00\x80" + OUT_AL_DX + HLT)
        cpu = m.create_vcpu()
        sregs = modes.real_mode(cpu.get_sregs(), 0)
        sregs.ds.base = 0x20000
        cpu.set_sregs(sregs)
        cpu.set_regs(Regs(rip=0x1000, rdx=0x42))
        exit = cpu.run_for(5)
        assert isinstance(exit, MmioExit)
        assert (exit.gpa, exit.length, exit.write) == (0x28000, 1, False)
        cpu.complete_pending()  # the load finishes without running the guest
        assert cpu.get_regs().rip == 0x1004
        exit = cpu.run_for(5)
        assert isinstance(exit, IoExit) and exit.port == 0x42


@needs_kvm
def test_a_guest_that_never_exits_times_out() -> None:
    with Machine() as m:
        _, cpu = _real_mode(m, JMP_SELF)
        start = time.monotonic()
        with pytest.raises(GuestTimeout) as info:
            cpu.run_for(0.2)
        assert 0.2 <= time.monotonic() - start < 2
        assert info.value.rip == 0x1000
        assert not drain()  # the timer's signal was consumed
        with pytest.raises(GuestTimeout):  # and the vCPU still runs
            cpu.run_for(0.05)


@needs_kvm
def test_timeout_in_another_thread() -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with Machine() as m:
                _, cpu = _real_mode(m, JMP_SELF)
                cpu.run_for(0.1)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], GuestTimeout)


@needs_kvm
def test_deadline_spans_many_exits() -> None:
    with Machine() as m:
        _, cpu = _real_mode(m, OUT_AL_DX + b"\xeb\xfd")  # out; jmp back
        n = 0
        with pytest.raises(GuestTimeout), cpu.deadline(0.2):
            while True:
                cpu.run()
                n += 1
        assert n > 100


@needs_kvm
@needs_as
def test_long_mode_guest_reaches_high_memory() -> None:
    with Machine() as m:
        high = 1 << 40
        low = m.add_memory(0x200000, 0x200000)
        data = m.add_memory(high, 0x200000)
        tables = modes.PageTables(0x200000)
        tables.map_large(0x200000, 0x200000)
        tables.map_large(0x40000000, high)
        low.write(0, bytes(tables.buf))
        # movabs $0x40000010, %rdi; movl $0x12345678, (%rdi); hlt
        low.write(0x10000, b"\x48\xbf" + (0x40000010).to_bytes(8, "little")
                  + b"\xc7\x07\x78\x56\x34\x12" + HLT)
        cpu = m.create_vcpu()
        cpu.set_sregs(modes.long_mode(cpu.get_sregs(), tables.cr3))
        cpu.set_regs(Regs(rip=0x210000))
        assert isinstance(cpu.run_for(5), HltExit)
        assert data.read(0x10, 4) == bytes.fromhex("78563412")


@needs_kvm
def test_protected_mode() -> None:
    with Machine() as m:
        mem = m.add_memory(0, 0x10000)
        mem.write(0x1000, b"\xb8\x11\x22\x33\x44" + b"\xef" + HLT)  # mov $0x44332211,%eax; out %eax,%dx
        cpu = m.create_vcpu()
        cpu.set_sregs(modes.protected_mode(cpu.get_sregs()))
        cpu.set_regs(Regs(rip=0x1000, rdx=0x80))
        exit = cpu.run_for(5)
        assert isinstance(exit, IoExit) and (exit.size, exit.value) == (4, 0x44332211)


@needs_kvm
def test_kvm_run_errors_are_oserror() -> None:
    with Machine() as m:
        cpu = m.create_vcpu()
        cpu.close()
        assert cpu.closed
        with pytest.raises(OSError) as err:
            cpu.get_regs()
        assert err.value.errno == errno.EBADF


def test_run_signal_is_realtime() -> None:
    import signal
    assert signal.SIGRTMIN <= RUN_SIGNAL <= signal.SIGRTMAX
