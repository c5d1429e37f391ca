"""Differential testing: the model and the running kernel on the same random operations."""

from .machine import DifferentialMachine, Divergence, make_machine
from .runner import FuzzReport, run_fuzz

__all__ = ["DifferentialMachine", "Divergence", "FuzzReport", "make_machine", "run_fuzz"]
