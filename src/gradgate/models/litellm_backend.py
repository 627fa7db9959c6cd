"""The real backend: any litellm model string; `local/...` models run in-process (gradgate.models.local).

It turns every provider failure into one of three outcomes the gateway understands:

* `RetryableError` (with the server's requested wait, when it sent one): rate limits, 5xx, timeouts,
  refused or dropped connections, and replies that are not a usable completion (a body that is not JSON,
  an empty `choices` list, a message without content);
* `ModelError`: the provider refused the request or the credentials (retrying cannot help);
* `UnknownModelError`: the model string names nothing litellm can call (exit 2).

A provider that needs a package that is not installed fails with an ImportError that litellm wraps in an
APIConnectionError; it becomes a `RetryableError` here like any connection error, and the gateway, which finds the
ImportError behind it, fails the call at once with MissingPackageError (exit 2).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from gradgate.core.config import LOCAL_PREFIX, ModelSpec
from gradgate.core.environment import prepare_process_env
from gradgate.core.retry_after import parse_retry_after
from gradgate.core.secrets import redact
from gradgate.errors import ModelError, UnknownModelError
from gradgate.models.gateway import BackendReply, RetryableError


class LiteLLMBackend:
    """Calls any litellm model string; `local/...` models run in-process (gradgate.models.local)."""

    def __init__(self) -> None:
        prepare_process_env()
        import litellm

        litellm.suppress_debug_info = True
        litellm.drop_params = True  # providers that lack `seed` or `stop` still answer
        self._litellm = litellm
        self._local_registered = False

    def _ensure_local(self) -> None:
        if not self._local_registered:
            from gradgate.models.local import register_local_provider

            register_local_provider()
            self._local_registered = True

    def validate(self, spec: ModelSpec) -> None:
        if spec.is_local:
            from gradgate.models.local import EMBEDDED_MODELS

            name = spec.model.removeprefix(LOCAL_PREFIX)
            if name not in EMBEDDED_MODELS:
                raise UnknownModelError(
                    f"unknown embedded model {spec.model!r}",
                    hint=f"embedded models: {', '.join('local/' + m for m in EMBEDDED_MODELS)}",
                )
            return
        try:
            self._litellm.get_llm_provider(spec.model, api_base=spec.api_base)
        except Exception:
            raise UnknownModelError(
                f"unknown model {spec.model!r}",
                hint="use a litellm model string with its provider, e.g. openai/gpt-4o-mini, "
                "anthropic/claude-3-5-haiku-latest, ollama/llama3, or openai/<name> with api_base",
            ) from None

    def estimate_usd(self, spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float:
        if spec.is_local or spec.api_base:
            return 0.0
        try:
            prompt_cost, completion_cost = self._litellm.cost_per_token(
                model=spec.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
            return float(prompt_cost + completion_cost)
        except Exception:
            return 0.0  # unpriced model: USD limits cannot bind; the gateway warns once

    def _kwargs(self, spec: ModelSpec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
            kwargs["api_key"] = "unused"
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:  # Gateway.validate checks this before any call; a variable unset since then lands here
                raise ModelError(
                    f"environment variable {spec.api_key_env} (api_key_env of {spec.model}) is not set",
                    hint="export it, or pass it to the action through `env:`",
                )
            kwargs["api_key"] = key
        return kwargs

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
        if spec.is_local:
            self._ensure_local()
        kwargs = self._kwargs(spec)
        response = await self._acompletion(
            spec,
            model=spec.model,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            stop=stop or None,
            timeout=timeout,
            num_retries=0,
            **kwargs,
        )
        text = _reply_text(spec, response)
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = 0.0
        if not spec.is_local and not spec.api_base:
            try:
                cost = float(self._litellm.completion_cost(completion_response=response) or 0.0)
            except Exception:
                cost = self.estimate_usd(spec, prompt_tokens, completion_tokens)
        return BackendReply(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)

    async def _acompletion(self, spec: ModelSpec, **kwargs: Any) -> Any:
        """litellm.acompletion with its exceptions mapped onto the gateway's (see the module docstring)."""
        litellm = self._litellm
        try:
            return await litellm.acompletion(**kwargs)
        except (
            litellm.RateLimitError,
            litellm.InternalServerError,
            litellm.ServiceUnavailableError,
            litellm.BadGatewayError,
            litellm.Timeout,
            litellm.APIConnectionError,
        ) as exc:
            headers = getattr(getattr(exc, "response", None), "headers", None)
            raise RetryableError(redact(str(exc))[:500], parse_retry_after(headers)) from None
        except (litellm.AuthenticationError, litellm.PermissionDeniedError) as exc:
            raise ModelError(
                f"{spec.model} refused the credentials: {redact(str(exc))[:300]}",
                hint="check the API key environment variable for this model",
            ) from None
        except (litellm.NotFoundError, litellm.BadRequestError) as exc:
            text = redact(str(exc))
            if "LLM Provider NOT provided" in text:
                raise UnknownModelError(
                    f"unknown model {spec.model!r}", hint="use a litellm model string such as openai/gpt-4o-mini"
                ) from None
            raise ModelError(f"{spec.model} rejected the request: {text[:400]}") from None
        except litellm.APIError as exc:
            status = getattr(exc, "status_code", None)
            if status is None or int(status) >= 500:  # a malformed or failed reply: worth another try
                raise RetryableError(f"{spec.model} failed: {redact(str(exc))[:400]}") from None
            raise ModelError(f"{spec.model} failed: {redact(str(exc))[:400]}") from None

    async def score_options(
        self, spec: ModelSpec, messages: list[dict[str, str]], options: list[str], *, answer_prefix: str | None = None
    ) -> list[float]:
        if not spec.is_local:
            raise ModelError(
                f"log-likelihood scoring needs an embedded model, not {spec.model!r}",
                hint="set the suite's `scoring.mode: generate` or use a local/ task model",
            )
        from gradgate.models.local import runtime as local_models

        return await asyncio.to_thread(local_models.score_options, spec.model, messages, options, answer_prefix=answer_prefix)


def _reply_text(spec: ModelSpec, response: Any) -> str:
    """The completion's text; a reply that holds none is a provider fault, retried like a 5xx."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise RetryableError(f"{spec.model} returned a reply with no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    if content is None and getattr(choice, "finish_reason", None) == "length":
        return ""  # the model used max_tokens before writing anything: a real (failing) answer
    raise RetryableError(f"{spec.model} returned a reply without message content")
