"""GReaTer behind the shared optimizer interface (optimizers.base): a local model optimizes the prompt.

settings.py  GreaterConfig: `optimize.greater` (core.method_settings.GreaterSettings) resolved for a run
prompts.py   the answer tail, banned label spellings, the span of the prompt that is optimized (the extraction
             phrase and answer labels: scoring.answers, shared with the scorer)
encoding.py  text <-> token ids: items, gold answers, the resolved phrase, banned label tokens
engine.py    the torch work on token ids: rollouts, loss, one-hot gradients, candidates
search.py    the step loop (GreaterSearch), resuming, the budget stop; returns a GreaterResult
method.py    this adapter: runs the search, records its steps, scores the train-best prompts on dev
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from gradgate.core.budget import Holdback
from gradgate.core.method_settings import GreaterSettings, parse_settings
from gradgate.errors import BudgetExhausted, ConfigError
from gradgate.models.local import LOCAL_PREFIX
from gradgate.optimizers.base import GradientNote, OptimizeContext, Optimizer
from gradgate.optimizers.confirmation import scoring_calls
from gradgate.optimizers.greater.encoding import AnswerSpec
from gradgate.optimizers.greater.search import GreaterSearch, GreaterStep
from gradgate.optimizers.greater.settings import GPU_PRESET, WHERE, config_from_settings


def answer_spec(ctx: OptimizeContext) -> AnswerSpec:
    """The suite's answer options and its own extraction phrase (`scoring.answer_phrase`), if any."""
    suite = ctx.target.suite
    scoring = suite.spec.scoring
    return AnswerSpec(
        options=tuple(scoring.options),
        phrase=getattr(scoring, "answer_phrase", None),
        where=f"{suite.rel_path}:scoring.answer_phrase",
    )


DEV_CANDIDATES = 2  # train-best prompts the search leaves calls for, to be scored on dev


