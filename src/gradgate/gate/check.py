"""Did a change make a prompt worse? Base and head scored on the same items, decided by a paired test.

    await gate_changes(session, changes, done)   # appends one PromptVerdict per changed or new prompt

Each changed prompt's base and head are scored at the same time (one concurrency limit) on the paired items,
in batches, deciding after each batch with a paired test (`decide`, alpha spent by `spending`). Steps:
`_prepare` (paired items, one `Side` per version), `_sequential` (the looks), then `_verdict` with what the
suite can detect (`gradgate.gate.power`), the flip rates when items are repeated, and the judge's agreement
with the suite's labeled examples (`gradgate.scoring.calibration`: an untrusted judge makes the verdict
inconclusive). Scores are cached per item by content (`gradgate.gate.scores.ScoreCache`), so a pull request
pays only for its head. The job around it (reports, comment, exit code) is `gradgate.app.check_job`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gradgate.core.budget import BudgetTracker
from gradgate.core.config import GateConfig
from gradgate.core.discovery import Target
from gradgate.core.prompts import Prompt
from gradgate.core.stats import is_binary, look_level, look_sizes, spending, unpaired_sd
from gradgate.core.suites import Item
from gradgate.errors import GradgateError
from gradgate.gate.changes import ChangeSet, PromptChange
from gradgate.gate.power import detectable, with_advice
from gradgate.gate.report import Decision, Noise, Power, PromptVerdict
from gradgate.gate.scores import ItemScore, ScoreCache, Side, score_cache_for
from gradgate.models.session import Session
from gradgate.scoring.calibration import JudgeCalibration, calibrate_judge, has_examples, validate_examples
from gradgate.scoring.scorer import Scorer

log = logging.getLogger(__name__)

BOOTSTRAP_SEED = 0
FLAKY_SHOWN = 10  # flaky items listed per prompt

__all__ = ["decide", "gate_changes", "spending"]


# -- the decision --------------------------------------------------------------------------------------


def decide(
    base: Sequence[float],
    head: Sequence[float],
    *,
    gate: GateConfig,
    level: float,
    seed: int = BOOTSTRAP_SEED,
) -> Decision:
    """The verdict for paired per-item scores at significance `level` (see gate_report.DECISION_RULE)."""
    from gradgate.core.stats import mcnemar_exact, paired_difference

    n = len(base)
    if n == 0:
        return Decision("inconclusive", 0, 0.0, 0.0, 0.0, level, None, "no paired items")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about degenerate resamples at tiny n; we fall back
        interval = paired_difference(list(base), list(head), confidence=1 - level, resamples=gate.bootstrap_resamples, seed=seed)
    binary = is_binary(base) and is_binary(head)
    p_value = mcnemar_exact(base, head) if binary else None
    mean, low, high = interval.mean, interval.low, interval.high
    # Binary scores: the exact McNemar test decides significance (a bootstrap of a few 0/±1 differences is
    # over-confident, e.g. a point interval when all differ the same way); others: the bootstrap interval.
    worse = (p_value < level and mean < -gate.max_drop) if p_value is not None else high < -gate.max_drop
    better = (p_value < level and mean > gate.max_drop) if p_value is not None else low > gate.max_drop
    if n < gate.min_items:
        verdict, reason = "inconclusive", f"only {n} paired items (min_items {gate.min_items})"
    elif worse:
        verdict, reason = "regressed", f"the drop exceeds max_drop {gate.max_drop} at level {level:.3g}"
    elif better:
        verdict, reason = "improved", f"the gain exceeds max_drop {gate.max_drop} at level {level:.3g}"
    elif low >= -gate.max_drop and high <= gate.max_drop:
        verdict, reason = "unchanged", f"the interval lies within ±{gate.max_drop}"
    else:
        verdict, reason = (
            "inconclusive",
            f"not decided at level {level:.3g}",
        )
    return Decision(verdict, n, mean, low, high, level, p_value, reason)  # type: ignore[arg-type]


# -- one changed prompt, in named steps ----------------------------------------------------------------


@dataclass(frozen=True)
class _Usage:
    calls: int
    cached: int
    cost: float


def _usage(budget: BudgetTracker) -> _Usage:
    snap = budget.snapshot()
    cached = sum(int(r["cached_calls"]) for r in snap["by_role"].values())
    return _Usage(calls=int(snap["calls"]), cached=cached, cost=float(snap["cost_usd"]))


def _item_order(items: Sequence[Item]) -> list[Item]:
    """A fixed pseudo-random order, so every look sees a fair sample (suites are often sorted by class)."""
    return sorted(items, key=lambda i: hashlib.sha256(f"gradgate-gate:{i.id}".encode()).hexdigest())


def _location(change: PromptChange, prefix: str) -> tuple[str, int]:
    target = change.head or change.base
    if target is None:  # pragma: no cover - a change always has one side
        return "", 1
    return prefix + target.prompt.rel_path, target.prompt.body_line


@dataclass
class _Pairing:
    """A changed prompt ready to be scored: the paired items in look order and one Side per version."""

    items: list[Item]
    base: Side
    head: Side
    common: dict[str, Any]
    start: _Usage


@dataclass(frozen=True)
class _Run:
    decision: Decision | None
    looks: int
    scored_upto: int
    out_of_budget: bool


def _prepare(session: Session, change: PromptChange, cache: ScoreCache, prefix: str) -> _Pairing | PromptVerdict:
    """The paired items (ids both suites share) and both versions set up on the head's suite and config;
    an inconclusive verdict when there is nothing comparable."""
    assert change.base is not None and change.head is not None  # status "changed" has both sides
    path, line = _location(change, prefix)
    base_ids = {i.id for i in change.base.suite.items}
    items = _item_order([i for i in change.head.suite.items if i.id in base_ids])
    common: dict[str, Any] = dict(
        prompt_id=change.prompt_id, path=path, line=line, reasons=change.reasons, items_total=len(items)
    )
    if not items:
        return PromptVerdict(verdict="inconclusive", note="base and head suites share no item ids", **common)
    suite = replace(change.head.suite, items=tuple(items))
    head = Side.open(session, Target(prompt=change.head.prompt, suite=suite), cache)
    try:
        base = Side.open(session, Target(prompt=change.base.prompt, suite=suite), cache)
    except GradgateError as exc:
        note = f"the base version cannot be scored on the head suite: {exc.message}"
        return PromptVerdict(verdict="inconclusive", note=note, **common)
    return _Pairing(items, base, head, common, _usage(session.budget))


def _paired(pairing: _Pairing, upto: int | None = None) -> list[str]:
    base, head = pairing.base.scores, pairing.head.scores
    return [i.id for i in pairing.items[:upto] if i.id in base and i.id in head]


async def _sequential(session: Session, pairing: _Pairing) -> _Run:
    """Score batches of base and head together; test after each batch at the level alpha-spending allows;
    stop at the first verdict, at the last item, or when the budget runs out."""
    gate, items = session.config.gate, pairing.items
    sizes = look_sizes(len(items), min_items=gate.min_items, batch_size=gate.batch_size, sequential=gate.sequential)
    scored_upto, spent, looks = 0, 0.0, 0
    decision: Decision | None = None
    out_of_budget = False
    for upto in sizes:  # the power report's schedule (`core.stats.looks`) when every item is scored
        batch = items[scored_upto:upto]
        await asyncio.gather(pairing.base.score(batch, gate.repeats), pairing.head.score(batch, gate.repeats))
        scored_upto = upto
        out_of_budget = bool(pairing.base.missing or pairing.head.missing)
        paired = _paired(pairing, scored_upto)
        last = scored_upto >= len(items) or out_of_budget
        if len(paired) < gate.min_items and not last:
            continue
        looks += 1  # a look skipped above spends nothing; one stopped by the budget spends what is left
        level, spent = look_level(scored_upto, len(items), alpha=gate.alpha, spent=spent, sequential=gate.sequential, last=last)
        base = [pairing.base.scores[i].mean for i in paired]
        head = [pairing.head.scores[i].mean for i in paired]
        decision = decide(base, head, gate=gate, level=level)
        log.info("%s look %d: n=%d level=%.4g -> %s", pairing.common["prompt_id"], looks, len(paired), level, decision.verdict)
        if decision.verdict != "inconclusive" or last:
            break
    return _Run(decision, looks, scored_upto, out_of_budget)


def _noise(pairing: _Pairing, paired: list[str], repeats: int) -> Noise | None:
    """Flip rates (chance that two repeats of an item disagree on pass/fail), per item and per side."""
    if repeats < 2 or not paired:
        return None
    base = {i: pairing.base.scores[i].flip_rate or 0.0 for i in paired}
    head = {i: pairing.head.scores[i].flip_rate or 0.0 for i in paired}
    flaky = sorted((i for i in paired if base[i] or head[i]), key=lambda i: -(base[i] + head[i]))
    return Noise(
        repeats=repeats,
        base_flip_rate=sum(base.values()) / len(paired),
        head_flip_rate=sum(head.values()) / len(paired),
        flaky=tuple((i, base[i], head[i]) for i in flaky[:FLAKY_SHOWN]),
        flaky_items=len(flaky),
    )


def _within_variance(scores: list[tuple[ItemScore, ItemScore]]) -> float | None:
    """Mean variance of one sample's difference within an item (pass/fail samples), base plus head."""

    def var(s: ItemScore) -> float:
        p = s.passes / s.samples
        return p * (1 - p) * s.samples / (s.samples - 1) if s.samples > 1 else 0.0

    if not scores or scores[0][0].samples < 2:
        return None
    return sum(var(b) + var(h) for b, h in scores) / len(scores)


