"""Small hand-computed checks of the shared statistics in `gradgate.core.stats`."""

from __future__ import annotations

import pytest

from gradgate.core.stats import discordant, look_level, look_sizes, looks, mcnemar_exact, unpaired_sd


def test_look_sizes() -> None:
    assert look_sizes(30, min_items=8, batch_size=8, sequential=True) == [8, 16, 24, 30]
    assert look_sizes(20, min_items=10, batch_size=4, sequential=True) == [10, 14, 18, 20]
    assert look_sizes(20, min_items=10, batch_size=4, sequential=False) == [20]
    assert look_sizes(5, min_items=8, batch_size=8, sequential=True) == [5]  # fewer items than min_items: one look
    assert look_sizes(0, min_items=1, batch_size=8, sequential=True) == []


def test_look_level() -> None:
    # Half way: 2 * (1 - Phi(1.959964 / sqrt(0.5))) = 2 * (1 - Phi(2.771808)) = 0.0055746
    level, spent = look_level(10, 20, alpha=0.05, spent=0.0, sequential=True)
    assert level == pytest.approx(0.0055746, abs=1e-6) and spent == level
    assert look_level(20, 20, alpha=0.05, spent=0.01, sequential=True) == (pytest.approx(0.04), 0.05)  # the rest
    assert look_level(10, 20, alpha=0.05, spent=0.01, sequential=True, last=True) == (pytest.approx(0.04), 0.05)
    assert look_level(10, 20, alpha=0.05, spent=0.0, sequential=False) == (0.05, 0.05)
    assert look_level(10, 20, alpha=0.05, spent=0.05, sequential=True, last=True)[0] == 1e-12  # never 0
    # `looks` is exactly the sizes with the levels, spent in turn.
    assert [(x.n, x.level) for x in looks(20, alpha=0.05, min_items=10, batch_size=10, sequential=True)] == [
        (10, level),
        (20, pytest.approx(0.05 - level)),
    ]


def test_discordant() -> None:
    base = [1.0, 1.0, 0.0, 0.0, 1.0, 0.6]
    head = [0.0, 1.0, 1.0, 0.0, 0.0, 0.4]
    assert discordant(base, head) == (3, 1)  # items 0, 4, 5 regress (0.6 passes, 0.4 fails); item 2 improves
    assert discordant([], []) == (0, 0)
    assert mcnemar_exact([1.0] * 5, [0.0] * 5) == pytest.approx(2 * 0.5**5)


def test_unpaired_sd() -> None:
    assert unpaired_sd([0.0, 1.0]) == pytest.approx(1.0)  # sd sqrt(1/2), times sqrt(2)
    assert unpaired_sd([1.0, 2.0, 3.0]) == pytest.approx(2**0.5)  # sd 1
    assert unpaired_sd([0.5, 0.5]) == 0.0
