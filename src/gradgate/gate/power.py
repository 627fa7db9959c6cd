"""What a suite can detect, and what would decide an inconclusive verdict.

    power = detectable(n_items, gate, binary=True)                       # before or after scoring
    power = with_advice(power, decision, base, head, n_items, gate, within=None)   # for an inconclusive one

The smallest detectable drop follows the gate's own rule (`gradgate.gate.check.decide`) over the looks the
sequential test takes on a suite of n items (`gradgate.core.stats.looks`):

- binary scores: **exact**. A drop of k/n is flagged only when its McNemar p-value is below the look's level
  and k/n > max_drop; the smallest such k comes with all k discordant pairs going one way.
- graded scores: **approximate** (normal): max_drop + z(1 − level/2) · s / √n, with s the standard deviation
  of the paired differences (observed in `check`; in `eval`, √2 times that of the scores, as if base and head
  were independent).

An inconclusive verdict comes with the number of paired items at which the observed change would be decided
(the same rates, at the level of that suite's last look), and with repeats > 1, the number of repeats that
would shrink the within-item noise enough on the items at hand.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace

from gradgate.core.config import GateConfig
from gradgate.core.stats import detectable_drop, discordant, final_level, mcnemar_items_needed, normal_items_needed
from gradgate.gate.report import Decision, Power

ITEMS_CAP_FACTOR = 50  # search for a deciding size up to this many times the items at hand


def _final(n: int, gate: GateConfig) -> float:
    return final_level(n, alpha=gate.alpha, min_items=gate.min_items, batch_size=gate.batch_size, sequential=gate.sequential)


def detectable(n: int, gate: GateConfig, *, binary: bool, sd: float | None = None) -> Power:
    """The smallest drop of the mean score the gate can flag on `n` paired items (the best look)."""
    found = detectable_drop(
        n,
        alpha=gate.alpha,
        min_items=gate.min_items,
        batch_size=gate.batch_size,
        sequential=gate.sequential,
        max_drop=gate.max_drop,
        binary=binary,
        sd=sd if sd is not None else 0.5,
    )
    return Power(found.drop, binary, n, found.level, found.basis())


def items_to_decide(decision: Decision, base: Sequence[float], head: Sequence[float], gate: GateConfig) -> int | None:
    """Paired items at which the observed change would get a verdict (same rates); None if none would."""
    n = len(base)
    if n == 0:
        return None
    mean = decision.mean_diff
    diffs = [h - b for b, h in zip(base, head, strict=True)]
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    cap = max(ITEMS_CAP_FACTOR * n, 1000)
    if abs(mean) > gate.max_drop:
        if decision.p_value is not None:  # binary: the exact test decides
            regressions, improvements = discordant(base, head)
            return mcnemar_items_needed(
                regressions, improvements, n, level_for=lambda size: _final(size, gate), max_drop=gate.max_drop, cap=cap
            )
        return _normal_size(abs(mean) - gate.max_drop, sd, n, gate, cap)
    if abs(mean) < gate.max_drop:  # "unchanged" needs the whole interval within ±max_drop
        return _normal_size(gate.max_drop - abs(mean), sd, n, gate, cap)
    return None  # exactly at max_drop: no size decides


def _normal_size(margin: float, sd: float, n: int, gate: GateConfig, cap: int) -> int | None:
    """Smallest N with z(level(N)) * sd / sqrt(N) <= margin, the level being that of N items' last look."""
    guess = normal_items_needed(margin, sd, _final(max(n, gate.min_items), gate) or gate.alpha)
    if guess is None:
        return None
    size = max(guess, gate.min_items)
    while size <= cap:  # the last look's level depends on N: step until it holds there too
        level = _final(size, gate)
        needed = normal_items_needed(margin, sd, level) if level > 0 else None
        if needed is not None and needed <= size:
            return size
        size = max(size + 1, needed or size + 1)
    return None


def repeats_to_decide(
    decision: Decision, base: Sequence[float], head: Sequence[float], within: float, repeats: int, gate: GateConfig
) -> int | None:
    """Repeats at which the items at hand would decide the observed change (normal approximation).

    `within` is the mean within-item variance of one difference's samples (base + head); the variance of an
    item's difference is between + within / repeats, and more repeats shrink only the second part."""
    n = len(base)
    if n < 2 or within <= 0:
        return None
    mean = decision.mean_diff
    margin = abs(abs(mean) - gate.max_drop)
    if margin == 0:
        return None
    diffs = [h - b for b, h in zip(base, head, strict=True)]
    total = statistics.variance(diffs)
    between = max(total - within / repeats, 0.0)
    from scipy.stats import norm

    z = float(norm.ppf(1 - decision.level / 2))
    allowed = (margin * math.sqrt(n) / z) ** 2  # the variance that would decide at this level
    if allowed <= between:
        return None
    needed = math.ceil(within / (allowed - between))
    return needed if needed > repeats else None


def with_advice(
    power: Power,
    decision: Decision,
    base: Sequence[float],
    head: Sequence[float],
    n_items: int,
    gate: GateConfig,
    *,
    within: float | None = None,
) -> Power:
    """`power` with what would decide an inconclusive `decision` (items, repeats) and a sentence saying so."""
    if decision.verdict != "inconclusive":
        return power
    n = len(base)
    if n < gate.min_items:
        need = gate.min_items
        if n_items >= need:  # the suite is big enough: items were left out (no judge verdict, or the budget)
            advice = f"only {n} of {n_items} items were paired (the others were left out); {need} are needed"
        else:
            advice = f"at least {need} paired items are needed (the suite has {n_items}: add {need - n_items})"
        return replace(power, needed_items=need, advice=advice)
    size = items_to_decide(decision, base, head, gate)
    reps = repeats_to_decide(decision, base, head, within, gate.repeats, gate) if within is not None else None
    parts = []
    if size is not None:
        add = f"the suite has {n_items}: add {size - n_items}" if size > n_items else f"the suite has {n_items}"
        parts.append(f"about {size} paired items would decide the observed change ({add})")
    if reps is not None:
        parts.append(f"about {reps} repeats would decide it on these {n} items")
    if not parts:
        parts.append(
            "no number of items decides a change this close to ±max_drop"
            if size is None and abs(abs(decision.mean_diff) - gate.max_drop) < 1e-9
            else f"more than {max(ITEMS_CAP_FACTOR * n, 1000)} paired items would be needed"
        )
    return replace(power, needed_items=size, needed_repeats=reps, advice="; or ".join(parts))
