"""The process environment gradgate needs, set in one place.

The CLI and the action's entry point call `prepare_process_env()` first thing; the model backends call it
again right before importing litellm or torch (`prepare_torch_env()` before torch), so library use (tests,
benchmarks) gets the same defaults. A variable the user set is never overridden. Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

DEFAULTS: dict[str, str] = {
    # Importing litellm otherwise downloads its price table, and waits on retries when offline.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    # Read when torch is first imported: with OpenMP's default spin-waiting, greedy generation on a busy
    # 2-core machine ran 8x slower (0.8 vs 6 tokens/s measured); passive waiting loses little when idle.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def prepare_process_env(env: MutableMapping[str, str] | None = None) -> None:
    """Set gradgate's defaults in `env` (the process environment by default) where they are unset."""
    target = os.environ if env is None else env
    for name, value in DEFAULTS.items():
        target.setdefault(name, value)


def prepare_torch_env() -> None:
    """Set process-wide threading defaults before torch is first imported (no effect afterwards)."""
    if "torch" not in sys.modules:
        prepare_process_env()
