"""What a suite can detect: the gate's power figures against exact binomial values and against `decide` itself."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from scipy.stats import binomtest, norm

from gradgate.core.config import GateConfig
from gradgate.core.stats import (
    detectable_drop,
    final_level,
    looks,
    mcnemar_detectable_drop,
    mcnemar_items_needed,
    min_one_sided_discordant,
    normal_detectable_drop,
    normal_items_needed,
    spending,
)
from gradgate.gate.check import decide
from gradgate.gate.power import detectable, items_to_decide, repeats_to_decide, with_advice
from gradgate.gate.scores import ItemScore


def pairs(n: int, regressions: int, improvements: int) -> tuple[list[float], list[float]]:
    """n paired binary scores with that many discordant pairs each way (the rest pass in both)."""
    base = [1.0] * regressions + [0.0] * improvements + [1.0] * (n - regressions - improvements)
    head = [0.0] * regressions + [1.0] * improvements + [1.0] * (n - regressions - improvements)
    return base, head


@pytest.mark.parametrize(
    ("level", "k"),
    [(0.05, 6), (0.01, 8), (0.1, 5), (0.0625, 6), (0.0625 + 1e-9, 5), (0.001, 11)],
)
def test_min_discordant_matches_the_exact_binomial(level: float, k: int) -> None:
    # k pairs all one way: two-sided p = 2 * 0.5**k; the smallest k below the level.
    assert min_one_sided_discordant(level) == k
    assert binomtest(k, k, 0.5).pvalue < level <= binomtest(k - 1, k - 1, 0.5).pvalue


def test_mcnemar_detectable_drop_known_values() -> None:
    assert mcnemar_detectable_drop(30, 0.05, 0.05) == pytest.approx(6 / 30)
    assert mcnemar_detectable_drop(10, 0.05, 0.05) == pytest.approx(6 / 10)
    assert mcnemar_detectable_drop(100, 0.05, 0.1) == pytest.approx(11 / 100)  # max_drop binds: k/n must exceed 0.1
    assert mcnemar_detectable_drop(20, 0.05, 0.05) == pytest.approx(6 / 20)  # 1/20 = max_drop exactly is not > it
    assert mcnemar_detectable_drop(5, 0.05, 0.05) is None  # 5 pairs cannot reach p < 0.05


@pytest.mark.parametrize(("n", "level", "max_drop"), [(12, 0.05, 0.05), (16, 0.02, 0.1), (9, 0.05, 0.3), (14, 0.0125, 0.0)])
def test_exact_drop_is_the_smallest_that_decide_flags(n: int, level: float, max_drop: float) -> None:
    """Brute force over every split of discordant pairs: the smallest drop `decide` calls regressed."""
    gate = GateConfig(min_items=1, max_drop=max_drop)
    flagged = [
        (b - c) / n
        for b, c in itertools.product(range(n + 1), repeat=2)
        if b + c <= n and decide(*pairs(n, b, c), gate=gate, level=level).verdict == "regressed"
    ]
    expected = min(flagged) if flagged else None
    assert mcnemar_detectable_drop(n, level, max_drop) == (pytest.approx(expected) if expected is not None else None)


def test_looks_spend_exactly_alpha() -> None:
    schedule = looks(30, alpha=0.05, min_items=8, batch_size=8, sequential=True)
    assert [x.n for x in schedule] == [8, 16, 24, 30]
    assert sum(x.level for x in schedule) == pytest.approx(0.05)
    assert schedule[0].level == pytest.approx(spending(8 / 30, 0.05))
    assert final_level(30, alpha=0.05, min_items=8, batch_size=8, sequential=True) == pytest.approx(0.05 - spending(0.8, 0.05))
    assert looks(30, alpha=0.05, min_items=8, batch_size=8, sequential=False) == [
        looks(30, alpha=0.05, min_items=30, batch_size=1, sequential=True)[0]
    ]
    assert looks(5, alpha=0.05, min_items=8, batch_size=8, sequential=True) == []


def test_detectable_takes_the_best_look() -> None:
    gate = GateConfig(min_items=8, batch_size=8)
    power = detectable(36, gate, binary=True)
    candidates = [
        mcnemar_detectable_drop(look.n, look.level, 0.05)
        for look in looks(36, alpha=0.05, min_items=8, batch_size=8, sequential=True)
    ]
    assert power.detectable_drop == pytest.approx(min(d for d in candidates if d is not None))
    assert power.exact and "exact McNemar" in power.line() and "36 items" in power.line()
    # Without the sequential test the single look is at alpha: 6 of 36.
    flat = detectable(36, GateConfig(min_items=8, sequential=False), binary=True)
    assert flat.detectable_drop == pytest.approx(6 / 36)
    assert detectable(5, gate, binary=True).detectable_drop is None
    assert "no verdict is possible" in detectable(5, gate, binary=True).line()


def test_normal_approximation() -> None:
    z = norm.ppf(1 - 0.05 / 2)
    assert normal_detectable_drop(25, 0.05, 0.05, 0.5) == pytest.approx(0.05 + z * 0.5 / 5)
    assert normal_detectable_drop(4, 0.05, 0.05, 2.0) is None  # above a drop of 1: nothing detectable
    assert normal_items_needed(0.1, 0.5, 0.05) == math.ceil((z * 0.5 / 0.1) ** 2)
    found = detectable_drop(30, alpha=0.05, min_items=8, batch_size=8, sequential=False, max_drop=0.05, binary=False, sd=0.3)
    assert (
        found.drop == pytest.approx(0.05 + z * 0.3 / math.sqrt(30))
        and "about" in detectable(30, GateConfig(min_items=8, sequential=False), binary=False, sd=0.3).line()
    )


def test_items_needed_binary_is_the_first_size_that_decides() -> None:
    gate = GateConfig(min_items=8, sequential=False)  # one look at alpha, whatever the size
    size = mcnemar_items_needed(4, 1, 12, level_for=lambda _: 0.05, max_drop=0.05, cap=1000)
    assert size is not None

    def verdict(m: int) -> str:
        return decide(*pairs(m, round(4 * m / 12), round(1 * m / 12)), gate=gate, level=0.05).verdict

    assert verdict(size) == "regressed"
    assert all(verdict(m) != "regressed" for m in range(12, size))
    # Through the decision: the observed 4 vs 1 on 12 items is inconclusive, and says how many items would tell.
    base, head = pairs(12, 4, 1)
    decision = decide(base, head, gate=gate, level=0.05)
    assert decision.verdict == "inconclusive"
    assert items_to_decide(decision, base, head, gate) == size
    advised = with_advice(detectable(12, gate, binary=True), decision, base, head, 12, gate)
    assert advised.needed_items == size and f"about {size} paired items" in (advised.advice or "")
    assert f"add {size - 12}" in (advised.advice or "")


def test_items_needed_for_unchanged_and_never() -> None:
    gate = GateConfig(min_items=8, sequential=False)
    base = [0.5, 0.6, 0.7, 0.4, 0.5, 0.6, 0.7, 0.4, 0.5, 0.6]
    head = [b + (0.1 if i % 2 else -0.1) for i, b in enumerate(base)]  # mean 0, spread: "unchanged" needs items
    decision = decide(base, head, gate=gate, level=0.05)
    assert decision.verdict == "inconclusive"
    size = items_to_decide(decision, base, head, gate)
    sd = 0.1 * math.sqrt(10 / 9)
    assert size == normal_items_needed(0.05, sd, 0.05)
    # A change of exactly max_drop can never be decided.
    at_edge = decide([1.0] * 20, [1.0] * 19 + [0.0], gate=GateConfig(min_items=8, max_drop=0.05), level=0.05)
    assert items_to_decide(at_edge, [1.0] * 20, [1.0] * 19 + [0.0], GateConfig(min_items=8, max_drop=0.05)) is None


def test_repeats_to_decide_shrinks_only_the_within_item_noise() -> None:
    gate = GateConfig(min_items=8, sequential=False, repeats=2)
    base = [0.5] * 10
    head = [0.5, 0.0, 0.5, 0.5, 0.0, 0.5, 0.5, 0.0, 0.5, 0.5]  # mean change -0.15: undecided on 10 items
    decision = decide(base, head, gate=gate, level=0.05)
    assert decision.verdict == "inconclusive"
    total = statistics.variance([h - b for b, h in zip(base, head, strict=True)])
    within = 0.08  # per-sample variance within items; with 2 repeats 0.04 of `total` is noise repeats can shrink
    allowed = (0.1 * math.sqrt(10) / norm.ppf(1 - 0.05 / 2)) ** 2
    expected = math.ceil(within / (allowed - (total - within / 2)))
    assert repeats_to_decide(decision, base, head, within, 2, gate) == expected > 2
    # When the spread between items alone is too wide, no number of repeats decides.
    assert repeats_to_decide(decision, base, head, 0.01, 2, gate) is None


def test_flip_rate() -> None:
    assert ItemScore(1 / 3, 1, 3).flip_rate == pytest.approx(2 / 3)
    assert ItemScore(0.0, 0, 3).flip_rate == 0.0
    assert ItemScore(0.5, 1, 2).flip_rate == 1.0
    assert ItemScore(1.0, 1, 1).flip_rate is None


def test_advice_when_items_were_left_out() -> None:
    gate = GateConfig(min_items=8)
    base, head = pairs(3, 1, 0)
    decision = decide(base, head, gate=gate, level=0.05)
    left_out = with_advice(detectable(20, gate, binary=True), decision, base, head, 20, gate)
    assert left_out.advice == "only 3 of 20 items were paired (the others were left out); 8 are needed"
    too_small = with_advice(detectable(5, gate, binary=True), decision, base, head, 5, gate)
    assert too_small.advice == "at least 8 paired items are needed (the suite has 5: add 3)"
