"""Confidence intervals, paired tests, power and agreement (scipy.stats does the statistics).

Power of the gate's tests (`detectable_drop`, `looks`): the smallest change a suite of n items can flag,
exact for binary scores (the exact McNemar test is a binomial test on the discordant pairs), a normal
approximation for graded scores. Agreement of a judge with labels: `agreement` (accuracy with its Wilson
interval, Cohen's kappa with a bootstrap interval).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
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


def discordant(base: Sequence[float], head: Sequence[float]) -> tuple[int, int]:
    """The discordant pairs of paired pass/fail scores (pass: >= 0.5): (base passes and head fails, head passes
    and base fails), i.e. (regressions, improvements)."""
    b_only = sum(1 for b, h in zip(base, head, strict=True) if b >= 0.5 > h)
    h_only = sum(1 for b, h in zip(base, head, strict=True) if h >= 0.5 > b)
    return b_only, h_only


def mcnemar_exact(base: Sequence[float], head: Sequence[float]) -> float:
    """Two-sided exact McNemar (sign test on discordant pairs) for binary scores; p-value."""
    b_only, h_only = discordant(base, head)
    pairs = b_only + h_only
    if pairs == 0:
        return 1.0
    return float(stats.binomtest(h_only, pairs, 0.5).pvalue)


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def unpaired_sd(scores: Sequence[float]) -> float:
    """The paired differences' standard deviation guessed from one version's scores (at least two): √2 times
    the scores' sample standard deviation. With only one version scored there are no differences to measure;
    if base and head were independent with that spread, Var(head − base) = 2·Var(score), so sd · √2."""
    return 2**0.5 * statistics.stdev(scores)


# -- sequential looks and power ------------------------------------------------------------------------


def spending(fraction: float, alpha: float) -> float:
    """Cumulative alpha an O'Brien-Fleming-type (Lan-DeMets) spending function allows at `fraction`."""
    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return alpha
    z = float(stats.norm.ppf(1 - alpha / 2))
    return float(min(alpha, 2 * (1 - stats.norm.cdf(z / math.sqrt(fraction)))))


@dataclass(frozen=True)
class Look:
    n: int  # paired items at this look
    level: float  # significance level this look is tested at


def look_sizes(n: int, *, min_items: int, batch_size: int, sequential: bool) -> list[int]:
    """Items scored by each look on a suite of `n`: the first after max(min_items, batch_size) items, then
    one per batch, the last at n; without `sequential`, one look at n. The gate scores in these steps."""
    if n <= 0:
        return []
    if not sequential:
        return [n]
    sizes = []
    upto = min(n, max(min_items, batch_size))
    while True:
        sizes.append(upto)
        if upto >= n:
            break
        upto = min(n, upto + batch_size)
    return sizes


def look_level(size: int, n: int, *, alpha: float, spent: float, sequential: bool, last: bool = False) -> tuple[float, float]:
    """(level, cumulative alpha spent) of a look after `size` of `n` items when `spent` was spent before it:
    `spending(size / n)` cumulatively, all of alpha at the last look (size >= n, `last`, or not `sequential`)."""
    cumulative = spending(size / n, alpha) if sequential and not last and size < n else alpha
    return max(cumulative - spent, 1e-12), cumulative


def looks(n: int, *, alpha: float, min_items: int, batch_size: int, sequential: bool) -> list[Look]:
    """The looks the gate takes on a suite of `n` items, with the level each is tested at (when every
    item gets scored): at `look_sizes`, alpha spent by `look_level`. Without `sequential`, one look at alpha."""
    if n < min_items or n <= 0:
        return []
    if not sequential:
        return [Look(n, alpha)]
    out, spent = [], 0.0
    for size in look_sizes(n, min_items=min_items, batch_size=batch_size, sequential=True):
        level, spent = look_level(size, n, alpha=alpha, spent=spent, sequential=True)
        out.append(Look(size, level))
    return out


