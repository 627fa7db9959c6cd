"""GRAD-SUM (Austin & Chartock): textual gradients, summarized, then a beam search over edits.

Per iteration, for each prompt in the beam:

1. generate outputs on a training batch with the task model and score them (judge and/or metrics);
2. for every failing item, the optimizer model writes advice on how the prompt should change
   (the "gradient"), given the task, input, output, criteria and the judge's explanation;
3. the gradients are summarized into one general paragraph (`summarize: false` skips this and
   hands the per-item advice straight to the editor, so the step's value can be measured);
4. the editor model writes `candidates_per_prompt` new prompts from the prompt and the feedback;
   `mutations` more come from the mutation library (`optimizers.mutations`: thinking styles, answer-format
   cues, role lines), so a weak editor's paraphrases are not the only candidates; every candidate passes
   hygiene first (`optimizers.hygiene`: a lost variable, an include, an over-long text are rejected without
   a call);
5. candidates are scored on dev, through successive halving (`halving`, on by default: a few dev items
   first, the best on more), and the best `beam_width` prompts form the next beam.

With `demos: true`, half the calls are kept for demonstration sets written into the slot of the best
instructions (`optimizers.demos`).

State (iteration, beam) is saved after every iteration; a resumed run starts at the next one and
replays earlier requests from the cache, and candidates already in the trajectory are not rescored.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from gradgate.core.method_settings import GradSumSettings, parse_settings
from gradgate.core.prompts import template_variables
from gradgate.errors import BudgetExhausted, ConfigError
from gradgate.optimizers import mutations
from gradgate.optimizers.base import Candidate, GradientNote, OptimizeContext, Optimizer
from gradgate.optimizers.demos.method import then_demos
from gradgate.optimizers.gradsum.prompts import (
    DEFAULT_CRITERIA,
    METRIC_CRITERIA,
    NO_EXPLANATION,
    NO_VARIABLES,
    NOT_DESCRIBED,
    TEMPLATES,
    build_messages,
    feedback_list,
)
from gradgate.optimizers.halving import Proposal, evaluate_pool
from gradgate.optimizers.hygiene import keep_layout, parse_prompt_reply
from gradgate.scoring.scorer import ItemResult

log = logging.getLogger(__name__)
T = TypeVar("T")


class GradSum(Optimizer):
    name: ClassVar[str] = "gradsum"
    needs_expected: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config = parse_settings(GradSumSettings, self.settings, "optimize.gradsum")

    # -- the search -------------------------------------------------------------------------------
    async def optimize(self, ctx: OptimizeContext) -> None:
        await then_demos(ctx, lambda: self._search(ctx), self.config.demos, step=self.config.iterations + 1)

    async def _search(self, ctx: OptimizeContext) -> None:
        cfg = self.config
        start = int(ctx.state.get("iteration", 0))
        beam = self._initial_beam(ctx, start)
        # A half-finished iteration is redone: drop the notes it left so they are not duplicated.
        ctx.trajectory.gradients = [g for g in ctx.trajectory.gradients if g.step < start]
        dev_items = ctx.splits.dev[: cfg.dev_size] if cfg.dev_size else None
        for iteration in ctx.steps(cfg.iterations, start=start):
            batch = self._batch(ctx, iteration)
            if not batch:
                log.warning("gradsum: the train split is empty; nothing to learn from")
                break
            proposals: list[Proposal] = []
            for parent in beam:
                proposals += await self._expand(ctx, parent, batch, iteration)
                proposals += self._mutations(ctx, parent, iteration)
            children = await evaluate_pool(ctx, proposals, step=iteration + 1, items=dev_items, halving=cfg.halving)
            self._link_children(ctx, iteration)
            beam = self._select(ctx, beam, children)
            ctx.save_state({"iteration": iteration + 1, "beam": [c.id for c in beam]})
            log.info(
                "gradsum iteration %d: beam %s",
                iteration + 1,
                ", ".join(f"{c.id}={c.dev_score:.3f}" for c in beam),
            )

    def _initial_beam(self, ctx: OptimizeContext, start: int) -> list[Candidate]:
        ids = ctx.state.get("beam") if start else None
        if ids:
            known = {c.id for c in ctx.trajectory.candidates}
            beam = [ctx.trajectory.get(i) for i in ids if i in known]
            if beam:
                return beam
        original = ctx.cached_candidate(ctx.original)
        if original is None:  # the runner scores the original first; be safe when used alone
            raise ConfigError("gradsum needs the original prompt scored on dev first (the runner does this)")
        return [original]

    def _batch(self, ctx: OptimizeContext, iteration: int) -> list[Any]:
        train = list(ctx.splits.train)
        # Seeded per iteration, so a resumed run draws the same batch (and hits the cache).
        rng = random.Random(f"gradsum:{ctx.seed}:{iteration}")
        return rng.sample(train, min(self.config.train_batch, len(train)))

    async def _expand(self, ctx: OptimizeContext, parent: Candidate, batch: list[Any], iteration: int) -> list[Proposal]:
        """Gradients on the parent's failing train items, their summary, and the editor's candidates (not scored)."""
        cfg = self.config
        evaluation = await ctx.score_text(parent.text, batch)
        if not evaluation.complete:
            raise BudgetExhausted(f"budget exhausted while generating on the train batch: {evaluation.stopped_reason}")
        failures = [r for r in evaluation.scored if not r.passed][: cfg.max_gradient_items]
        if not failures:
            log.info("gradsum: %s passes every train item of iteration %d; no gradient", parent.id, iteration + 1)
            return []
        replies = await _all(self._gradient(ctx, parent.text, r) for r in failures)
        per_item = [g for g in replies if g]
        if not per_item:
            log.info("gradsum: the optimizer model gave no usable advice for %s", parent.id)
            return []
        if cfg.summarize:
            summary = await self._summarize(ctx, parent.text, per_item)
            feedback = summary or feedback_list(per_item)
        else:
            summary = ""
            feedback = feedback_list(per_item)
        # Recorded before the candidates so gradients.md has it even if the budget stops the edits.
        shown = summary if summary else ("(summarization off)" if not cfg.summarize else "(empty summary)")
        ctx.trajectory.add_gradient(GradientNote(step=iteration, parent=parent.id, summary=shown, per_item=tuple(per_item)))
        note = f"gradient {len(ctx.trajectory.gradients) - 1}"
        # The edits are sent together: a local editor samples them as one batch (models/local/batching.py).
        first = iteration * cfg.candidates_per_prompt
        edits = await _all(self._edit(ctx, parent.text, feedback, sample=first + k) for k in range(cfg.candidates_per_prompt))
        return [
            Proposal(text=text, parent=parent.id, origin="edit", note=note)
            for texts in edits
            for text in texts
            if text.strip() != parent.text.strip()
        ]

    def _mutations(self, ctx: OptimizeContext, parent: Candidate, iteration: int) -> list[Proposal]:
        facts = mutations.facts_for(ctx.target.suite, ctx.task_description)
        rng = random.Random(f"gradsum:mutations:{ctx.seed}:{iteration}:{parent.id}")
        known = [c.text for c in ctx.trajectory.candidates]
        return [
            Proposal(text=text, parent=parent.id, origin="mutation", note=f"mutation {name}")
            for text, name in mutations.propose(parent.text, facts, count=self.config.mutations, rng=rng, exclude=known)
        ]

    @staticmethod
    def _link_children(ctx: OptimizeContext, iteration: int) -> None:
        """Each gradient note of this iteration lists the candidates its edit produced."""
        for index, note in enumerate(ctx.trajectory.gradients):
            if note.step != iteration:
                continue
            tag = f"gradient {index}"
            children = tuple(
                c.id
                for c in ctx.trajectory.candidates
                if c.step == iteration + 1 and c.note and (c.note == tag or c.note.startswith(tag + ";"))
            )
            ctx.trajectory.gradients[index] = replace(note, children=children)
        ctx.trajectory.save()

    def _select(self, ctx: OptimizeContext, beam: list[Candidate], children: list[Candidate]) -> list[Candidate]:
        """Best `beam_width` distinct prompts by dev score; ties keep the earlier candidate."""
        order = {c.id: i for i, c in enumerate(ctx.trajectory.candidates)}
        pool: dict[str, Candidate] = {}
        for c in [*beam, *children]:
            if c.dev_score is not None:
                pool.setdefault(c.text, c)
        ranked = sorted(pool.values(), key=lambda c: (-(c.dev_score or 0.0), order.get(c.id, 0)))
        return ranked[: self.config.beam_width] or beam

    # -- the three model requests ------------------------------------------------------------------
    async def _gradient(self, ctx: OptimizeContext, prompt: str, result: ItemResult) -> str:
        explanation = (
            result.judge_explanation
            or "; ".join(f"{m.name}: {m.reason}" for m in result.metrics if m.score < 1.0)
            or NO_EXPLANATION
        )
        expected = TEMPLATES["expected"][0].format(expected=result.expected) if result.expected is not None else ""
        rendered = ctx.target.prompt.with_body(prompt).render(result.vars)
        messages = build_messages(
            "gradient",
            task_description=ctx.task_description or NOT_DESCRIBED,
            prompt=prompt,
            criteria=ctx.scorer.judge.criteria if ctx.scorer.uses_judge else _metric_criteria(ctx),
            input=rendered,
            output=result.output,
            expected_section=expected,
            explanation=explanation.strip(),
        )
        reply = await ctx.gateway.complete("optimizer", messages, max_tokens=self.config.gradient_max_tokens)
        return reply.text.strip()

    async def _summarize(self, ctx: OptimizeContext, prompt: str, per_item: list[str]) -> str:
        messages = build_messages(
            "summary",
            task_description=ctx.task_description or NOT_DESCRIBED,
            prompt=prompt,
            count=len(per_item),
            gradients=feedback_list(per_item),
        )
        reply = await ctx.gateway.complete("optimizer", messages, max_tokens=self.config.gradient_max_tokens)
        return reply.text.strip()

    async def _edit(self, ctx: OptimizeContext, prompt: str, feedback: str, *, sample: int) -> list[str]:
        variables = template_variables(ctx.original)
        messages = build_messages(
            "edit",
            task_description=ctx.task_description or NOT_DESCRIBED,
            prompt=prompt.strip(),
            feedback=feedback,
            variables=", ".join("{{" + v + "}}" for v in variables) or NO_VARIABLES,
        )
        reply = await ctx.gateway.complete(
            "editor",
            messages,
            temperature=self.config.editor_temperature,
            # A distinct seed per sample: with one seed, a sampling backend would repeat the same candidate.
            seed=(ctx.seed * 7919 + sample) % 2**31,
            max_tokens=self.config.edit_max_tokens,
            sample=sample,
        )
        # One editor call asks for one prompt; extra blocks a model adds anyway are kept as candidates.
        return [keep_layout(text, ctx.original) for text in parse_prompt_reply(reply.text)]


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every call's result in order, run concurrently; the first failure is raised only once every call has
    ended, so no call is left running after a budget stop."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]


def _metric_criteria(ctx: OptimizeContext) -> str:
    names = ", ".join(sorted({m.type for m in ctx.scorer.metrics}))
    return METRIC_CRITERIA.format(names=names) if names else DEFAULT_CRITERIA
