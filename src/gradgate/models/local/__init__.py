"""Models that run in this process: the embedded GGUF models (``local/<name>``) and Hugging Face folders.

    registry.py  which embedded models exist, where their GGUF files are, ``local/`` model strings
    convert.py   GGUF -> Hugging Face folder, once, in the user's cache
    runtime.py   device and dtype, loading, chat rendering, batched generation, answer-option scoring
    batching.py  one reply, run in one batch with the concurrent requests that share its settings
    prefix_cache.py  scoring reuses the key/values of a recent prompt's shared start (template, demonstrations)
    kv.py        a KV cache across transformers versions: the keyword, the returned cache, whether it can be cut
    provider.py  the litellm provider behind ``litellm.completion(model="local/...")``

Importing this package is cheap: torch, transformers and litellm are imported when first used.
"""

from __future__ import annotations

from gradgate.models.local.batching import generate
from gradgate.models.local.convert import converted_model_dir
from gradgate.models.local.provider import register_local_provider
from gradgate.models.local.registry import EMBEDDED_MODELS, LOCAL_PREFIX, is_local_model
from gradgate.models.local.runtime import (
    DTYPE_NAMES,
    LocalGeneration,
    choose_device,
    eos_ids,
    generate_batch,
    load_causal_lm,
    score_options,
)

__all__ = [
    "DTYPE_NAMES",
    "EMBEDDED_MODELS",
    "LOCAL_PREFIX",
    "LocalGeneration",
    "choose_device",
    "converted_model_dir",
    "eos_ids",
    "generate",
    "generate_batch",
    "is_local_model",
    "load_causal_lm",
    "register_local_provider",
    "score_options",
]
