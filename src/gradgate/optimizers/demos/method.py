"""Demonstrations: bootstrapped worked examples in the prompt's demonstrations slot, chosen by random search on dev.

The idea of DSPy's BootstrapFewShotWithRandomSearch, on gradgate's budget and trajectory:

1. bootstrap: the task model answers training items with the current prompt (in seeded order, a chunk at a
   time, until `3 × max_demos` are answered correctly or `bootstrap_items` were tried); only items it answers
   correctly (the scorer says `passed`) become demonstrations, with the model's own output as the answer;
2. random search: `candidate_sets` seeded draws of 1..`max_demos` demonstrations in random order (the first is the
   first `max_demos` in bootstrap order), as many as the budget left can score, each written into the slot
   (`gradgate.core.demos`) of the prompt;

   When the suite ranks fixed options, the demonstrations are drawn balanced over the answers shown. A model
   biased towards one label answers mostly the items of that label correctly, so sets drawn from its correct
   answers would show that label again and again and push the bias further (the majority-label bias of Zhao et
   al., "Calibrate Before Use", 2021). Bootstrapping then also goes on until every option has its share of
   correct answers, and every set shows the options in turns (as far as the pool has them);
3. the sets compete on dev through successive halving (`optimizers.halving`); the zero-shot original is c0000.

It needs no rewriter: it works with the weakest optimizer model, or none. GRAD-SUM and GPO can run the same search
on top of their best instructions (`demos: true` in their settings); `search_demos` is that shared step.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from gradgate.core.budget import Holdback
from gradgate.core.demos import with_slot
from gradgate.core.method_settings import DemosSettings, parse_settings
from gradgate.core.suites import Item
from gradgate.errors import BudgetExhausted
from gradgate.optimizers.base import Candidate, GradientNote, OptimizeContext, Optimizer
from gradgate.optimizers.demos.prompts import Demo, format_demos
from gradgate.optimizers.halving import Proposal, evaluate_pool, plan_calls

log = logging.getLogger(__name__)

BOOTSTRAP_CHUNK = 8  # training items answered per bootstrap round
POOL_FACTOR = 3  # bootstrap stops once it has this many times max_demos correct answers


def shown_labels(ctx: OptimizeContext) -> tuple[str, ...]:
    """The answers a demonstration can show when the suite ranks fixed options; () when answers are free text."""
    return ctx.target.suite.spec.scoring.ranked_options


def label_counts(pool: Sequence[Demo], labels: Sequence[str]) -> dict[str, int]:
    """How many demonstrations in the pool show each label."""
    return {label: sum(d.answer == label for d in pool) for label in labels}


def pool_is_full(pool: Sequence[Demo], cfg: DemosSettings, labels: Sequence[str]) -> bool:
    """Enough correct answers to draw from: POOL_FACTOR × max_demos, and with labels a share of them for as many
    options as one set can show (every option of a binary task; max_demos of seventeen counts)."""
    if len(pool) < POOL_FACTOR * cfg.max_demos:
        return False
    if not labels:
        return True
    shown = min(len(labels), cfg.max_demos)
    share = POOL_FACTOR * math.ceil(cfg.max_demos / shown)
    return sum(n >= share for n in label_counts(pool, labels).values()) >= shown


async def bootstrap(ctx: OptimizeContext, body: str, cfg: DemosSettings, labels: Sequence[str] = ()) -> list[Demo]:
    """Demonstrations from training items the task model answers correctly with `body` (never from dev or test);
    with `labels` (`shown_labels`), until the pool holds a share of each (`pool_is_full`)."""
    order = sorted(ctx.splits.train, key=lambda i: random.Random(f"demos:{ctx.seed}:{i.id}").random())
    order = order[: cfg.bootstrap_items]
    names = list(dict.fromkeys(ctx.target.prompt.with_body(body).variables))
    pool: list[Demo] = []
    for start in range(0, len(order), BOOTSTRAP_CHUNK):
        chunk: Sequence[Item] = order[start : start + BOOTSTRAP_CHUNK]
        evaluation = await ctx.score_text(body, chunk)
        for result in evaluation.scored:
            if result.passed and result.output.strip() and len(result.output) <= cfg.max_answer_chars:
                values = tuple((n, str(result.vars.get(n, ""))) for n in names)
                pool.append(Demo(values=values, answer=result.output.strip(), item_id=result.item_id))
        if not evaluation.complete:
            if not pool:
                raise BudgetExhausted(f"budget exhausted while bootstrapping demonstrations: {evaluation.stopped_reason}")
            break
        if pool_is_full(pool, cfg, labels):
            break
    return pool


def in_turns(groups: Sequence[Sequence[Demo]], size: int) -> tuple[Demo, ...]:
    """Up to `size` demonstrations taken from the groups in turns (a group that runs out is skipped)."""
    out: list[Demo] = []
    for rank in range(max((len(g) for g in groups), default=0)):
        out.extend(g[rank] for g in groups if rank < len(g))
    return tuple(out[:size])


def demo_sets(
    pool: Sequence[Demo], cfg: DemosSettings, rng: random.Random, count: int, labels: Sequence[str] = ()
) -> list[tuple[Demo, ...]]:
    """Up to `count` distinct sets: the first `max_demos` in pool order, then seeded random sizes and orders.

    With `labels`, every set takes the labels in turns: the first from the pool order, the others from a shuffled
    pool with a random size of at least one demonstration per label (where max_demos allows)."""
    if not pool or count <= 0:
        return []
    groups = [[d for d in pool if d.answer == label] for label in labels]
    groups = [g for g in groups if g]
    smallest = min(len(groups), cfg.max_demos) if groups else 1
    first = in_turns(groups, cfg.max_demos) if groups else tuple(pool[: cfg.max_demos])
    sets: list[tuple[Demo, ...]] = [first]
    attempts = 0
    while len(sets) < count and attempts < 20 * count:
        attempts += 1
        size = rng.randint(smallest, min(cfg.max_demos, len(pool)))
        if groups:
            shuffled = [rng.sample(g, len(g)) for g in rng.sample(groups, len(groups))]
            drawn = in_turns(shuffled, size)
        else:
            drawn = tuple(rng.sample(list(pool), size))
        if drawn not in sets:
            sets.append(drawn)
    return sets[:count]


def affordable_sets(ctx: OptimizeContext, cfg: DemosSettings, n_bases: int) -> int:
    """How many sets per base the calls left can score through halving (the configured number at most)."""
    left = ctx.budget.calls_left()
    if left is None:
        return cfg.candidate_sets
    per_item = ctx.scorer.calls_per_item
    best = 0
    for count in range(1, cfg.candidate_sets + 1):
        if plan_calls(count * n_bases, len(ctx.splits.dev), cfg.halving, per_item) <= left:
            best = count
    return best


async def search_demos(ctx: OptimizeContext, bases: Sequence[Candidate], cfg: DemosSettings, *, step: int) -> list[Candidate]:
    """Bootstrap from the first base, then score demonstration sets written into every base's slot."""
    if not bases or not ctx.splits.train:
        return []
    labels = shown_labels(ctx)
    pool = await bootstrap(ctx, bases[0].text, cfg, labels)
    count = affordable_sets(ctx, cfg, len(bases))
    sets = demo_sets(pool, cfg, random.Random(f"demos:{ctx.seed}:{step}"), count, labels)
    per_label = " (" + ", ".join(f"{label}: {n}" for label, n in label_counts(pool, labels).items()) + ")"
    summary = (
        f"demos: {len(pool)} training item(s) answered correctly became demonstrations{per_label if labels else ''}; "
        f"{len(sets)} set(s) of up to {cfg.max_demos} tried on {len(bases)} instruction(s)"
        + ("" if sets else " (no correct answer to show, or no budget left)")
    )
    proposals = [
        Proposal(
            text=with_slot(base.text, format_demos(chosen)),
            parent=base.id,
            origin="demos",
            note="demos: " + ", ".join(d.item_id for d in chosen),
        )
        for base in bases
        for chosen in sets
    ]
    children = await evaluate_pool(ctx, proposals, step=step, halving=cfg.halving)
    ctx.trajectory.add_gradient(
        GradientNote(
            step=step,
            parent=bases[0].id,
            summary=summary,
            per_item=tuple(f"{d.item_id}: {d.answer[:80]}" for d in pool),
            children=tuple(c.id for c in children),
        )
    )
    log.info("%s; best %s", summary, max((c.dev_score or 0.0 for c in children), default=None))
    return children


