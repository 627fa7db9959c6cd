"""Confidence intervals and paired tests (scipy.stats does the statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


def mean_interval(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean with a bootstrap (BCa where it is defined, else percentile) confidence interval."""
    data = np.asarray(values, dtype=float)
    n = int(data.size)
    if n == 0:
        return Interval(0.0, 0.0, 0.0, 0)
    mean = float(data.mean())
    if n == 1 or np.all(data == data[0]):
        return Interval(mean, mean, mean, n)
    rng = np.random.default_rng(seed)
    try:
        result = stats.bootstrap(
            (data,), np.mean, confidence_level=confidence, n_resamples=resamples, method="BCa", random_state=rng
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("degenerate BCa interval")
    except (ValueError, FloatingPointError):
        result = stats.bootstrap(
            (data,),
            np.mean,
            confidence_level=confidence,
            n_resamples=resamples,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Interval(mean, low, high, n)


def paired_difference(base: Sequence[float], head: Sequence[float], **kwargs: float) -> Interval:
    """Mean of head − base over paired items, with its bootstrap interval."""
    if len(base) != len(head):
        raise ValueError("paired samples must have the same length")
    diff = [h - b for b, h in zip(base, head, strict=True)]
    return mean_interval(diff, **kwargs)  # type: ignore[arg-type]


def mcnemar_exact(base: Sequence[float], head: Sequence[float]) -> float:
    """Two-sided exact McNemar (sign test on discordant pairs) for binary scores; p-value."""
    b_only = sum(1 for b, h in zip(base, head, strict=True) if b >= 0.5 > h)
    h_only = sum(1 for b, h in zip(base, head, strict=True) if h >= 0.5 > b)
    discordant = b_only + h_only
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(h_only, discordant, 0.5).pvalue)


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)
