"""A scripted model backend for logic tests: replies come from a function of the request.

    backend = ScriptedBackend(lambda spec, messages: "The answer is 4")
    gateway = Gateway(models, budget=BudgetTracker(), backend=backend)

Real runs use `LiteLLMBackend`; this double exists so optimizer and gate logic can be tested
exactly and fast. Every feature is also exercised once against a real model elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from gradgate.core.config import ModelSpec
from gradgate.errors import UnknownModelError
from gradgate.models.gateway import BackendReply, RetryableError

Script = Callable[[ModelSpec, list[dict[str, str]]], str]


@dataclass
class ScriptedBackend:
    script: Script
    fail_first: int = 0  # raise a retryable error this many times first
    calls: list[tuple[str, list[dict[str, str]]]] = field(default_factory=list)
    option_scores: Callable[[list[dict[str, str]], list[str]], list[float]] | None = None
    unknown_models: tuple[str, ...] = ("nonexistent/model",)

    async def complete(
        self,
        spec: ModelSpec,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        seed: int | None,
        stop: list[str] | None,
        timeout: float,
    ) -> BackendReply:
        await asyncio.sleep(0)
        self.calls.append((spec.model, messages))
        if self.fail_first > 0:
            self.fail_first -= 1
            raise RetryableError("429 rate limited (scripted)", retry_after=0.0)
        text = self.script(spec, messages)
        prompt_tokens = sum(len((m.get("content") or "").split()) for m in messages)
        return BackendReply(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(text.split()), cost_usd=0.0)

    async def score_options(
        self, spec: ModelSpec, messages: list[dict[str, str]], options: list[str], *, answer_prefix: str | None = None
    ) -> list[float]:
        self.calls.append((spec.model, messages))
        if self.option_scores is None:
            return [0.0 for _ in options]
        return self.option_scores(messages, options)

    def validate(self, spec: ModelSpec) -> None:
        if spec.model in self.unknown_models:
            raise UnknownModelError(f"unknown model {spec.model!r}")

    def estimate_usd(self, spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float:
        return 0.0


def last_user_text(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