def final_level(n: int, *, alpha: float, min_items: int, batch_size: int, sequential: bool) -> float:
    """The level of the last look on `n` items (alpha when not sequential); 0 when n < min_items."""
    schedule = looks(n, alpha=alpha, min_items=min_items, batch_size=batch_size, sequential=sequential)
    return schedule[-1].level if schedule else 0.0


def min_one_sided_discordant(level: float) -> int:
    """Smallest k for which k discordant pairs all in one direction reject at `level` (two-sided exact
    binomial/McNemar test: p = 2 * 0.5**k)."""
    k = 1
    while stats.binomtest(k, k, 0.5).pvalue >= level:
        k += 1
        if k > 2000:  # level below 2**-2000: nothing is detectable
            break
    return k


def _items_beyond(max_drop: float, n: int) -> int:
    """Smallest k with k / n > max_drop."""
    return math.floor(max_drop * n + 1e-9) + 1


def mcnemar_detectable_drop(n: int, level: float, max_drop: float) -> float | None:
    """Exact: the smallest mean drop (k/n) that can be flagged by the gate's binary rule (McNemar p < level
    and mean drop > max_drop) on n paired items; reached when all k discordant pairs go one way. None when
    no drop on n items can be (k > n)."""
    if n <= 0 or level <= 0:
        return None
    k = max(min_one_sided_discordant(level), _items_beyond(max_drop, n))
    return k / n if k <= n else None


def normal_detectable_drop(n: int, level: float, max_drop: float, sd: float) -> float | None:
    """Approximate (normal): the smallest mean drop whose (1 - level) interval, with the paired differences'
    standard deviation `sd`, lies beyond -max_drop: max_drop + z * sd / sqrt(n). Capped at 1."""
    if n <= 0 or level <= 0:
        return None
    z = float(stats.norm.ppf(1 - level / 2))
    drop = max_drop + z * sd / math.sqrt(n)
    return drop if drop <= 1 else None


@dataclass(frozen=True)
class Detectable:
    drop: float | None  # the smallest detectable drop of the mean score; None when none is
    n: int  # items at the look that detects it
    level: float  # that look's level
    final_level: float  # the level of the last look (0 with no look)
    n_total: int = 0  # items in the suite
    binary: bool = True  # exact (McNemar) or the normal approximation
    sd: float = 0.5
    max_drop: float = 0.0
    min_items: int = 1

    def basis(self) -> str:
        """How the drop was computed, in words."""
        if self.final_level == 0:
            return f"{self.n_total} items, fewer than min_items {self.min_items}: no verdict is possible"
        how = "exact McNemar" if self.binary else f"normal approximation, s={self.sd:.3g}"
        at = f"level {self.level:.3g}" + ("" if self.n == self.n_total else f" at the look after {self.n} items")
        return f"{how}, {self.n_total} items, {at}, max_drop {self.max_drop:g}"


def detectable_line(drop: float | None, exact: bool, basis: str) -> str:
    """'this suite can detect a drop of X or more (basis)', as every report says it."""
    if drop is None:
        return f"this suite cannot detect any drop ({basis})"
    return f"this suite can detect a drop of {'' if exact else 'about '}{drop:.3f} or more ({basis})"


