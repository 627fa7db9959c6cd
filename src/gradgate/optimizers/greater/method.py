"""GReaTer behind the shared optimizer interface (optimizers.base): the task model optimizes its own prompt.

settings.py  GreaterConfig: `optimize.greater` in gradgate.yaml
prompts.py   the extraction phrase, and the span of the prompt that is optimized
engine.py    the torch work on token ids: rollouts, loss, one-hot gradients, candidates
search.py    the step loop (GreaterSearch), resuming, the budget stop; returns a GreaterResult
method.py    this adapter: runs the search, records its steps, scores the accepted prompts on dev
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from gradgate.errors import BudgetExhausted, ConfigError
from gradgate.models.local import LOCAL_PREFIX
from gradgate.optimizers.base import GradientNote, OptimizeContext, Optimizer
from gradgate.optimizers.greater.search import GreaterSearch, GreaterStep
from gradgate.optimizers.greater.settings import config_from_settings


class Greater(Optimizer):
    """GReaTer behind the shared interface: the task model optimizes its own prompt from token gradients.

    The local model is `optimize.greater.model` or, by default, the task model (which must then be an embedded
    `local/...` model). Each accepted step's prompt is scored on dev by the shared scorer, like every other
    method's candidates, and the runner confirms the best on the test split.
    """

    name: ClassVar[str] = "greater"
    needs_expected: ClassVar[bool] = True

    def _model_name(self, ctx: OptimizeContext) -> str:
        explicit = self.settings.get("model")
        if explicit:
            return str(explicit)
        task = ctx.gateway.spec("task").model
        if task.startswith(LOCAL_PREFIX):
            return task
        raise ConfigError(
            f"GReaTer needs the weights of a local model, and the task model {task!r} is an API model",
            where="gradgate.yaml:optimize.greater.model",
            hint="set optimize.greater.model to an embedded model (local/smollm2-135m-instruct), a model folder or a hub id",
        )

    async def optimize(self, ctx: OptimizeContext) -> None:
        config = config_from_settings(self.settings, ctx.seed)
        model_name = self._model_name(ctx)
        search = GreaterSearch(config)

        def on_step(step: GreaterStep) -> None:
            swap = f"{step.old_token!r} → {step.new_token!r}" if step.accepted else f"kept {step.old_token!r}"
            ctx.trajectory.add_gradient(
                GradientNote(
                    step=step.step,
                    parent="c0000",
                    summary=f"position {step.position}: {swap} (loss {step.loss:.3f}, train accuracy {step.accuracy:.2f})",
                    per_item=tuple(f"{c.token!r}: gradient {c.gradient:+.4f}" for c in step.candidates[:8]),
                )
            )
            ctx.save_state({"greater": dict(step.state), "prompts": [*ctx.state.get("prompts", []), step.prompt_text]})

        # The torch work blocks; a worker thread keeps the event loop (and its progress output) alive.
        result = await asyncio.to_thread(
            search.run,
            prompt_body=ctx.original,
            train=list(ctx.splits.train),
            model_name=model_name.removeprefix(LOCAL_PREFIX),
            budget=ctx.budget,
            on_step=on_step,
            state=ctx.state.get("greater"),
        )
        # Score each distinct accepted prompt on dev with the shared scorer (cached ones cost nothing); on resume the
        # state's prompts include those of the earlier run.
        accepted = [s.prompt_text for s in result.trajectory if s.accepted]
        prompts = list(dict.fromkeys([*ctx.state.get("prompts", []), *accepted]))
        for index, text in enumerate(p for p in prompts if p != ctx.original):
            if ctx.cached_candidate(text) is None:
                await ctx.evaluate(text, step=index + 1, parent="c0000", origin="token")
        if result.stopped_by_budget:  # the runner keeps the best so far and reports the stop
            raise BudgetExhausted(f"budget exhausted during GReaTer's search (after {len(result.trajectory)} step(s))")