class Demos(Optimizer):
    name: ClassVar[str] = "demos"
    needs_expected: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config = parse_settings(DemosSettings, self.settings, "optimize.demos")

    async def optimize(self, ctx: OptimizeContext) -> None:
        if ctx.state.get("done"):
            return
        original = ctx.cached_candidate(ctx.original)
        if original is None:
            original = await ctx.evaluate(ctx.original, step=0, parent=None, origin="initial")
        await search_demos(ctx, [original], self.config, step=1)
        ctx.save_state({"done": True})


# -- demonstrations alongside another method's instructions ---------------------------------------------------------

DEMOS_SHARE = 0.5  # of the calls left when the instruction search starts, kept for the demonstrations step
DEMOS_BASES = 2  # best distinct instructions that get demonstration sets


async def then_demos(
    ctx: OptimizeContext, search: Callable[[], Awaitable[None]], cfg: DemosSettings | None, *, step: int
) -> None:
    """Run the instruction search (`search()`), then, with `cfg`, demonstration sets on its
    best instructions; the search may use only 1 − DEMOS_SHARE of the calls left, so the demonstrations get theirs."""
    if cfg is None:
        await search()
        return
    left = ctx.budget.calls_left()
    hold = int(left * DEMOS_SHARE) if left is not None else 0
    try:
        with ctx.budget.phase(Holdback(calls=hold)):
            await search()
    except BudgetExhausted as exc:
        log.info("instruction search stopped (%s); demonstrations next", exc.message)
    ranked = sorted(ctx.trajectory.scored(), key=lambda c: -(c.dev_score or 0.0))
    bases: list[Candidate] = []
    for candidate in ranked:
        if all(b.text != candidate.text for b in bases):
            bases.append(candidate)
        if len(bases) >= DEMOS_BASES:
            break
    await search_demos(ctx, bases, cfg, step=step)
