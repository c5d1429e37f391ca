"""Processor modes set up directly through KVM_SET_SREGS, without firmware.

Real mode is the reset state with CS:IP chosen by the caller.  Protected
mode is flat 32-bit without paging.  Long mode needs page tables in guest
memory; `PageTables` builds 4-level tables with 2 MiB pages into a buffer
the caller places in a memslot.  Descriptors for a GDT in guest memory (used
when the guest takes an exception in long mode) are given by `GDT_LONG`.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from .regs import DTable, Segment, Sregs

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

PTE_PRESENT = 1 << 0
PTE_WRITE = 1 << 1
PTE_LARGE = 1 << 7
LARGE_PAGE = 1 << 21

SEL_CODE = 0x08
SEL_DATA = 0x10
# null, 64-bit code (L=1, accessed), data (accessed): the accessed bits are
# preset so that the CPU never writes to the GDT.
GDT_LONG = struct.pack("<3Q", 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)


def real_mode(sregs: Sregs, cs_base: int = 0) -> Sregs:
    """Real mode with CS based at cs_base (a multiple of 16 below 1 MiB)."""
    if cs_base % 16 or cs_base >= 1 << 20:
        raise ValueError("real-mode CS base must be a multiple of 16 below 1 MiB")
    out = replace(sregs, cr0=sregs.cr0 & ~(CR0_PE | CR0_PG), efer=0)
    out.cs = replace(sregs.cs, base=cs_base, selector=cs_base >> 4, limit=0xFFFF, type=11,
                     present=1, dpl=0, db=0, s=1, l=0, g=0)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(out, name, replace(getattr(sregs, name), base=0, selector=0, limit=0xFFFF, type=3,
                                   present=1, dpl=0, db=0, s=1, l=0, g=0))
    return out


def _flat(selector: int, code: bool, long: bool) -> Segment:
    return Segment(base=0, limit=0xFFFFFFFF, selector=selector, type=11 if code else 3, present=1,
                   dpl=0, db=0 if (code and long) else 1, s=1, l=1 if (code and long) else 0, g=1)


def protected_mode(sregs: Sregs) -> Sregs:
    """Flat 32-bit protected mode, paging off."""
    out = replace(sregs, cr0=(sregs.cr0 | CR0_PE) & ~CR0_PG, efer=0)
    out.cs = _flat(SEL_CODE, code=True, long=False)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(out, name, _flat(SEL_DATA, code=False, long=False))
    return out


def long_mode(sregs: Sregs, cr3: int, gdt: DTable | None = None, idt: DTable | None = None) -> Sregs:
    """64-bit mode with the page tables at guest physical cr3."""
    out = replace(sregs, cr3=cr3, cr4=CR4_PAE, efer=EFER_LME | EFER_LMA,
                  cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG)
    out.cs = _flat(SEL_CODE, code=True, long=True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(out, name, _flat(SEL_DATA, code=False, long=True))
    if gdt is not None:
        out.gdt = gdt
    if idt is not None:
        out.idt = idt
    return out


class PageTables:
    """4-level page tables with 2 MiB pages, built in a buffer of 4 KiB tables.

    `base` is the guest physical address the buffer will have; table 0 is
    the PML4.  Tables are allocated as mappings need them, up to `max_tables`.
    """

    def __init__(self, base: int, max_tables: int = 8) -> None:
        if base % 4096:
            raise ValueError("page tables must be page-aligned")
        self.base = base
        self.max_tables = max_tables
        self.buf = bytearray(4096)
        self._children: dict[tuple[int, int], int] = {}  # (table, index) -> table

    @property
    def cr3(self) -> int:
        return self.base

    def _table(self, parent: int, index: int) -> int:
        key = (parent, index)
        if key not in self._children:
            number = len(self.buf) // 4096
            if number >= self.max_tables:
                raise ValueError(f"more than {self.max_tables} page tables needed")
            self.buf += bytes(4096)
            self._children[key] = number
            self._set(parent, index, self.base + number * 4096 | PTE_PRESENT | PTE_WRITE)
        return self._children[key]

    def _set(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.buf, table * 4096 + index * 8, value)

    def map_large(self, virt: int, phys: int, size: int = LARGE_PAGE) -> None:
        """Map [virt, virt+size) to [phys, ...) with writable 2 MiB pages."""
        if virt % LARGE_PAGE or phys % LARGE_PAGE or size % LARGE_PAGE:
            raise ValueError("2 MiB pages need 2 MiB alignment")
        if virt >= 1 << 47:
            raise ValueError("only the lower half of the address space is mapped")
        for off in range(0, size, LARGE_PAGE):
            v = virt + off
            pdpt = self._table(0, (v >> 39) & 511)
            pd = self._table(pdpt, (v >> 30) & 511)
            self._set(pd, (v >> 21) & 511, phys + off | PTE_PRESENT | PTE_WRITE | PTE_LARGE)
