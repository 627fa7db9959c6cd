"""From command-line options to the configuration and the `Session` a job runs with.

    session = open_session(repo, None, env=os.environ, models={"task": "--model value or None"},
                           budget=BudgetOverride(calls=40))

The order is the documented one: gradgate.yaml (or `--config`), then the `GRADGATE_*` environment overrides the
action passes, then the `--model` flags, then the command-line budget, key by key. `check` reads its
configuration from the head tree instead of a file, and applies the same overrides with `effective_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gradgate.core.budget import resolve_budget
from gradgate.core.config import Config, apply_env_overrides, load_config, override_models
from gradgate.models.session import Session


@dataclass(frozen=True)
class BudgetOverride:
    """The `--budget-*` options; None leaves the config's limit as it is."""

    calls: int | None = None
    tokens: int | None = None
    usd: float | None = None
    seconds: float | None = None


def effective_config(
    config: Config, env: Mapping[str, str], models: Mapping[str, str | None], budget: BudgetOverride | None = None
) -> Config:
    """`config` with the environment's overrides, then the command line's models (role → model) and budget."""
    config = override_models(apply_env_overrides(config, dict(env)), **models)
    if budget is None:
        return config
    limits = resolve_budget(config.budget, calls=budget.calls, tokens=budget.tokens, usd=budget.usd, seconds=budget.seconds)
    return config.model_copy(update={"budget": limits})


def open_session(
    repo: Path,
    config_path: Path | None,
    *,
    env: Mapping[str, str],
    models: Mapping[str, str | None],
    budget: BudgetOverride | None = None,
    use_cache: bool = True,
) -> Session:
    """The repository's configuration (`config_path`, relative to `repo`: `core.config.config_location`; else its
    gradgate.yaml; else the defaults) made effective, and a session on it; the task and judge models are checked
    before any call (a job checks the others it uses)."""
    config, _ = load_config(repo, config_path)
    return Session.open(repo, effective_config(config, env, models, budget), use_cache=use_cache)
