"""The litellm custom provider: ``litellm.completion(model="local/<embedded model>")`` runs in this process.

litellm is imported on first use only (it takes seconds), so the provider class is built then too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from gradgate.core.environment import prepare_process_env
from gradgate.errors import ConfigError, GradgateError, UnknownModelError
from gradgate.models.local.batching import generate
from gradgate.models.local.registry import EMBEDDED_MODELS, LOCAL_PREFIX, embedded_name, known_models_text

_PROVIDER_CLASS: type | None = None
_PROVIDER_LOCK = threading.Lock()


def _optional_float(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _build_provider_class() -> type:
    prepare_process_env()
    import litellm
    from litellm.llms.custom_llm import CustomLLMError

    def run(model: str, messages: list[dict[str, Any]], optional_params: dict[str, Any], response: Any) -> Any:
        name = embedded_name(model)
        if name is None:
            raise CustomLLMError(
                status_code=404,
                message=f"unknown local model {model!r}; the embedded models are {known_models_text()}",
            )
        stop = optional_params.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        max_tokens = optional_params.get("max_tokens") or optional_params.get("max_completion_tokens") or 256
        seed = optional_params.get("seed")
        try:
            result = generate(
                name,
                messages,
                max_tokens=int(max_tokens),
                temperature=_optional_float(optional_params.get("temperature"), 0.0),
                seed=None if seed is None else int(seed),
                stop=stop,
                max_time=_optional_float(optional_params.get("timeout"), 0.0) or None,
            )
        except GradgateError as exc:
            # litellm maps the status code to its own exception types (404 -> NotFoundError) for the gateway.
            status = 404 if isinstance(exc, UnknownModelError) else 400 if isinstance(exc, ConfigError) else 500
            raise CustomLLMError(status_code=status, message=str(exc)) from exc
        response.choices[0].message.content = result.text
        response.choices[0].finish_reason = result.finish_reason
        response.model = LOCAL_PREFIX + name
        response.created = int(time.time())
        response.usage = litellm.Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        response._hidden_params["response_cost"] = 0.0
        return response

    class LocalLLM(litellm.CustomLLM):  # type: ignore[misc]
        """Runs ``local/<embedded model>`` in this process (cost 0)."""

        def completion(  # type: ignore[override]
            self, model: str, messages: list, *args: Any, **kwargs: Any
        ) -> Any:
            params = {**(kwargs.get("optional_params") or {}), "timeout": kwargs.get("timeout")}
            return run(model, messages, params, kwargs["model_response"])

        async def acompletion(  # type: ignore[override]
            self, model: str, messages: list, *args: Any, **kwargs: Any
        ) -> Any:
            params = {**(kwargs.get("optional_params") or {}), "timeout": kwargs.get("timeout")}
            return await asyncio.to_thread(run, model, messages, params, kwargs["model_response"])

    LocalLLM.__qualname__ = "LocalLLM"
    LocalLLM.__module__ = __name__
    return LocalLLM


def local_llm_class() -> type:
    """The ``litellm.CustomLLM`` subclass serving embedded models, built on first use."""
    global _PROVIDER_CLASS
    with _PROVIDER_LOCK:
        if _PROVIDER_CLASS is None:
            _PROVIDER_CLASS = _build_provider_class()
        return _PROVIDER_CLASS


def register_local_provider() -> None:
    """Make ``litellm.completion(model="local/<embedded model>")`` run in process. Safe to call repeatedly."""
    cls = local_llm_class()
    import litellm

    with _PROVIDER_LOCK:
        if not any(item.get("provider") == "local" for item in litellm.custom_provider_map):
            litellm.custom_provider_map.append({"provider": "local", "custom_handler": cls()})
        # litellm runs this itself before each call; doing it now lets get_llm_provider("local/...") answer at once.
        from litellm.utils import custom_llm_setup

        custom_llm_setup()
        # Price 0, so litellm.completion_cost() of a local reply answers 0 instead of raising "model not mapped".
        litellm.register_model(
            {
                LOCAL_PREFIX + name: {
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                    "cache_creation_input_token_cost": 0.0,
                    "cache_read_input_token_cost": 0.0,
                    "litellm_provider": "local",
                    "mode": "chat",
                }
                for name in EMBEDDED_MODELS
            }
        )
