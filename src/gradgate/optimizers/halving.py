"""Successive halving on dev: many candidates on a few items, the best on more, the finalists on all.

    finalists = await evaluate_pool(ctx, proposals, step=3, halving=HalvingSettings())

Rungs: every fresh candidate is scored on the first `min_items` dev items; the best 1/`eta` (at least one, and
those tied with the last of them while the budget can finish them) go on to `eta` times as many items, and so on
until the survivors are scored on the whole dev set. Each rung scores only the items a candidate has not been
scored on yet, so a candidate costs what its last rung's items cost, never more: with 20 dev items, `min_items` 4
and `eta` 3, twelve candidates cost 12·4 + 4·8 + 2·8 = 96 item scorings instead of 240 (more only when a tie is
promoted with calls to spare). Candidates dropped at a rung are recorded in the trajectory with their partial
score and `dev_items` (how many items it is over); only finalists, scored on all of dev, can become the best. The
held-out test confirmation is untouched. Before any call every proposal passes `OptimizeContext.screen`
(candidate hygiene).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradgate.core.method_settings import HalvingSettings
from gradgate.core.suites import Item
from gradgate.errors import BudgetExhausted
from gradgate.optimizers.base import Candidate, OptimizeContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proposal:
    """A candidate body before it is scored."""

    text: str
    parent: str | None
    origin: str  # "edit", "sample", "mutation", "demos", ...
    note: str | None = None
    edit_words: int | None = None


DEFAULT_HALVING = HalvingSettings()  # the settings' own default (core.method_settings)


def rungs(n_items: int, settings: HalvingSettings) -> list[int]:
    """Item counts of the rungs, ending with all `n_items`."""
    sizes: list[int] = []
    size = min(settings.min_items, n_items)
    while size < n_items:
        sizes.append(size)
        size *= settings.eta
    return [*sizes, n_items]


def plan_calls(n_candidates: int, n_items: int, settings: HalvingSettings | None, per_item: int = 1) -> int:
    """Scoring calls `n_candidates` fresh candidates cost (`per_item` calls per item scored) when no tie at a cut
    needs promoting; tied candidates go on only with calls to spare (`_promoted`), so this is what a budget must
    allow."""
    if settings is None or n_candidates <= 1:
        return n_candidates * n_items * per_item
    total, alive, done = 0, n_candidates, 0
    for size in rungs(n_items, settings):
        total += alive * (size - done)
        done = size
        alive = max(1, math.ceil(alive / settings.eta))
    return total * per_item


async def evaluate_pool(
    ctx: OptimizeContext,
    proposals: Sequence[Proposal],
    *,
    step: int,
    items: Sequence[Item] | None = None,
    halving: HalvingSettings | None,
) -> list[Candidate]:
    """Screen, then score the proposals on dev (`items`); returns the candidates with a full dev score.

    A proposal whose text was scored before returns the earlier record (no call); duplicates in the pool are
    scored once. Without `halving` (or with one fresh proposal), each is scored on all items.
    """
    items = list(ctx.splits.dev if items is None else items)
    out: list[Candidate] = []
    fresh: list[Proposal] = []
    for proposal in proposals:
        screened = ctx.screen(
            proposal.text,
            step=step,
            parent=proposal.parent,
            origin=proposal.origin,
            note=proposal.note,
            edit_words=proposal.edit_words,
        )
        if isinstance(screened, Candidate):
            if screened.rejected is None and screened.dev_score is not None and screened not in out:
                out.append(screened)
            continue
        if all(p.text != screened.text for p in fresh):
            fresh.append(Proposal(screened.text, screened.parent, screened.origin, screened.note, screened.edit_words))
    fresh = _affordable(ctx, fresh, len(items), halving, step)
    if halving is None or len(fresh) <= 1:
        for proposal in fresh:
            out.append(
                await ctx.evaluate(
                    proposal.text,
                    step=step,
                    parent=proposal.parent,
                    origin=proposal.origin,
                    items=items,
                    edit_words=proposal.edit_words,
                    note=proposal.note,
                    screened=True,
                )
            )
        return out
    return out + await _halve(ctx, fresh, items, step, halving)


def _affordable(
    ctx: OptimizeContext, fresh: list[Proposal], n_items: int, halving: HalvingSettings | None, step: int
) -> list[Proposal]:
    """The first proposals whose scoring the calls left can finish (a pool cut short halfway would leave no
    finalist); the rest are left out, unrecorded, so a resumed run scores them."""
    left, per_item = ctx.budget.calls_left(), ctx.scorer.calls_per_item
    keep = len(fresh)
    while left is not None and keep > 1 and plan_calls(keep, n_items, halving, per_item) > left:
        keep -= 1
    if keep < len(fresh):
        log.info("step %d: the %s calls left can score %d of %d candidates; the rest are left out", step, left, keep, len(fresh))
    return fresh[:keep]


async def _halve(
    ctx: OptimizeContext, fresh: list[Proposal], items: list[Item], step: int, settings: HalvingSettings
) -> list[Candidate]:
    # item id -> score, or None for an item the scorer leaves out of every mean (no judge verdict)
    scores: dict[int, dict[str, float | None]] = {i: {} for i in range(len(fresh))}
    alive = list(range(len(fresh)))
    sizes = rungs(len(items), settings)
    for rung, size in enumerate(sizes):
        final = size == len(items) or len(alive) == 1
        size = len(items) if final else size
        for index in alive:
            missing = [i for i in items[:size] if i.id not in scores[index]]
            if not missing:
                continue
            evaluation = await ctx.score_text(fresh[index].text, missing)
            if not evaluation.complete:
                raise BudgetExhausted(f"budget exhausted while scoring a candidate: {evaluation.stopped_reason}")
            counted = evaluation.scores_by_id()
            scores[index].update({r.item_id: counted.get(r.item_id) for r in evaluation.items})

        def mean(index: int, n: int = size) -> float:
            values = [v for i in items[:n] if (v := scores[index].get(i.id)) is not None]
            return sum(values) / len(values) if values else 0.0

        if final:
            return [
                _record(ctx, fresh[i], step, mean(i), None, [scores[i].get(x.id) or 0.0 for x in items], items) for i in alive
            ]
        ranked = sorted(alive, key=lambda i: (-mean(i), i))  # ties: the earlier proposal
        keep = _promoted(ctx, [mean(i) for i in ranked], sizes[rung:], settings)
        for index in ranked[keep:]:
            note = f"halving: dropped at rung {rung + 1} ({size} of {len(items)} dev items)"
            _record(ctx, fresh[index], step, mean(index), size, None, items, extra=note)
        alive = sorted(ranked[:keep])
    return []


def _promoted(ctx: OptimizeContext, ranked_means: list[float], sizes: list[int], settings: HalvingSettings) -> int:
    """How many of the ranked candidates go on: the best 1/eta, and those tied with the last of them.

    On a small first rung of a pass/fail suite many candidates tie (4 items allow only 5 scores); cutting a tie by
    pool order would drop candidates the rung cannot tell apart. Tied ones go on together while the calls left can
    still finish every rung for them; otherwise the earlier proposals among the tied go on."""
    keep = max(1, math.ceil(len(ranked_means) / settings.eta))
    tied = keep
    while tied < len(ranked_means) and ranked_means[tied] == ranked_means[keep - 1]:
        tied += 1
    left, per_item = ctx.budget.calls_left(), ctx.scorer.calls_per_item
    while tied > keep and left is not None and _rest_calls(tied, sizes, settings, per_item) > left:
        tied -= 1
    return tied


def _rest_calls(alive: int, sizes: list[int], settings: HalvingSettings, per_item: int) -> int:
    """Calls `alive` candidates scored on `sizes[0]` items still cost to finish the rungs `sizes[1:]`."""
    total, done = 0, sizes[0]
    for size in sizes[1:]:
        total += alive * (size - done)
        done = size
        alive = max(1, math.ceil(alive / settings.eta))
    return total * per_item


def _record(
    ctx: OptimizeContext,
    proposal: Proposal,
    step: int,
    score: float,
    dev_items: int | None,
    full: list[float] | None,
    items: list[Item],
    extra: str | None = None,
) -> Candidate:
    note = "; ".join(x for x in (proposal.note, extra) if x) or None
    candidate = ctx.record(
        proposal.text,
        step=step,
        parent=proposal.parent,
        origin=proposal.origin,
        dev_score=score,
        dev_items=dev_items,
        edit_words=proposal.edit_words,
        note=note,
    )
    if full is not None:
        ctx.remember(proposal.text, items, full)
    return candidate
