"""The C constants an exported program needs, generated from gmemlab.uapi (and the
guest runner's layout from gmemlab.host.guest), never written by hand.

Each kernel name is defined only where the installed headers predate it, and
asserted equal to gmemlab's number where they do define it: a header that
disagrees fails the build instead of running a different test.
"""

from __future__ import annotations

from .. import uapi
from ..guestaccess import GUEST_ACCESS_LIMIT
from ..host import guest as host_guest
from ..vmm import asm, modes
from .clang import flag_names

VM_TYPE_NAMES = {uapi.KVM_X86_DEFAULT_VM: "KVM_X86_DEFAULT_VM",
                 uapi.KVM_X86_SW_PROTECTED_VM: "KVM_X86_SW_PROTECTED_VM",
                 uapi.KVM_X86_SEV_VM: "KVM_X86_SEV_VM", uapi.KVM_X86_SEV_ES_VM: "KVM_X86_SEV_ES_VM",
                 uapi.KVM_X86_SNP_VM: "KVM_X86_SNP_VM", uapi.KVM_X86_TDX_VM: "KVM_X86_TDX_VM"}

IOCTLS = ("KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
          "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
          "KVM_SET_USER_MEMORY_REGION2", "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS",
          "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_SET_SIGNAL_MASK", "KVM_SET_CPUID2",
          "KVM_ENABLE_CAP", "KVM_SET_MEMORY_ATTRIBUTES", "KVM_CREATE_GUEST_MEMFD",
          "KVM_SET_MEMORY_ATTRIBUTES2")
EXITS = ("KVM_EXIT_IO", "KVM_EXIT_MMIO", "KVM_EXIT_MEMORY_FAULT", "KVM_EXIT_IO_OUT",
         "KVM_MEMORY_EXIT_FLAG_PRIVATE")


def kernel_names() -> dict[str, int]:
    """Every kernel name an export uses, with gmemlab's value for it."""
    names: dict[str, int] = {name: getattr(uapi, name) for name in IOCTLS + EXITS}
    names.update({f"KVM_CAP_{cap}": number for cap, number in uapi.CAPS.items()})
    names.update(flag_names())
    names.update({name: number for number, name in VM_TYPE_NAMES.items()})
    names["EHWPOISON"] = uapi.EHWPOISON
    names["GUEST_MEMFD_MAGIC"] = uapi.GUEST_MEMFD_MAGIC
    return names


def _literal(value: int) -> str:
    return f"{value:#x}UL" if value > 0xFFFF else str(value)


def constants_block() -> str:
    """#ifndef/#define/_Static_assert for every kernel name, and gmemlab's own numbers."""
    lines = ["/* uAPI numbers from gmemlab.uapi (x86-64): defined where the installed headers",
             " * predate them, checked against them where they do not. */"]
    for name, value in kernel_names().items():
        lit = _literal(value)
        lines += [f"#ifndef {name}", f"#define {name} {lit}", "#endif",
                  f'_Static_assert({name} == {lit}, "the installed headers disagree with '
                  f'gmemlab about {name}");']
    own = {
        "GL_KVM_API_VERSION": uapi.KVM_API_VERSION,
        "GL_KVM_RUN_EXIT_OFFSET": uapi.KVM_RUN_EXIT_OFFSET,
        "GL_KVM_USER_MEM_SLOTS": uapi.KVM_USER_MEM_SLOTS,
        "GL_KVM_MAX_CPUID_ENTRIES": uapi.KVM_MAX_CPUID_ENTRIES,
        "GL_SIZEOF_KVM_CREATE_GUEST_MEMFD": uapi.KVM_CREATE_GUEST_MEMFD_STRUCT.size,
        "GL_SIZEOF_KVM_USERSPACE_MEMORY_REGION": uapi.KVM_USERSPACE_MEMORY_REGION_STRUCT.size,
        "GL_SIZEOF_KVM_USERSPACE_MEMORY_REGION2": uapi.KVM_USERSPACE_MEMORY_REGION2_STRUCT.size,
        "GL_SIZEOF_KVM_MEMORY_ATTRIBUTES": uapi.KVM_MEMORY_ATTRIBUTES_STRUCT.size,
        "GL_SIZEOF_KVM_MEMORY_ATTRIBUTES2": uapi.KVM_MEMORY_ATTRIBUTES2_STRUCT.size,
        "GL_MPOL_MF_VALID": uapi.MPOL_MF_VALID,
        "GL_SIZEOF_KVM_ENABLE_CAP": uapi.KVM_ENABLE_CAP_STRUCT.size,
        "GL_SIZEOF_KVM_REGS": uapi.KVM_REGS_STRUCT.size,
        "GL_SIZEOF_KVM_SREGS": uapi.KVM_SREGS_SIZE,
    }
    lines += [f"#define {name} {_literal(value)}" for name, value in own.items()]
    return "\n".join(lines) + "\n"


def guest_block() -> str:
    """The access program's bytes and symbols, and the runner's layout (gmemlab.host.guest)."""
    program = asm.load("access")
    g = host_guest
    layout = {
        "GL_RUNNER_SIZE": g.RUNNER_SIZE, "GL_RUNNER_TABLES": g.TABLES, "GL_RUNNER_GDT": g.GDT,
        "GL_RUNNER_IDT": g.IDT, "GL_RUNNER_STACK_TOP": g.STACK_TOP, "GL_RUNNER_CODE": g.CODE,
        "GL_RUNNER_BUFFER": g.BUFFER, "GL_VA_RUNNER": g.VA_RUNNER, "GL_VA_WINDOW": g.VA_WINDOW,
        "GL_LARGE_PAGE": modes.LARGE_PAGE, "GL_MAX_TABLES": 8,
        "GL_SEL_CODE": modes.SEL_CODE, "GL_SEL_DATA": modes.SEL_DATA,
        "GL_CR4_PAE": modes.CR4_PAE, "GL_EFER_LME": modes.EFER_LME, "GL_EFER_LMA": modes.EFER_LMA,
        "GL_CR0_LONG": (modes.CR0_PE | modes.CR0_MP | modes.CR0_ET | modes.CR0_NE | modes.CR0_WP
                        | modes.CR0_AM | modes.CR0_PG),
        "GL_PTE_PRESENT": modes.PTE_PRESENT, "GL_PTE_WRITE": modes.PTE_WRITE,
        "GL_PTE_LARGE": modes.PTE_LARGE, "GL_GUEST_ACCESS_LIMIT": GUEST_ACCESS_LIMIT,
    }
    lines = ["/* gmemlab's guest access program (vmm/guests/access.s, assembled by GNU as)",
             " * and the layout of its memory (gmemlab.host.guest). */",
             "#define GL_HAVE_GUEST 1",
             f"#define GL_GUEST_TIMEOUT {g.TIMEOUT!r}"]
    lines += [f"#define {name} {value:#x}ULL" for name, value in layout.items()]
    for symbol in ("access", "vectors", "vectors_end", "VECTOR_STUB_SIZE", "DONE_PORT",
                   "FAULT_PORT"):
        lines.append(f"#define GL_SYM_{symbol} {program[symbol]:#x}")
    lines.append("static const unsigned char gl_gdt_long[] = {"
                 + ", ".join(f"{b:#04x}" for b in modes.GDT_LONG) + "};")
    lines.append("static const unsigned char gl_access_code[] = {")
    code = program.code
    for at in range(0, len(code), 12):
        lines.append("\t" + ", ".join(f"{b:#04x}" for b in code[at:at + 12]) + ",")
    lines.append("};")
    return "\n".join(lines) + "\n"
