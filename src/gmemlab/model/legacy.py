"""The operation groups not yet composed as components, as one chain."""

from __future__ import annotations

from .inplace import InplaceOps
from .steps import StepOps


class Legacy(StepOps, InplaceOps):
    pass
