"""The held-out test confirmation every method ends with, and the budget it needs.

The decision (documented in the report): a new prompt is proposed only when its mean test score
beats the original's by more than `optimize.margin` AND the difference has statistical support
at `optimize.alpha` — an exact McNemar test when every score is binary (pass/fail), otherwise the
lower bound of a paired bootstrap confidence interval (level 1 − alpha) of the difference must lie
above the margin. McNemar is two-sided, so using it for "better" is conservative.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from gradgate.core.budget import Holdback
from gradgate.core.config import Config
from gradgate.core.stats import Interval, is_binary, mcnemar_exact, mean_interval, paired_difference
from gradgate.core.suites import Item, split_items
from gradgate.errors import BudgetExhausted
from gradgate.optimizers.base import Candidate, OptimizeContext, RecordingScorer
from gradgate.optimizers.results import Confirmation
from gradgate.scoring.results import answer_skew
from gradgate.scoring.scorer import PromptEval, calls_per_item

log = logging.getLogger(__name__)

# Calls a confirmation may need beyond its estimate: retries count as calls.
CONFIRM_MARGIN = 0.1
CONFIRM_EXTRA_CALLS = 2
# Tokens/USD/seconds kept back for the confirmation, as a multiple of what scoring the original on
# dev cost per item (a generous factor: candidates can write longer outputs than the original).
CONFIRM_COST_FACTOR = 1.5

T = TypeVar("T")
LABEL_PRIOR_NOTE = (
    ": where one option dominates, the score follows a label prior more than the input, and part of any change may "
    "be that prior moving"
)


def scoring_calls(n_prompts: int, n_items: int, uses_judge: bool) -> int:
    """Calls to score `n_prompts` prompts on `n_items` items, with a margin for retries; the judge may be
    asked twice per item."""
    calls = n_prompts * n_items * calls_per_item(uses_judge)
    return calls + math.ceil(calls * CONFIRM_MARGIN) + CONFIRM_EXTRA_CALLS


def calls_needed(n_test: int, uses_judge: bool) -> int:
    """Calls to score original and best on `n_test` items."""
    return scoring_calls(2, n_test, uses_judge)


def min_test_items(alpha: float, margin: float) -> int | None:
    """Fewest test items on which a new prompt can pass the decision rule at all: it wins on every item, so the
    exact McNemar p is 2 × 0.5^n and must fall below `alpha`. None when `margin` ≥ 1 (nothing can beat it)."""
    if margin >= 1.0:
        return None
    n = 1
    while mcnemar_exact([0.0] * n, [1.0] * n) >= alpha:
        n += 1
    return n


def items_needed(n_test: int, *, train: float, dev: float) -> int:
    """Fewest suite items whose split (`split_items`) leaves at least `n_test` test items and train and dev items."""
    n = n_test + 2
    while True:
        splits = split_items([Item(id=str(i), vars={}) for i in range(n)], seed=0, train=train, dev=dev)
        if splits.train and splits.dev and len(splits.test) >= n_test:
            return n
        n += 1


def cost_holdback(spent: Holdback, n_dev: int, n_test: int) -> Holdback:
    """Tokens, USD and seconds to keep for the confirmation, scaled from what scoring dev once cost (`spent`)."""
    scale = CONFIRM_COST_FACTOR * 2 * n_test / max(1, n_dev)
    return Holdback(tokens=math.ceil(spent.tokens * scale), usd=spent.usd * scale, seconds=spent.seconds * scale)


async def confirm(
    ctx: OptimizeContext, config: Config, recorder: RecordingScorer, original: Candidate, best: Candidate
) -> Confirmation:
    """Score original and best on test (paired) and decide; dev intervals come from what the search recorded
    (`recorder`) when it has them, else are rescored (free from the response cache)."""
    opt = config.optimize
    stats_kw: dict[str, Any] = {
        "confidence": 1 - opt.alpha,
        "resamples": config.gate.bootstrap_resamples,
        "seed": ctx.seed,
    }
    prompt = ctx.target.prompt

    async def on(text: str, items: Sequence[Item]) -> list[float] | None:
        body = prompt.with_body(text)
        found: list[float] | None = recorder.seen.get(recorder.key(body.content_hash(), items))
        if found is not None:
            return found
        evaluation = await recorder.score(body, items)
        return [i.score for i in evaluation.items] if evaluation.complete else None

    if best.text == original.text:
        dev = _interval(await _unless_budget(on(original.text, ctx.splits.dev)), **stats_kw)
        return Confirmation(
            improved=False,
            decision="no candidate scored above the original on dev; nothing to propose",
            dev_original=dev,
            dev_best=dev,
            label_prior=await dev_label_prior(ctx, recorder, original),
        )
    # Test first: the dev intervals are usually recorded already, and must not take the test's calls.
    test_original = await _unless_budget(recorder.score(prompt.with_body(original.text), ctx.splits.test))
    test_best = await _unless_budget(recorder.score(prompt.with_body(best.text), ctx.splits.test))
    dev_original = _interval(await _unless_budget(on(original.text, ctx.splits.dev)), **stats_kw)
    dev_best = _interval(await _unless_budget(on(best.text, ctx.splits.dev)), **stats_kw)
    if ctx.splits.dev and dev_best is None:
        log.info("dev interval of %s not available (budget)", best.id)
    intervals = Confirmation(
        improved=False,
        decision="",
        dev_original=dev_original,
        dev_best=dev_best,
        test_original=_interval(test_original, **stats_kw),
        test_best=_interval(test_best, **stats_kw),
    )
    if test_original is None or test_best is None or not test_original.complete or not test_best.complete:
        stops = [e.stopped_reason for e in (test_original, test_best) if e is not None and e.stopped_reason]
        reason = stops[0] if stops else "the budget refused the calls"
        decision = f"the test confirmation could not finish ({reason}); {best.id} is not proposed without it"
        return replace(intervals, decision=decision)
    return _decide(ctx, config, best, test_original, test_best, stats_kw, intervals)


def _decide(
    ctx: OptimizeContext,
    config: Config,
    best: Candidate,
    test_original: PromptEval,
    test_best: PromptEval,
    stats_kw: dict[str, Any],
    intervals: Confirmation,
) -> Confirmation:
    opt = config.optimize
    base, head = test_original.scores_by_id(), test_best.scores_by_id()
    ids = [i.id for i in ctx.splits.test if i.id in base and i.id in head]
    b, h = [base[i] for i in ids], [head[i] for i in ids]
    difference = paired_difference(b, h, **stats_kw)
    p_value: float | None = None
    if is_binary(b) and is_binary(h):
        p_value, test_used = mcnemar_exact(b, h), "mcnemar-exact"
        supported, support_text = p_value < opt.alpha, f"exact McNemar p={p_value:.3g} (alpha {opt.alpha:g})"
    else:
        test_used = "paired-bootstrap"
        supported = difference.low > opt.margin
        support_text = (
            f"paired bootstrap {100 * (1 - opt.alpha):.0f}% interval [{difference.low:+.3f}, "
            f"{difference.high:+.3f}] vs margin {opt.margin:g}"
        )
    beats = difference.mean > opt.margin
    delta = f"test {difference.mean:+.3f} (best {_mean(h):.3f} vs original {_mean(b):.3f}, n={len(ids)})"
    if beats and supported:
        decision = f"{best.id} beats the original: {delta}; {support_text}"
    elif not beats:
        decision = f"{best.id} does not beat the original by more than the margin {opt.margin:g}: {delta}"
    else:
        decision = f"{best.id} looks better but without statistical support: {delta}; {support_text}"
    return replace(
        intervals,
        improved=beats and supported,
        decision=decision,
        difference=difference,
        p_value=p_value,
        test_used=test_used,
        label_prior=label_prior(ctx, [("the original", test_original), (best.id, test_best)], "test items"),
    )


def label_prior(ctx: OptimizeContext, answered: Sequence[tuple[str, PromptEval]], items: str) -> str | None:
    """On ranked options, say which prompts (`answered`: who, its evaluation) answer one option far more often than
    the suite expects (`scoring.results.answer_skew`) on `items`: a small model's score there moves with that prior,
    so a gain that comes with a new or stronger skew may not carry to items whose answers are distributed
    differently, and a search that found nothing often explains itself (every candidate ranked under one prior)."""
    options = ctx.target.suite.spec.scoring.ranked_options
    skews = [(who, answer_skew(evaluation, options)) for who, evaluation in answered]
    parts = [skew.says(who, items) for who, skew in skews if skew is not None]
    return "; ".join(parts) + LABEL_PRIOR_NOTE if parts else None


async def dev_label_prior(ctx: OptimizeContext, recorder: RecordingScorer, original: Candidate) -> str | None:
    """When nothing reached the test split, `label_prior` of the original on dev. The search scored the original on
    dev, so with the response cache its answers cost no call; without a cache they would cost a dev scoring
    (within the budget's test share, unused here), and are skipped."""
    if not ctx.target.suite.spec.scoring.ranked_options or not ctx.splits.dev or ctx.gateway.cache is None:
        return None
    evaluation = await _unless_budget(recorder.score(ctx.target.prompt.with_body(original.text), ctx.splits.dev))
    if evaluation is None or not evaluation.complete:
        return None
    return label_prior(ctx, [("the original", evaluation)], "dev items")


def _interval(scores: Sequence[float] | PromptEval | None, *, confidence: float, resamples: int, seed: int) -> Interval | None:
    if isinstance(scores, PromptEval):
        scores = [i.score for i in scores.scored]
    if not scores:
        return None
    return mean_interval(scores, confidence=confidence, resamples=resamples, seed=seed)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


async def _unless_budget(awaitable: Awaitable[T]) -> T | None:
    """An evaluation, or None when the budget refuses it outright."""
    try:
        return await awaitable
    except BudgetExhausted:
        return None
