"""NUMA memory policy: mbind, get_mempolicy and set_mempolicy (mm/mempolicy.c).

The model's machine has one NUMA node, node 0, with memory: the nodes with
memory and the task's allowed nodes are both {0}, nr_node_ids is 1 and
MAX_NUMNODES 1024 (CONFIG_NODES_SHIFT=10, as distribution kernels for
x86-64 are built).  Where pages lie is not modelled, so the calls that
report or move pages (mbind's MPOL_MF_* flags, get_mempolicy's MPOL_F_NODE)
are refused on both kernels (interface._refuse); everything else is the
kernel's, check by check.

A policy lives where the kernel keeps it:

* on a VMA (``Mapping.policy``, vma->vm_policy).  mbind changes it as any VMA
  property changes, splitting and merging VMAs (mbind_range).
* on a file's pages (``Inode.policy``, a shared policy over page indexes) when
  the mapping's vm_ops have set_policy/get_policy: shmem (memfd, shared
  anonymous memory) on every kernel, guest_memfd from Linux 6.19
  (``KvmPolicy.mempolicy``).  mbind then also stores the policy for the
  file pages of the VMA it changed, after any merge (vma_replace_policy
  calls set_policy on the resulting VMA), and get_mempolicy(MPOL_F_ADDR)
  reads the file's policy at that page and never the VMA's.  mbind_range
  skips a VMA whose own policy already equals the new one, so the file's
  pages under it keep what another mapping set there: exactly the kernel's
  quirk.  The file's policy outlives every mapping and hole punch; it goes
  with the inode.
* on the task (``State.task_policy``): set_mempolicy, and get_mempolicy
  without MPOL_F_ADDR.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import replace

from .. import uapi
from ..errors import kernel_error
from ..interface import Mempolicy
from ..rangemap import RangeMap
from .core import Component
from .mm import AddressSpace, page_align
from .pages import PAGE_INDEX_LIMIT
from .policies import PolicyHome
from .state import TASK_SIZE, Inode, Mapping, Policy

P = uapi.PAGE_SIZE
SHIFT = uapi.PAGE_SHIFT
U64 = (1 << 64) - 1
MEMORY_NODES = 0b1  # node 0: the nodes with memory, and those the task may use
NR_NODE_IDS = 1
MAX_NUMNODES = 1024
USER_NODEMASK = uapi.MPOL_F_STATIC_NODES | uapi.MPOL_F_RELATIVE_NODES
# mpol_store_user_nodemask tests every mode flag, NUMA balancing included: such
# a policy reports the nodes as the caller gave them, not those it can use.
MODE_FLAGS = USER_NODEMASK | uapi.MPOL_F_NUMA_BALANCING
# Modes whose policy keeps a node set (get_policy_nodemask reports it).
NODE_MODES = frozenset({uapi.MPOL_BIND, uapi.MPOL_INTERLEAVE, uapi.MPOL_PREFERRED,
                        uapi.MPOL_PREFERRED_MANY, uapi.MPOL_WEIGHTED_INTERLEAVE})


def get_nodes(nodemask: Sequence[int], maxnode: int) -> int:
    """The node set a caller passes (get_nodes): maxnode - 1 bits of the words."""
    bits = (maxnode - 1) & U64
    if bits == 0 or not nodemask:
        return 0
    if bits > P * 8:
        raise kernel_error(errno.EINVAL, f"maxnode {maxnode} is more than a page of bits")
    words = (bits + 63) // 64
    value = sum(w << (64 * i) for i, w in enumerate(nodemask[:words])) & ((1 << bits) - 1)
    if value >> MAX_NUMNODES:
        raise kernel_error(errno.EINVAL, f"a node at or beyond MAX_NUMNODES ({MAX_NUMNODES})")
    return value


def relative_nodes(orig: int, rel: int) -> int:
    """mpol_relative_nodemask: fold orig onto the weight of rel, then onto rel's nodes."""
    targets = [n for n in range(rel.bit_length()) if rel >> n & 1]
    folded = {n % len(targets) for n in range(orig.bit_length()) if orig >> n & 1}
    return sum(1 << targets[i] for i in folded)