def _power(pairing: _Pairing, decision: Decision | None, paired: list[str], gate: GateConfig) -> Power:
    base = [pairing.base.scores[i].mean for i in paired]
    head = [pairing.head.scores[i].mean for i in paired]
    binary = is_binary(base) and is_binary(head) if paired else gate.repeats == 1
    diffs = [h - b for b, h in zip(base, head, strict=True)]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else None
    power = detectable(len(pairing.items), gate, binary=binary, sd=sd)
    if decision is None:
        return power
    within = _within_variance([(pairing.base.scores[i], pairing.head.scores[i]) for i in paired])
    return with_advice(power, decision, base, head, len(pairing.items), gate, within=within)


def _untrusted(verdict: str, decision: Decision | None, calibration: JudgeCalibration | None) -> tuple[str, str | None]:
    """An untrusted judge turns a decided verdict into inconclusive (and says what it would have been)."""
    if calibration is None or calibration.trusted or decision is None:
        return verdict, None
    note = calibration.verdict_note()
    if verdict in ("regressed", "improved", "unchanged"):
        note += f" (the scores alone say {verdict})"
        return "inconclusive", note
    return verdict, note


async def _calibrate(scorer: Scorer, render_with: Prompt | None) -> JudgeCalibration | None:
    """The head judge on the suite's labeled examples, their inputs rendered with the base version (the one
    the labels were written against) when it can render them, else with the head's."""
    if not has_examples(scorer):
        return None
    prompt = render_with
    if prompt is not None:
        try:
            validate_examples(scorer, prompt)
        except GradgateError:
            prompt = None
    return await calibrate_judge(scorer, prompt)


