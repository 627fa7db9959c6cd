"""Did a change make a prompt worse? Base and head scored on the same items, decided by a paired test.

    await gate_changes(session, changes, done)   # appends one PromptVerdict per changed or new prompt

Each changed prompt's base and head are scored on the paired items in batches, deciding after each batch
with a paired test (`decide`, alpha spent by `spending`). Base scores are cached by effective-content hash
(`BaseScoreCache`), so a pull request pays only for its head. The job around it (reports, comment, exit
code) is `gradgate.app.check_job`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scipy.stats import norm

from gradgate.core.budget import BudgetTracker
from gradgate.core.config import Config, GateConfig
from gradgate.core.discovery import Target
from gradgate.core.files import atomic_write_text
from gradgate.core.suites import Item
from gradgate.errors import BudgetExhausted, GradgateError
from gradgate.gate.changes import ChangeSet, PromptChange, config_sections
from gradgate.gate.report import (
    Decision,
    PromptVerdict,
)
from gradgate.models.session import Session
from gradgate.scoring.scorer import Scorer

log = logging.getLogger(__name__)

BASE_CACHE_VERSION = 1
BOOTSTRAP_SEED = 0


# -- the decision --------------------------------------------------------------------------------------


def spending(fraction: float, alpha: float) -> float:
    """Cumulative alpha an O'Brien-Fleming-type (Lan-DeMets) spending function allows at `fraction`."""
    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return alpha
    z = float(norm.ppf(1 - alpha / 2))
    return float(min(alpha, 2 * (1 - norm.cdf(z / math.sqrt(fraction)))))


def decide(
    base: Sequence[float],
    head: Sequence[float],
    *,
    gate: GateConfig,
    level: float,
    seed: int = BOOTSTRAP_SEED,
) -> Decision:
    """The verdict for paired per-item scores at significance `level` (see gate_report.DECISION_RULE)."""
    from gradgate.core.stats import is_binary, mcnemar_exact, paired_difference

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
            f"not decided at level {level:.3g}: more items or repeats would tell",
        )
    return Decision(verdict, n, mean, low, high, level, p_value, reason)  # type: ignore[arg-type]


# -- base score cache ----------------------------------------------------------------------------------


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _item_key(item: Item) -> str:
    return _digest([item.id, item.vars, item.expected, list(item.assertions)])


