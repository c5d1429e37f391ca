"""uAPI numbers against the values the kernel headers give."""

from __future__ import annotations

import errno

import pytest

from gmemlab import uapi


def test_ioctl_numbers() -> None:
    assert uapi.KVM_GET_API_VERSION == 0xAE00
    assert uapi.KVM_CREATE_VM == 0xAE01
    assert uapi.KVM_CHECK_EXTENSION == 0xAE03
    assert uapi.KVM_CREATE_VCPU == 0xAE41
    assert uapi.KVM_RUN == 0xAE80
    assert uapi.KVM_SET_USER_MEMORY_REGION == 1075883590
    assert uapi.KVM_SET_USER_MEMORY_REGION2 == 1084272201
    assert uapi.KVM_ENABLE_CAP == 1080602275
    assert uapi.KVM_SET_MEMORY_ATTRIBUTES == 1075883730
    assert uapi.KVM_CREATE_GUEST_MEMFD == 3225464532
    assert uapi.KVM_PRE_FAULT_MEMORY == 3225464533


def test_struct_sizes() -> None:
    assert uapi.KVM_CREATE_GUEST_MEMFD_STRUCT.size == 64
    assert uapi.KVM_USERSPACE_MEMORY_REGION2_STRUCT.size == 160
    assert uapi.KVM_MEMORY_ATTRIBUTES_STRUCT.size == 32
    assert uapi.KVM_ENABLE_CAP_STRUCT.size == 104


def test_region2_layout() -> None:
    raw = uapi.KVM_USERSPACE_MEMORY_REGION2_STRUCT.pack(1, 4, 0x1000, 0x2000, 0x3000, 0x4000, 7, 0,
                                                        *([0] * 14))
    assert raw[0:4] == (1).to_bytes(4, "little")
    assert raw[32:40] == (0x4000).to_bytes(8, "little")  # guest_memfd_offset at 32
    assert raw[40:44] == (7).to_bytes(4, "little")  # guest_memfd at 40


def test_parse_flags() -> None:
    assert uapi.parse_flags("READ|WRITE", uapi.PROT_NAMES) == 3
    assert uapi.parse_flags("MAP_SHARED|fixed", uapi.MAP_NAMES) == 0x11
    assert uapi.parse_flags("KVM_CAP_GUEST_MEMFD_FLAGS", uapi.CAPS) == 244
    assert uapi.parse_flags("sw_protected", uapi.VM_TYPES) == 1
    assert uapi.parse_flags("KVM_X86_SW_PROTECTED_VM", uapi.VM_TYPES) == 1
    assert uapi.parse_flags("0x10|KEEP_SIZE", uapi.FALLOC_NAMES) == 0x11
    assert uapi.parse_flags(5, uapi.PROT_NAMES) == 5
    with pytest.raises(ValueError, match="unknown name"):
        uapi.parse_flags("READ|BOGUS", uapi.PROT_NAMES)
    with pytest.raises(ValueError):
        uapi.parse_flags(True, uapi.PROT_NAMES)


def test_errno_names() -> None:
    assert uapi.errno_name(95) == "EOPNOTSUPP"
    assert uapi.errno_number("EOPNOTSUPP") == 95 == uapi.errno_number("ENOTSUP")
    assert uapi.errno_number("EINVAL") == errno.EINVAL
    assert uapi.errno_name(uapi.EHWPOISON) == "EHWPOISON"
    with pytest.raises(ValueError):
        uapi.errno_number("EWHATEVER")