def _skips_scoring(scorer: Scorer, calibration: JudgeCalibration | None) -> bool:
    """An untrusted judge decides nothing: its suite's items are not scored unless judge.score_untrusted."""
    return calibration is not None and not calibration.trusted and not scorer.judge.score_untrusted


def _unscored_note(calibration: JudgeCalibration, items: int) -> str:
    return (
        f"{calibration.verdict_note()}: its {items} items were not scored, since this judge's scores cannot decide "
        "the verdict (judge.score_untrusted: true scores them anyway)"
    )


async def _gate_changed(session: Session, change: PromptChange, cache: ScoreCache, prefix: str) -> PromptVerdict:
    prepared = _prepare(session, change, cache, prefix)
    if isinstance(prepared, PromptVerdict):
        return prepared
    if has_examples(prepared.head.scorer):
        validate_examples(prepared.head.scorer)  # a bad reference is exit 2, before any call
    # The judge first (its calls are cached between runs like any other): an untrusted one decides nothing.
    calibration = await _calibrate(prepared.head.scorer, prepared.base.target.prompt)
    if _skips_scoring(prepared.head.scorer, calibration):
        assert calibration is not None
        return _unscored(session, prepared, calibration)
    run = await _sequential(session, prepared)
    return _verdict(session, prepared, run, calibration)


def _unscored(session: Session, pairing: _Pairing, calibration: JudgeCalibration) -> PromptVerdict:
    end, start, gate = _usage(session.budget), pairing.start, session.config.gate
    return PromptVerdict(
        verdict="inconclusive",
        calls=end.calls - start.calls,
        cached_calls=end.cached - start.cached,
        cost_usd=end.cost - start.cost,
        note=_unscored_note(calibration, len(pairing.items)),
        infra_failure=calibration.incomplete is not None,  # the budget ran out while judging the examples
        power=detectable(len(pairing.items), gate, binary=gate.repeats == 1),
        judge=calibration,
        **pairing.common,
    )


