"""struct kvm_regs and struct kvm_sregs as Python values (layouts in gmemlab.uapi)."""

from __future__ import annotations

from dataclasses import astuple, dataclass, field, fields

from .. import uapi


@dataclass
class Regs:
    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0x2  # bit 1 is always set

    def pack(self) -> bytearray:
        return bytearray(uapi.KVM_REGS_STRUCT.pack(*(v & (1 << 64) - 1 for v in astuple(self))))

    @classmethod
    def unpack(cls, raw: bytes | bytearray) -> Regs:
        return cls(*uapi.KVM_REGS_STRUCT.unpack(raw))


assert tuple(f.name for f in fields(Regs)) == uapi.KVM_REGS_FIELDS


@dataclass
class Segment:
    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 0
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 (the kernel's field name)
    g: int = 0
    avl: int = 0
    unusable: int = 0
    padding: int = 0


assert tuple(f.name for f in fields(Segment)) == uapi.KVM_SEGMENT_FIELDS


@dataclass
class DTable:
    base: int = 0
    limit: int = 0xFFFF


@dataclass
class Sregs:
    cs: Segment = field(default_factory=Segment)
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    ldt: Segment = field(default_factory=Segment)
    gdt: DTable = field(default_factory=DTable)
    idt: DTable = field(default_factory=DTable)
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0
    interrupt_bitmap: tuple[int, int, int, int] = (0, 0, 0, 0)

    def pack(self) -> bytearray:
        out = bytearray()
        for name in uapi.KVM_SREGS_SEGMENTS:
            out += uapi.KVM_SEGMENT_STRUCT.pack(*astuple(getattr(self, name)))
        for name in uapi.KVM_SREGS_DTABLES:
            table: DTable = getattr(self, name)
            out += uapi.KVM_DTABLE_STRUCT.pack(table.base, table.limit)
        out += uapi.KVM_SREGS_CONTROL_STRUCT.pack(*(getattr(self, n) for n in uapi.KVM_SREGS_CONTROL))
        out += b"".join(w.to_bytes(8, "little") for w in self.interrupt_bitmap)
        assert len(out) == uapi.KVM_SREGS_SIZE
        return out

    @classmethod
    def unpack(cls, raw: bytes | bytearray) -> Sregs:
        seg = uapi.KVM_SEGMENT_STRUCT
        segments = {name: Segment(*seg.unpack_from(raw, i * seg.size))
                    for i, name in enumerate(uapi.KVM_SREGS_SEGMENTS)}
        dt = uapi.KVM_DTABLE_STRUCT
        tables = {name: DTable(*dt.unpack_from(raw, uapi.KVM_SREGS_DTABLE_OFFSET + i * dt.size))
                  for i, name in enumerate(uapi.KVM_SREGS_DTABLES)}
        control = dict(zip(uapi.KVM_SREGS_CONTROL,
                           uapi.KVM_SREGS_CONTROL_STRUCT.unpack_from(raw, uapi.KVM_SREGS_CONTROL_OFFSET),
                           strict=True))
        end = uapi.KVM_SREGS_CONTROL_OFFSET + uapi.KVM_SREGS_CONTROL_STRUCT.size
        bitmap = tuple(int.from_bytes(raw[end + 8 * i:end + 8 * i + 8], "little") for i in range(4))
        return cls(**segments, **tables, **control,  # type: ignore[arg-type]
                   interrupt_bitmap=bitmap)  # type: ignore[arg-type]
