"""A `Session` holds what one run shares: the repository, the resolved config, the budget and the
model gateway. The gate and the optimizers receive one; the app layer opens it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gradgate.core.budget import BudgetTracker
from gradgate.core.config import Config
from gradgate.models.gateway import Backend, Gateway, gateway_from_config


@dataclass
class Session:
    repo: Path
    config: Config
    budget: BudgetTracker
    gateway: Gateway

    @classmethod
    def open(
        cls,
        repo: Path,
        config: Config,
        *,
        backend: Backend | None = None,
        use_cache: bool = True,
        roles: tuple[str, ...] = ("task", "judge"),
    ) -> Session:
        budget = BudgetTracker(config.budget)
        gateway = gateway_from_config(
            repo, config.models, budget, cache_dir=config.cache_dir if use_cache else None, backend=backend
        )
        gateway.validate(roles)
        budget.log_start()
        return cls(repo=repo, config=config, budget=budget, gateway=gateway)

    def models(self, roles: tuple[str, ...] = ("task", "judge")) -> dict[str, str]:
        return {role: self.config.models.for_role(role).model for role in roles}