def detectable_drop(
    n: int,
    *,
    alpha: float,
    min_items: int,
    batch_size: int,
    sequential: bool,
    max_drop: float,
    binary: bool,
    sd: float = 0.5,
) -> Detectable:
    """The smallest drop the gate can flag on a suite of `n` items, over the looks it takes: exact for binary
    scores (`mcnemar_detectable_drop`), else the normal approximation with paired-difference spread `sd`
    (`normal_detectable_drop`; 0.5, the largest spread of a 0/1 difference's mean, when unknown)."""
    schedule = looks(n, alpha=alpha, min_items=min_items, batch_size=batch_size, sequential=sequential)
    about = dict(n_total=n, binary=binary, sd=sd, max_drop=max_drop, min_items=min_items)
    if not schedule:
        return Detectable(None, n, 0.0, 0.0, **about)  # type: ignore[arg-type]
    final = schedule[-1].level
    best = Detectable(None, n, final, final, **about)  # type: ignore[arg-type]
    for look in schedule:
        if binary:
            drop = mcnemar_detectable_drop(look.n, look.level, max_drop)
        else:
            drop = normal_detectable_drop(look.n, look.level, max_drop, sd)
        if drop is not None and (best.drop is None or drop < best.drop - 1e-12):
            best = Detectable(drop, look.n, look.level, final, **about)  # type: ignore[arg-type]
    return best


def mcnemar_items_needed(
    regressions: int, improvements: int, n: int, *, level_for: Callable[[int], float], max_drop: float, cap: int
) -> int | None:
    """Paired items at which the observed discordant rates (regressions, improvements out of n) would
    reject at `level_for(N)` with a mean change beyond max_drop; None if not within `cap` items."""
    if n <= 0 or abs(improvements - regressions) / n <= max_drop:
        return None
    major, minor = max(regressions, improvements), min(regressions, improvements)
    for size in range(n + 1, cap + 1):
        a, b = round(major * size / n), round(minor * size / n)
        level = level_for(size)
        if level > 0 and stats.binomtest(b, a + b, 0.5).pvalue < level:
            return size
    return None


def normal_items_needed(margin: float, sd: float, level: float) -> int | None:
    """Items at which a normal interval of half-width z * sd / sqrt(N) fits within `margin`."""
    if margin <= 0:
        return None
    if sd <= 0:
        return 1
    z = float(stats.norm.ppf(1 - level / 2))
    return math.ceil((z * sd / margin) ** 2)


# -- agreement ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    n: int
    agree: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    kappa: float | None  # None when undefined (one class only, in both)
    kappa_low: float | None
    kappa_high: float | None


def cohen_kappa(labels: Sequence[int], predictions: Sequence[int]) -> float | None:
    """Cohen's kappa of two binary ratings; None when chance agreement is 1 (nothing to tell apart)."""
    n = len(labels)
    if n == 0:
        return None
    observed = sum(1 for a, b in zip(labels, predictions, strict=True) if a == b) / n
    p_label, p_pred = sum(labels) / n, sum(predictions) / n
    chance = p_label * p_pred + (1 - p_label) * (1 - p_pred)
    if chance >= 1 - 1e-12:
        return None
    return (observed - chance) / (1 - chance)


def agreement(labels: Sequence[int], predictions: Sequence[int], *, confidence: float = 0.95, seed: int = 0) -> Agreement:
    """Accuracy (Wilson interval) and Cohen's kappa (percentile bootstrap interval) of binary predictions."""
    if len(labels) != len(predictions):
        raise ValueError("labels and predictions must have the same length")
    n = len(labels)
    agree = sum(1 for a, b in zip(labels, predictions, strict=True) if a == b)
    if n == 0:
        return Agreement(0, 0, 0.0, 0.0, 1.0, None, None, None)
    ci = stats.binomtest(agree, n).proportion_ci(confidence_level=confidence, method="wilson")
    kappa = cohen_kappa(labels, predictions)
    low = high = None
    if kappa is not None and n >= 2:
        rng = np.random.default_rng(seed)
        pairs = np.asarray([labels, predictions], dtype=int)
        draws = []
        for _ in range(2000):
            pick = rng.integers(0, n, n)
            value = cohen_kappa(pairs[0, pick].tolist(), pairs[1, pick].tolist())
            if value is not None:
                draws.append(value)
        if draws:
            tail = (1 - confidence) / 2 * 100
            low, high = (float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    return Agreement(n, agree, agree / n, float(ci.low), float(ci.high), kappa, low, high)