class BaseScoreCache:
    """Per-item scores of base prompt versions, so a pull request pays only for its head.

    One JSON file per (base prompt text, suite settings, scoring config, repeats); inside, one score per item
    content hash, so an early-stopped run's scores are reused and later runs add to them.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @staticmethod
    def key(target: Target, config: Config) -> str:
        sections = {k: v for k, v in config_sections(config).items() if k != "gate"}
        return _digest(
            {
                "v": BASE_CACHE_VERSION,
                "prompt": target.prompt.expanded,
                "description": target.prompt.description,
                "suite": target.suite.spec.model_dump(exclude={"items", "dataset"}),
                "config": sections,
                "repeats": config.gate.repeats,
            }
        )

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.json"

    def load(self, key: str) -> dict[str, float]:
        path = self._path(key)
        if path is None:
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        scores = data.get("scores") if isinstance(data, dict) else None
        return {str(k): float(v) for k, v in scores.items()} if isinstance(scores, dict) else {}

    def save(self, key: str, scores: Mapping[str, float]) -> None:
        path = self._path(key)
        if path is None or not scores:
            return
        try:
            atomic_write_text(path, json.dumps({"scores": dict(scores)}, sort_keys=True))
        except OSError as exc:  # a read-only cache must not fail the gate
            log.warning("could not write the gate's base score cache: %s", exc)


# -- scoring -------------------------------------------------------------------------------------------


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


async def _score_items(scorer: Scorer, target: Target, items: Sequence[Item], repeats: int) -> dict[str, float]:
    """Mean score over `repeats` samples per item; items the budget cut short are left out."""

    async def one(item: Item) -> tuple[str, float | None]:
        try:
            samples = [await scorer.score_item(target.prompt, item, sample=r) for r in range(repeats)]
        except BudgetExhausted:
            return item.id, None
        return item.id, sum(s.score for s in samples) / len(samples)

    results = await asyncio.gather(*(one(item) for item in items))
    return {item_id: score for item_id, score in results if score is not None}


def _location(change: PromptChange, prefix: str) -> tuple[str, int]:
    target = change.head or change.base
    if target is None:  # pragma: no cover - a change always has one side
        return "", 1
    return prefix + target.prompt.rel_path, target.prompt.body_line


async def _gate_changed(session: Session, change: PromptChange, base_cache: BaseScoreCache, prefix: str) -> PromptVerdict:
    assert change.base is not None and change.head is not None  # status "changed" has both sides
    config, budget, gate = session.config, session.budget, session.config.gate
    path, line = _location(change, prefix)
    base_ids = {i.id for i in change.base.suite.items}
    items = _item_order([i for i in change.head.suite.items if i.id in base_ids])
    common: dict[str, Any] = dict(
        prompt_id=change.prompt_id, path=path, line=line, reasons=change.reasons, items_total=len(items)
    )
    if not items:
        return PromptVerdict(verdict="inconclusive", note="base and head suites share no item ids", **common)  # type: ignore[arg-type]
    suite = replace(change.head.suite, items=tuple(items))
    head_target = Target(prompt=change.head.prompt, suite=suite)
    base_target = Target(prompt=change.base.prompt, suite=suite)
    head_scorer = Scorer(session.gateway, config, head_target)
    try:
        base_scorer = Scorer(session.gateway, config, base_target)
    except GradgateError as exc:
        return PromptVerdict(
            verdict="inconclusive",
            note=f"the base version cannot be scored on the head suite: {exc.message}",
            **common,
        )  # type: ignore[arg-type]

    cache_key = base_cache.key(base_target, config)
    stored = base_cache.load(cache_key)
    base_scores: dict[str, float] = {}
    head_scores: dict[str, float] = {}
    from_cache = 0
    start = _usage(budget)
    base_calls = 0
    first = max(gate.min_items, gate.batch_size) if gate.sequential else len(items)
    scored_upto, spent, looks = 0, 0.0, 0
    decision: Decision | None = None
    out_of_budget = False
    while scored_upto < len(items):
        upto = min(len(items), first if scored_upto == 0 else scored_upto + gate.batch_size)
        batch = items[scored_upto:upto]
        todo = []
        for item in batch:
            key = _item_key(item)
            if key in stored:
                base_scores[item.id] = stored[key]
                from_cache += 1
            else:
                todo.append(item)
        before = _usage(budget).calls
        fresh = await _score_items(base_scorer, base_target, todo, gate.repeats)
        base_calls += _usage(budget).calls - before
        base_scores.update(fresh)
        stored.update({_item_key(i): fresh[i.id] for i in todo if i.id in fresh})
        base_cache.save(cache_key, stored)
        head_scores.update(await _score_items(head_scorer, head_target, batch, gate.repeats))
        scored_upto = upto
        out_of_budget = any(i.id not in base_scores or i.id not in head_scores for i in batch)
        paired = [i.id for i in items[:scored_upto] if i.id in base_scores and i.id in head_scores]
        last = scored_upto >= len(items) or out_of_budget
        if len(paired) < gate.min_items and not last:
            continue
        looks += 1
        cumulative = spending(len(paired) / len(items), gate.alpha) if gate.sequential and not last else gate.alpha
        level = max(cumulative - spent, 1e-12)
        spent = cumulative
        decision = decide([base_scores[i] for i in paired], [head_scores[i] for i in paired], gate=gate, level=level)
        log.info("%s look %d: n=%d level=%.4g -> %s", change.prompt_id, looks, len(paired), level, decision.verdict)
        if decision.verdict != "inconclusive" or last:
            break
    end = _usage(budget)
    paired = [i.id for i in items if i.id in base_scores and i.id in head_scores]
    requests = (end.calls - start.calls) + (end.cached - start.cached)
    remaining = len(items) - scored_upto
    stopped_early = remaining > 0 and not out_of_budget
    saved = round(remaining * requests / scored_upto) if stopped_early and scored_upto else 0
    undecided = decision is None or decision.verdict == "inconclusive"
    note = None
    if out_of_budget:
        note = f"the budget ran out after {len(paired)} of {len(items)} items" + (" before a decision" if undecided else "")
    return PromptVerdict(
        verdict=decision.verdict if decision else "inconclusive",
        base_mean=sum(base_scores[i] for i in paired) / len(paired) if paired else None,
        head_mean=sum(head_scores[i] for i in paired) / len(paired) if paired else None,
        decision=decision,
        items_scored=len(paired),
        calls=end.calls - start.calls,
        base_calls=base_calls,
        cached_calls=end.cached - start.cached,
        base_from_score_cache=from_cache,
        cost_usd=end.cost - start.cost,
        looks=looks,
        stopped_early=stopped_early,
        calls_saved=saved,
        note=note,
        infra_failure=out_of_budget and undecided,
        **common,  # type: ignore[arg-type]
    )


async def _score_new(session: Session, change: PromptChange, prefix: str) -> PromptVerdict:
    assert change.head is not None
    path, line = _location(change, prefix)
    start = _usage(session.budget)
    items = list(change.head.suite.items)
    scores = await _score_items(
        Scorer(session.gateway, session.config, change.head), change.head, items, session.config.gate.repeats
    )
    end = _usage(session.budget)
    note = None if len(scores) == len(items) else f"the budget ran out after {len(scores)} of {len(items)} items"
    return PromptVerdict(
        prompt_id=change.prompt_id,
        verdict="new",
        path=path,
        line=line,
        reasons=change.reasons,
        head_mean=sum(scores.values()) / len(scores) if scores else None,
        items_scored=len(scores),
        items_total=len(items),
        calls=end.calls - start.calls,
        cached_calls=end.cached - start.cached,
        cost_usd=end.cost - start.cost,
        note=note,
    )


async def gate_changes(session: Session, changes: ChangeSet, done: list[PromptVerdict]) -> None:
    """Score every changed and new prompt, appending each verdict to `done` as it is reached."""
    cache_dir = session.repo / session.config.cache_dir / "gate-base" if session.config.cache_dir else None
    base_cache = BaseScoreCache(cache_dir)
    for change in changes.changes:
        if change.status == "changed":
            done.append(await _gate_changed(session, change, base_cache, changes.git_prefix))
        elif change.status == "new":
            done.append(await _score_new(session, change, changes.git_prefix))
