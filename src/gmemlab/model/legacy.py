"""The operation groups not yet composed as components, as one chain."""

from __future__ import annotations

from .inplace import InplaceOps
from .mempolicy import MempolicyOps
from .observe import ObserveOps
from .vfs import VfsOps


class Legacy(ObserveOps, InplaceOps, MempolicyOps, VfsOps):
    pass