class MemoryPolicy(Component):
    """mbind, get_mempolicy and set_mempolicy over the host address space."""

    mm: AddressSpace

    def connect(self, mm: AddressSpace) -> None:
        self.mm = mm

    # --- building a policy ------------------------------------------------------------

    def _mpol_sanitize(self, mode: int) -> tuple[int, int]:
        """sanitize_mpol_flags: (mode, mode flags) or EINVAL."""
        flags = mode & uapi.MPOL_MODE_FLAGS
        mode = (mode & ~uapi.MPOL_MODE_FLAGS) & 0xFFFFFFFF
        if mode >= self.design.kvm.mpol_max:
            raise kernel_error(errno.EINVAL, f"mode {mode} is not a memory-policy mode")
        if flags & USER_NODEMASK == USER_NODEMASK:
            raise kernel_error(errno.EINVAL, "MPOL_F_STATIC_NODES with MPOL_F_RELATIVE_NODES")
        if flags & uapi.MPOL_F_NUMA_BALANCING and \
                mode not in (uapi.MPOL_BIND, uapi.MPOL_PREFERRED_MANY):
            raise kernel_error(errno.EINVAL, "MPOL_F_NUMA_BALANCING needs MPOL_BIND or "
                               "MPOL_PREFERRED_MANY")
        return mode, flags

    def _mpol_new(self, mode: int, flags: int, nodes: int) -> Policy | None:
        """mpol_new then mpol_set_nodemask: the policy (None for MPOL_DEFAULT) or EINVAL."""
        if mode == uapi.MPOL_DEFAULT:
            if nodes:
                raise kernel_error(errno.EINVAL, "MPOL_DEFAULT takes no nodes")
            return None
        if mode == uapi.MPOL_PREFERRED and not nodes:
            if flags & USER_NODEMASK:
                raise kernel_error(errno.EINVAL, "an empty MPOL_PREFERRED with a node flag")
            mode = uapi.MPOL_LOCAL
        elif mode == uapi.MPOL_LOCAL:
            if nodes or flags & USER_NODEMASK:
                raise kernel_error(errno.EINVAL, "MPOL_LOCAL takes no nodes")
        elif not nodes:
            raise kernel_error(errno.EINVAL, "an empty node set")
        if mode == uapi.MPOL_LOCAL:
            return Policy(mode, flags)
        if flags & uapi.MPOL_F_RELATIVE_NODES:
            usable = relative_nodes(nodes, MEMORY_NODES)
        else:
            usable = nodes & MEMORY_NODES
        if not usable:
            raise kernel_error(errno.EINVAL, "none of the nodes has memory")
        if mode == uapi.MPOL_PREFERRED:
            usable &= -usable  # the first node
        return Policy(mode, flags, usable, nodes if flags & MODE_FLAGS else 0)

    # --- where a mapping's policy lives ----------------------------------------------------

    def _policy_inode(self, m: Mapping) -> Inode | None:
        """The file whose shared policy a mapping's get/set_policy use, if any."""
        if m.file is None:
            return None
        f = self.state.files[m.file]
        on_file = self.design.kvm.mempolicy is PolicyHome.FILE
        if f.kind in ("memfd", "shmem") or (f.kind == "gmem" and on_file):
            return self.state.inodes[f.inode]
        return None

    def _policy_at(self, vpage: int, m: Mapping) -> Policy | None:
        """__get_vma_policy: the file's policy at the page, else the VMA's."""
        inode = self._policy_inode(m)
        if inode is None:
            return m.policy
        return inode.policy[vpage + m.delta] if inode.policy is not None else None

    # --- the system calls ------------------------------------------------------------------

    def mbind(self, addr: int, len: int, mode: int, nodemask: Sequence[int] = (),
              maxnode: int = 0, flags: int = 0) -> int:
        mode, mode_flags = self._mpol_sanitize(mode)
        nodes = get_nodes(nodemask, maxnode)
        if flags & ~uapi.MPOL_MF_VALID:
            raise kernel_error(errno.EINVAL, f"unknown mbind flags {flags:#x}")
        if addr & (P - 1):
            raise kernel_error(errno.EINVAL, "address not page-aligned")
        end = addr + page_align(len)
        if end > U64:
            raise kernel_error(errno.EINVAL, "range wraps")
        if end == addr:
            return 0
        new = self._mpol_new(mode, mode_flags, nodes)
        first = addr >> SHIFT
        last = min(end >> SHIFT, self.state.vmas.limit)
        if addr >= TASK_SIZE or not self.mm.mapping_runs(first, last):
            raise kernel_error(errno.EFAULT, "no mapping in the range")
        hole = (end >> SHIFT) > last or \
            self.state.vmas.find(first, last, lambda m: m is None) is not None
        if new is not None and hole:
            # Only MPOL_DEFAULT may cover holes (MPOL_MF_DISCONTIG_OK).
            raise kernel_error(errno.EFAULT, "the range has unmapped pages")
        pos = first
        while pos < last:
            vma = self.mm.vma_of(pos)
            if vma is None:
                nxt = self.state.vmas.find(pos, last, lambda m: m is not None)
                if nxt is None:
                    break
                pos = nxt
                continue
            s, e, m = vma
            stop = min(e, last)
            if m.policy != new:  # mpol_equal(vma->vm_policy, new): nothing to do
                self.mm.modify(s, e, pos, stop, replace(m, policy=new, tag=0))
                ms, me, merged = self.state.vmas.run_at(pos)
                assert merged is not None
                self._set_shared_policy(merged, ms, me, new)
            pos = stop
        return 0

    def _set_shared_policy(self, m: Mapping, first: int, last: int, new: Policy | None) -> None:
        """vm_ops->set_policy of the VMA [first, last): mpol_set_shared_policy."""
        inode = self._policy_inode(m)
        if inode is None:
            return
        if inode.policy is None:
            if new is None:
                return
            inode.policy = RangeMap(None, PAGE_INDEX_LIMIT)
        inode.policy.set(first + m.delta, last + m.delta, new)

    def get_mempolicy(self, maxnode: int = 64, addr: int = 0, flags: int = 0) -> Mempolicy:
        if maxnode and maxnode < NR_NODE_IDS:
            raise kernel_error(errno.EINVAL, f"maxnode {maxnode} < nr_node_ids {NR_NODE_IDS}")
        if flags & ~(uapi.MPOL_F_NODE | uapi.MPOL_F_ADDR | uapi.MPOL_F_MEMS_ALLOWED):
            raise kernel_error(errno.EINVAL, f"unknown get_mempolicy flags {flags:#x}")
        if flags & uapi.MPOL_F_MEMS_ALLOWED:
            if flags & (uapi.MPOL_F_NODE | uapi.MPOL_F_ADDR):
                raise kernel_error(errno.EINVAL, "MPOL_F_MEMS_ALLOWED stands alone")
            return Mempolicy(0, self._nodes_to_user(MEMORY_NODES, maxnode))
        if flags & uapi.MPOL_F_ADDR:
            vma = self.mm.vma_of(addr >> SHIFT) if addr < TASK_SIZE else None
            if vma is None:
                raise kernel_error(errno.EFAULT, f"no mapping at {addr:#x}")
            policy = self._policy_at(addr >> SHIFT, vma[2])
        elif addr:
            raise kernel_error(errno.EINVAL, "an address without MPOL_F_ADDR")
        else:
            policy = self.state.task_policy
        if policy is None:
            return Mempolicy(uapi.MPOL_DEFAULT, self._nodes_to_user(0, maxnode))
        if policy.flags & MODE_FLAGS:
            nodes = policy.user_nodes
        else:
            nodes = policy.nodes if policy.mode in NODE_MODES else 0
        return Mempolicy(policy.mode | policy.flags, self._nodes_to_user(nodes, maxnode))

    def _nodes_to_user(self, nodes: int, maxnode: int) -> tuple[int, ...]:
        """copy_nodes_to_user: the words a caller's array of maxnode bits receives."""
        if maxnode == 0:
            return ()  # a NULL mask
        words = (maxnode - 1 + 63) // 64
        if words > 1 and words * 8 > P:
            raise kernel_error(errno.EINVAL, f"maxnode {maxnode} is more than a page of bits")
        kept = (NR_NODE_IDS + 63) // 64
        return tuple((nodes >> (64 * i)) & U64 if i < kept else 0 for i in range(words))

    def set_mempolicy(self, mode: int, nodemask: Sequence[int] = (), maxnode: int = 0) -> int:
        mode, mode_flags = self._mpol_sanitize(mode)
        nodes = get_nodes(nodemask, maxnode)
        self.state.task_policy = self._mpol_new(mode, mode_flags, nodes)
        return 0
