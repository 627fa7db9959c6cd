"""Prompt optimizers. All share one interface (`base.Optimizer`), one budget, one trajectory format
and one report; `registry()` maps a method name to its class."""

from __future__ import annotations

from gradgate.optimizers.base import Optimizer


def registry() -> dict[str, type[Optimizer]]:
    # Imported lazily: GReaTer pulls in torch, which `check` and `eval` never need.
    from gradgate.optimizers.gpo.method import GPO
    from gradgate.optimizers.gradsum.method import GradSum

    methods: dict[str, type[Optimizer]] = {GradSum.name: GradSum, GPO.name: GPO}
    try:
        from gradgate.optimizers.greater.method import Greater
    except ImportError:  # torch missing: the method says so when chosen
        pass
    else:
        methods[Greater.name] = Greater
    return methods


METHODS = ("gradsum", "gpo", "greater")
