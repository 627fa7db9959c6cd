"""The one list of optimization methods: the CLI's choices, the action's input check and the runner read it.

Classes are imported when asked for: GReaTer pulls in torch, which `check` and `eval` never need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gradgate.errors import UsageError

if TYPE_CHECKING:
    from gradgate.optimizers.base import Optimizer

# name -> "module:Class", in the order the CLI lists them
METHODS: dict[str, str] = {
    "gradsum": "gradgate.optimizers.gradsum.method:GradSum",
    "gpo": "gradgate.optimizers.gpo.method:GPO",
    "greater": "gradgate.optimizers.greater.method:Greater",
    "demos": "gradgate.optimizers.demos.method:Demos",
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
# Extra a method needs beyond the base install, named in the error when its import fails.
NEEDS_EXTRA = {"greater": "GReaTer needs torch and transformers: pip install 'gradgate[local]'"}


_REGISTERED: dict[str, type[Optimizer]] = {}


def register(cls: type[Optimizer]) -> type[Optimizer]:
    """Make `cls` (an Optimizer subclass) available under `cls.name` in this process (plug-ins, examples).
    The shipped methods are listed in METHODS instead, so the CLI and the action know them without importing."""
    _REGISTERED[cls.name] = cls
    return cls


def method_class(name: str) -> type[Optimizer]:
    """The optimizer class for a method name; UsageError naming the known ones otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in METHODS:
        raise UsageError(f"unknown optimization method {name!r}", hint=f"known: {', '.join(METHOD_NAMES)}")
    module, _, cls = METHODS[name].partition(":")
    try:
        found: type[Optimizer] = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise UsageError(f"method {name!r} cannot be loaded: {exc}", hint=NEEDS_EXTRA.get(name, "reinstall gradgate")) from None
    return found