def _verdict(session: Session, pairing: _Pairing, run: _Run, calibration: JudgeCalibration | None) -> PromptVerdict:
    gate, items, end = session.config.gate, pairing.items, _usage(session.budget)
    start, decision = pairing.start, run.decision
    paired = _paired(pairing)
    requests = (end.calls - start.calls) + (end.cached - start.cached)
    remaining = len(items) - run.scored_upto
    stopped_early = remaining > 0 and not run.out_of_budget
    undecided = decision is None or decision.verdict == "inconclusive"
    notes = []
    if run.out_of_budget:
        notes.append(
            f"the budget ran out after {len(paired)} of {len(items)} items" + (" before a decision" if undecided else "")
        )
    unjudged = pairing.base.unjudged | pairing.head.unjudged
    if unjudged:
        notes.append(f"{len(unjudged)} items left out: the judge gave no verdict ({', '.join(sorted(unjudged)[:5])})")
    verdict, judge_note = _untrusted(decision.verdict if decision else "inconclusive", decision, calibration)
    if judge_note:
        notes.append(judge_note)
    return PromptVerdict(
        verdict=verdict,  # type: ignore[arg-type]
        base_mean=sum(pairing.base.scores[i].mean for i in paired) / len(paired) if paired else None,
        head_mean=sum(pairing.head.scores[i].mean for i in paired) / len(paired) if paired else None,
        decision=decision,
        items_scored=len(paired),
        calls=end.calls - start.calls,
        base_calls=pairing.base.calls,
        cached_calls=end.cached - start.cached,
        base_from_score_cache=pairing.base.from_cache,
        head_from_score_cache=pairing.head.from_cache,
        cost_usd=end.cost - start.cost,
        looks=run.looks,
        stopped_early=stopped_early,
        calls_saved=round(remaining * requests / run.scored_upto) if stopped_early and run.scored_upto else 0,
        note="; ".join(notes) or None,
        infra_failure=run.out_of_budget and undecided,
        power=_power(pairing, decision, paired, gate),
        noise=_noise(pairing, paired, gate.repeats),
        judge=calibration,
        unjudged=len(unjudged),
        **pairing.common,
    )


# -- new prompts and the whole change set ----------------------------------------------------------------


async def _score_new(session: Session, change: PromptChange, cache: ScoreCache, prefix: str) -> PromptVerdict:
    assert change.head is not None
    path, line = _location(change, prefix)
    start = _usage(session.budget)
    items = list(change.head.suite.items)
    side = Side.open(session, change.head, cache)
    if has_examples(side.scorer):
        validate_examples(side.scorer)
    calibration = await _calibrate(side.scorer, None)
    unscored = _skips_scoring(side.scorer, calibration)
    if not unscored:
        await side.score(items, session.config.gate.repeats)
    end = _usage(session.budget)
    scores = side.scores
    note = None if not side.missing else f"the budget ran out after {len(scores)} of {len(items)} items"
    if unscored:
        assert calibration is not None
        note = _unscored_note(calibration, len(items))
    binary = is_binary([s.mean for s in scores.values()])
    return PromptVerdict(
        prompt_id=change.prompt_id,
        verdict="new",
        path=path,
        line=line,
        reasons=change.reasons,
        head_mean=sum(s.mean for s in scores.values()) / len(scores) if scores else None,
        items_scored=len(scores),
        items_total=len(items),
        calls=end.calls - start.calls,
        cached_calls=end.cached - start.cached,
        head_from_score_cache=side.from_cache,
        cost_usd=end.cost - start.cost,
        note=note,
        power=detectable(len(items), session.config.gate, binary=binary, sd=_eval_sd([s.mean for s in scores.values()])),
        judge=calibration,
        unjudged=len(side.unjudged),
    )


def _eval_sd(scores: list[float]) -> float | None:
    """For one version only: the paired differences' spread as if base and head were independent (√2 s)."""
    return unpaired_sd(scores) if len(scores) > 1 else None


async def gate_changes(session: Session, changes: ChangeSet, done: list[PromptVerdict], cache: ScoreCache | None = None) -> None:
    """Score every changed and new prompt, appending each verdict to `done` as it is reached (`cache`: the run's
    score cache, when the caller gates prompts one call at a time; else one is made)."""
    cache = cache if cache is not None else score_cache_for(session)
    for change in changes.changes:
        if change.status == "changed":
            done.append(await _gate_changed(session, change, cache, changes.git_prefix))
        elif change.status == "new":
            done.append(await _score_new(session, change, cache, changes.git_prefix))
