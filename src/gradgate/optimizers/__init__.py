"""Prompt optimizers. All share one interface (`base.Optimizer`), one budget, one trajectory format
and one report; `registry.method_class(name)` maps a method name to its class."""

from __future__ import annotations

from gradgate.optimizers.base import Candidate, GradientNote, OptimizeContext, Optimizer, Trajectory
from gradgate.optimizers.registry import METHOD_NAMES, method_class

__all__ = ["METHOD_NAMES", "Candidate", "GradientNote", "OptimizeContext", "Optimizer", "Trajectory", "method_class"]
