"""GPO: the optimizer model updates the prompt like a gradient-based optimizer updates weights.

Tang et al., "Unleashing the Potential of Large Language Models as Prompt Optimizers: An Analogical
Analysis with Gradient-based Model Optimizers" (2024). Each step:

1. update direction: retrieve part of the trajectory of step winners (the initial prompt first) —
   *relevance* (default: the current prompt plus the k-1 earlier winners most similar to it by
   sentence embedding), *recency* (the k-1 latest) or *importance* (the k-1 best scored);
2. meta-prompt: the task, those prompts with their dev scores, the current prompt, a few training
   examples with gold outputs, and the edit budget ("change at most N words");
3. generation-based refinement: sample `candidates_per_step` candidates, score each on dev; the best
   candidate not chosen before becomes the current prompt, even when it scores below the last one
   (the runner keeps the overall best anyway);
4. the edit budget decays from `edit_budget_start` to `edit_budget_end` words over the run (cosine).

Beyond the reference implementation, which only asks the model to respect the budget: the word-level
edit distance of every candidate from the current prompt is measured and logged (`edit_words`), and
candidates over budget are rejected without scoring or resampled (`over_budget`).

Beyond the paper, for weak optimizer models: each step adds `mutations` candidates from the mutation library
(`optimizers.mutations`) to the sampled ones; candidates are scored through successive halving on dev
(`halving`, on by default); `demos: true` keeps half the calls for demonstration sets on the best prompts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from gradgate.core.editdistance import word_edit_distance, words
from gradgate.core.method_settings import GPOSettings, Retrieval, Schedule, parse_settings
from gradgate.core.prompts import template_variables
from gradgate.core.suites import Item
from gradgate.models.embeddings import Embedder, cosine_similarities, load_embedder
from gradgate.optimizers import mutations
from gradgate.optimizers.base import Candidate, GradientNote, OptimizeContext, Optimizer
from gradgate.optimizers.demos.method import then_demos
from gradgate.optimizers.gpo.prompts import build_meta_prompt, format_score
from gradgate.optimizers.halving import Proposal, evaluate_pool
from gradgate.optimizers.hygiene import keep_layout, parse_prompt_reply

log = logging.getLogger(__name__)


WHERE = "gradgate.yaml:optimize.gpo"


def edit_budget(step: int, total_steps: int, start: int, end: int, kind: Schedule = "cosine") -> int:
    """Words step `step` (0-based) of `total_steps` may change: `start` first, `end` last."""
    if kind == "constant" or total_steps <= 1:
        return max(1, start)
    progress = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    if kind == "linear":
        weight = 1.0 - progress
    elif kind == "cosine":
        weight = (1.0 + math.cos(math.pi * progress)) / 2.0
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    return max(1, round(end + (start - end) * weight))


def retrieve(
    entries: Sequence[Candidate], current: Candidate, k: int, strategy: Retrieval, embedder: Embedder | None = None
) -> list[Candidate]:
    """The update direction: `current` plus up to k-1 other entries, returned in trajectory order.

    relevance: most similar to `current` by sentence embedding (ties: the later entry);
    recency: the latest; importance: the best dev scores (ties: the later entry).
    """
    others = [e for e in entries if e.id != current.id]
    want = max(0, k - 1)
    if want == 0 or not others:
        return [current]
    position = {e.id: i for i, e in enumerate(entries)}
    if strategy == "recency":
        picked = others[-want:]
    elif strategy == "importance":
        picked = sorted(others, key=lambda e: (e.dev_score or 0.0, position[e.id]), reverse=True)[:want]
    elif strategy == "relevance":
        if embedder is None:
            raise ValueError("relevance retrieval needs an embedder")
        vectors = embedder.embed([current.text] + [e.text for e in others])  # (1 + len(others), dim)
        sims = cosine_similarities(vectors[0], vectors[1:])
        order = sorted(range(len(others)), key=lambda i: (float(sims[i]), position[others[i].id]), reverse=True)
        picked = [others[i] for i in order[:want]]
    else:
        raise ValueError(f"unknown retrieval strategy {strategy!r}")
    chosen = {e.id for e in picked} | {current.id}
    ordered = [e for e in entries if e.id in chosen]
    if current.id not in position:
        ordered.append(current)
    return ordered


def parse_candidate(reply: str) -> str:
    """The new prompt in a reply (the shared parser's first block; '' when there is none)."""
    found = parse_prompt_reply(reply)
    return found[0] if found else ""


def example_input(item: Item) -> str:
    return "\n".join(f"{name}: {value}" for name, value in item.vars.items())


# --------------------------------------------------------------------------------------------------
# The optimizer


@dataclass(frozen=True)
class _Sampled:
    slot: int
    attempt: int
    text: str
    edit_words: int


class GPO(Optimizer):
    name: ClassVar[str] = "gpo"
    needs_expected: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config = parse_settings(GPOSettings, self.settings, WHERE)

    async def optimize(self, ctx: OptimizeContext) -> None:
        await then_demos(ctx, lambda: self._search(ctx), self.config.demos, step=self.config.steps + 1)

    async def _search(self, ctx: OptimizeContext) -> None:
        cfg = self.config
        embedder = load_embedder(cfg.embedder) if cfg.retrieval == "relevance" else None
        similarity = self._similarity_label(embedder)
        current, winners, start = await self._resume_or_start(ctx)
        log.info(
            "GPO: %d step(s) from step %d, %d candidate(s) each, retrieval %s (%s), budget %s %d->%d words",
            cfg.steps,
            start,
            cfg.candidates_per_step,
            cfg.retrieval,
            similarity,
            cfg.schedule,
            cfg.edit_budget_start,
            cfg.edit_budget_end,
        )
        for step in ctx.steps(cfg.steps, start=start):
            current = await self._step(ctx, step, current, winners, embedder, similarity)
            ctx.save_state(
                {"step": step + 1, "current": current.id, "winners": [w.id for w in winners], "similarity": similarity}
            )

    @staticmethod
    def _similarity_label(embedder: Embedder | None) -> str:
        if embedder is None:
            return "no embedder"
        if embedder.fallback_reason:
            return f"{embedder.name} (fallback: {embedder.fallback_reason})"
        return embedder.name

    async def _resume_or_start(self, ctx: OptimizeContext) -> tuple[Candidate, list[Candidate], int]:
        if ctx.state.resumed and ctx.state.get("current"):
            try:
                winners = [ctx.trajectory.get(i) for i in ctx.state.get("winners", [])]
                current = ctx.trajectory.get(ctx.state.get("current"))
            except StopIteration:
                log.warning("GPO state names candidates the trajectory lacks; starting afresh")
            else:
                if winners:
                    log.info("GPO: resuming at step %d from %s", ctx.state.get("step", 0), current.id)
                    return current, winners, int(ctx.state.get("step", 0))
        # The runner may have scored the original already; else score it here (the trajectory's first entry).
        initial = ctx.cached_candidate(ctx.original)
        if initial is None:
            initial = await ctx.evaluate(ctx.original, step=0, parent=None, origin="initial")
        return initial, [initial], 0

    async def _step(
        self,
        ctx: OptimizeContext,
        step: int,
        current: Candidate,
        winners: list[Candidate],
        embedder: Embedder | None,
        similarity: str,
    ) -> Candidate:
        cfg = self.config
        number = step + 1  # step 0 of the trajectory is the initial prompt
        budget = edit_budget(step, cfg.steps, cfg.edit_budget_start, cfg.edit_budget_end, cfg.schedule)
        direction = retrieve(winners, current, cfg.k, cfg.retrieval, embedder)
        messages = build_meta_prompt(
            task=ctx.task_description,
            earlier=[(e.text, e.dev_score or 0.0) for e in direction if e.id != current.id],
            current=current.text,
            current_score=current.dev_score or 0.0,
            examples=[(example_input(i), i.expected) for i in self._examples(ctx, step)],
            edit_budget=budget,
            placeholders=["{{" + v + "}}" for v in template_variables(ctx.original)],
            scale=cfg.score_scale,
        )
        log.debug("GPO step %d meta-prompt:\n%s", number, messages[-1]["content"])
        max_tokens = cfg.max_tokens or max(
            ctx.gateway.spec("optimizer").max_tokens, 2 * len(words(current.text)) + 2 * budget + 32
        )

        accepted, over = await self._sample(ctx, number, current, messages, budget, max_tokens)
        proposals = [Proposal(s.text, current.id, "sample", f"gpo step {number}", s.edit_words) for s in accepted]
        proposals += self._mutations(ctx, number, current)
        before = len(ctx.trajectory.candidates)
        finalists = await evaluate_pool(ctx, proposals, step=number, halving=cfg.halving)
        children: list[Candidate] = []
        for child in [*finalists, *ctx.trajectory.candidates[before:]]:
            if all(c.id != child.id for c in children):  # duplicate samples share one record
                children.append(child)
        chosen_texts = {w.text for w in winners}
        fresh = [c for c in children if c.dev_score is not None and c.dev_items is None and c.text not in chosen_texts]
        best = max(fresh, key=lambda c: (c.dev_score or 0.0, -children.index(c))) if fresh else None
        scale = cfg.score_scale
        summary = (
            f"GPO step {number}: edit budget {budget} words ({cfg.schedule} {cfg.edit_budget_start}->"
            f"{cfg.edit_budget_end}); update direction ({cfg.retrieval}, {similarity}, k={cfg.k}): "
            + ", ".join(f"{e.id} ({format_score(e.dev_score or 0.0, scale)})" for e in direction)
            + f"; current {current.id}; {len(accepted)}/{cfg.candidates_per_step} candidate(s) "
            f"within budget, {over} over budget; "
            + (
                f"chose {best.id} ({format_score(best.dev_score or 0.0, scale)})"
                if best
                else "no new candidate: the current prompt stays"
            )
        )
        per_item = tuple(
            f"{c.id}: {c.edit_words} word(s) changed, "
            + (f"score {format_score(c.dev_score, scale)}" if c.dev_score is not None else f"rejected ({c.rejected})")
            for c in children
        )
        ctx.trajectory.add_gradient(
            GradientNote(
                step=number, parent=current.id, summary=summary, per_item=per_item, children=tuple(c.id for c in children)
            )
        )
        log.info("%s", summary)
        if best is None:
            return current
        winners.append(best)
        return best

    def _mutations(self, ctx: OptimizeContext, number: int, current: Candidate) -> list[Proposal]:
        facts = mutations.facts_for(ctx.target.suite, ctx.task_description)
        rng = random.Random(f"{ctx.seed}:gpo:mutations:{number}")
        known = [c.text for c in ctx.trajectory.candidates]
        return [
            Proposal(text, current.id, "mutation", f"mutation {name}", word_edit_distance(current.text, text))
            for text, name in mutations.propose(current.text, facts, count=self.config.mutations, rng=rng, exclude=known)
        ]

    def _examples(self, ctx: OptimizeContext, step: int) -> list[Item]:
        pool = list(ctx.splits.train)
        count = min(self.config.examples_in_prompt, len(pool))
        # A fresh, seeded draw each step: the optimizer sees more of the task across the run.
        return random.Random(f"{ctx.seed}:gpo:{step}").sample(pool, count) if count else []

    async def _sample(
        self, ctx: OptimizeContext, number: int, current: Candidate, messages: list[dict[str, str]], budget: int, max_tokens: int
    ) -> tuple[list[_Sampled], int]:
        """Sample candidates; over-budget or empty ones are recorded as rejected (and resampled when set)."""
        cfg = self.config
        attempts = 1 + (cfg.max_resamples if cfg.over_budget == "resample" else 0)
        pending = list(range(cfg.candidates_per_step))
        accepted: list[_Sampled] = []
        over = 0
        for attempt in range(attempts):
            if not pending:
                break
            # Distinct `sample` per slot and attempt: distinct samples that still replay from the cache.
            samples = [attempt * cfg.candidates_per_step + slot for slot in pending]
            replies = await asyncio.gather(
                *(
                    ctx.gateway.complete(
                        "optimizer",
                        messages,
                        temperature=cfg.temperature,
                        max_tokens=max_tokens,
                        seed=ctx.seed + sample,
                        sample=sample,
                    )
                    for sample in samples
                )
            )
            retry = []
            for slot, reply in zip(pending, replies, strict=True):
                text = keep_layout(parse_candidate(reply.text), ctx.original)
                distance = word_edit_distance(current.text, text)
                if not text:
                    reason = "no prompt in the optimizer's reply"
                elif distance > budget:
                    over += 1
                    reason = f"edit distance {distance} > budget {budget}"
                else:
                    accepted.append(_Sampled(slot=slot, attempt=attempt, text=text, edit_words=distance))
                    continue
                self._reject(ctx, number, current, text or reply.text.strip(), reason, distance)
                retry.append(slot)
            pending = retry
        accepted.sort(key=lambda s: s.slot)
        return accepted, over

    @staticmethod
    def _reject(ctx: OptimizeContext, number: int, current: Candidate, text: str, reason: str, distance: int) -> None:
        # On resume the step replays from the cache: a rejection already recorded is not recorded twice.
        if any(c.step == number and c.text == text and c.rejected == reason for c in ctx.trajectory.candidates):
            return
        ctx.reject(
            text, step=number, parent=current.id, origin="sample", reason=reason, edit_words=distance, note=f"gpo step {number}"
        )
