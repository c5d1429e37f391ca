"""The executable model: one core, designs as policies over it."""

from .designs import DESIGNS, Design
from .kernel import ModelKernel

__all__ = ["DESIGNS", "Design", "ModelKernel"]