def dev_holdback(ctx: OptimizeContext) -> int:
    """Calls the search leaves for scoring DEV_CANDIDATES prompts on dev (at most half of what is left)."""
    left = ctx.budget.calls_left()
    want = scoring_calls(DEV_CANDIDATES, len(ctx.splits.dev), ctx.scorer.uses_judge)
    return 0 if left is None else min(want, left // 2)


def ranks_without_reasoning(ctx: OptimizeContext) -> bool:
    """A loglik suite without `scoring.reasoning_tokens` is scored on the answer right after the prompt."""
    scoring = ctx.target.suite.spec.scoring
    return scoring.mode == "loglik" and not scoring.ranks_after_reasoning


class Greater(Optimizer):
    """GReaTer behind the shared interface: a local model optimizes the prompt from token gradients.

    The local model is `optimize.greater.model` or, by default, the task model (which must then be an embedded
    `local/...` model). Another local model than the task model is a transfer: it optimizes, its train accuracy is
    reported in the gradient notes, and the task model scores every candidate on dev and confirms the best on test.
    The prompts that set a new best train score (teacher-forced mistake rate, then loss) are scored on dev by the
    shared scorer, like every other method's candidates; the runner confirms the best on the test split.

    A loglik suite with `scoring.reasoning_tokens` is scored on dev the way GReaTer trains: the task model reasons
    greedily first, then the options are ranked as the answer after its reasoning and the same extraction phrase
    (scoring.answers builds it for both). Set it to `max_new_tokens` (128 on CPU) to match the training rollouts;
    an `optimize.greater.extraction_phrase` override is not seen by the scorer (use `scoring.answer_phrase`).
    A loglik suite without it ranks the options right after the prompt, so there GReaTer trains the same way by
    default: no reasoning (`max_new_tokens` 0), the scorer's answer prefix as the phrase, and the paper's 50
    training items (`max_items`; an item then costs one pass over the prompt, not a rollout; `max_step_tokens` takes
    fewer when the inputs are long). Optimizing the answer
    after a reasoning the scorer never produces would chase a quantity dev and test do not measure.
    """

    name: ClassVar[str] = "greater"
    needs_expected: ClassVar[bool] = True

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config = parse_settings(GreaterSettings, self.settings, WHERE)

    def _model_name(self, ctx: OptimizeContext) -> str:
        if self.config.model:
            return self.config.model
        task = ctx.gateway.spec("task").model
        if task.startswith(LOCAL_PREFIX):
            return task
        raise ConfigError(
            f"GReaTer needs the weights of a local model, and the task model {task!r} is an API model",
            where="gradgate.yaml:optimize.greater.model",
            hint="set optimize.greater.model to an embedded model (local/smollm2-135m-instruct), a model folder or a hub id",
        )

    async def optimize(self, ctx: OptimizeContext) -> None:
        config = config_from_settings(self.config, ctx.seed)
        if self.config.max_new_tokens is None and ranks_without_reasoning(ctx):
            config.max_new_tokens = 0  # train on what dev and test score (class docstring)
            if self.config.max_items is None:  # an item is one prompt pass now: the paper's 50 fit a CPU
                config.max_items = max(config.max_items, GPU_PRESET["max_items"])
        model_name = self._model_name(ctx)
        task_model = ctx.gateway.spec("task").model
        on = model_name if model_name == task_model else f"{model_name} (transfer to the task model {task_model})"
        search = GreaterSearch(config)
        saved: dict[str, Any] = dict(ctx.state.data)
        best_key = tuple(saved.get("best_key", (2.0, float("inf"))))

        def on_step(step: GreaterStep) -> None:
            nonlocal best_key
            swap = f"{step.old_token!r} → {step.new_token!r}" if step.accepted else f"kept {step.old_token!r}"
            ctx.trajectory.add_gradient(
                GradientNote(
                    step=step.step,
                    parent="c0000",
                    summary=(
                        f"position {step.position}: {swap} (loss {step.loss:.3f}, train accuracy {step.accuracy:.2f} "
                        f"on {on}, teacher-forced)"
                    ),
                    per_item=tuple(f"{c.token!r}: gradient {c.gradient:+.4f}" for c in step.candidates[:8]),
                )
            )
            key = (round(1.0 - step.accuracy, 9), step.loss)
            prompts = list(saved.get("prompts", []))
            if key < best_key:  # a new best on train: a candidate for dev
                best_key = key
                prompts.append(step.prompt_text)
            saved.update(greater=dict(step.state), prompts=prompts, best_key=list(best_key), last=step.prompt_text)
            ctx.save_state(dict(saved))

        # The search leaves the calls to score its best prompts on dev: a search that spends them all proposes
        # prompts nobody can check. The torch work blocks; a worker thread keeps the event loop (and its progress
        # output) alive.
        with ctx.budget.phase(Holdback(calls=dev_holdback(ctx))):
            result = await asyncio.to_thread(
                search.run,
                prompt_body=ctx.original,
                train=list(ctx.splits.train),
                model_name=model_name.removeprefix(LOCAL_PREFIX),
                budget=ctx.budget,
                on_step=on_step,
                state=ctx.state.get("greater"),
                answers=answer_spec(ctx),
            )
        saved["config"] = dict(result.config)  # the resolved configuration (steps, phrase, labels), kept with the run
        ctx.save_state(dict(saved))
        # Score the train-best prompts and the last one on dev with the shared scorer on the task model (cached ones
        # cost nothing); on resume the state's prompts include those of the earlier run.
        # Best on train first (each train-best was appended when it beat the ones before), so a budget that runs out
        # here has scored the likeliest winners.
        last = [saved["last"]] if saved.get("last") else []
        prompts = list(dict.fromkeys([*reversed(saved.get("prompts", [])), *last]))
        for index, text in enumerate(p for p in prompts if p != ctx.original):
            if ctx.cached_candidate(text) is None:
                note = f"GReaTer on {model_name}; phrase {result.config.get('extraction_phrase')!r}"
                await ctx.evaluate(text, step=index + 1, parent="c0000", origin="token", note=note)
        if result.stopped_by_budget:  # the runner keeps the best so far and reports the stop
            raise BudgetExhausted(f"budget exhausted during GReaTer's search (after {len(result.trajectory)} step(s))")
