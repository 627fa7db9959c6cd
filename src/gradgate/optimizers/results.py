"""What one optimization run returns: frozen, so reports and the job read it without copying."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from gradgate.core.stats import Interval
from gradgate.optimizers.base import Candidate, GradientNote


@dataclass(frozen=True)
class RunUsage:
    """What one run used of the job's budget."""

    calls: int
    tokens: int
    cost_usd: float
    seconds: float


@dataclass(frozen=True)
class Confirmation:
    """The held-out test decision on the best candidate (see `optimizers.confirmation`)."""

    improved: bool
    decision: str  # one sentence for the report
    dev_original: Interval | None = None
    dev_best: Interval | None = None
    test_original: Interval | None = None
    test_best: Interval | None = None
    difference: Interval | None = None  # best − original on test, paired
    p_value: float | None = None
    test_used: str = "none"  # "mcnemar-exact", "paired-bootstrap" or "none"
    # On ranked options (loglik): a sentence when either prompt answers one option on most test items far more
    # often than the suite expects, so a change in score may be a moved label prior, not better reading.
    label_prior: str | None = None


@dataclass(frozen=True)
class OptimizeResult:
    """One prompt × method: what the search found and whether the test split confirms it.

    The confirmation's fields are spread flat (`improved`, `decision`, `test_best`, ...): result.json and
    the reports read them that way."""

    method: str
    prompt_id: str
    prompt_path: str
    original: str
    best: Candidate
    improved: bool
    decision: str
    dev_original: Interval | None
    dev_best: Interval | None
    test_original: Interval | None
    test_best: Interval | None
    difference: Interval | None
    p_value: float | None
    test_used: str
    candidates: tuple[Candidate, ...]
    gradients: tuple[GradientNote, ...]
    usage: RunUsage
    budget: dict[str, Any]  # the job's budget snapshot when this run ended
    seed: int
    settings: dict[str, Any]
    stopped_reason: str | None
    split_sizes: tuple[int, int, int]
    trajectory_path: str | None = None
    label_prior: str | None = None

    @property
    def best_is_original(self) -> bool:
        return self.best.text == self.original


def spread(confirmation: Confirmation) -> dict[str, Any]:
    """The confirmation's fields as keyword arguments of OptimizeResult (shallow: intervals stay objects)."""
    return {f.name: getattr(confirmation, f.name) for f in fields(confirmation)}
