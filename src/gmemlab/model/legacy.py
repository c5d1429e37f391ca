"""The operation groups not yet composed as components, as one chain."""

from __future__ import annotations

from .inplace import InplaceOps
from .mempolicy import MempolicyOps
from .steps import StepOps
from .vfs import VfsOps


class Legacy(StepOps, InplaceOps, MempolicyOps, VfsOps):
    pass
