"""The KV cache keyword across transformers versions (models/local/kv.py), and that no forward pass gradgate makes
uses the name transformers deprecates."""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import pytest

from gradgate.models.local.kv import cache_keyword, returned_cache, with_cache


class NewStyle:
    def forward(self, input_ids: Any = None, cache: Any = None) -> None: ...


class OldStyle:
    def forward(self, input_ids: Any = None, past_key_values: Any = None) -> None: ...


def test_the_keyword_follows_the_models_forward() -> None:
    assert cache_keyword(NewStyle()) == "cache" and with_cache(NewStyle(), 7) == {"cache": 7}
    assert cache_keyword(OldStyle()) == "past_key_values" and with_cache(OldStyle(), None) == {"past_key_values": None}


def test_the_returned_cache_under_either_name() -> None:
    assert returned_cache(SimpleNamespace(cache="new", past_key_values="old")) == "new"
    assert returned_cache(SimpleNamespace(past_key_values="old")) == "old"


def test_greater_rollouts_pass_the_cache_by_the_current_name() -> None:
    torch = pytest.importorskip("torch")
    from gradgate.optimizers.greater.engine import GreaterEngine
    from gradgate.optimizers.greater.settings import GreaterConfig
    from tests.test_greater import random_items, tiny_llama

    model = tiny_llama()
    cfg = GreaterConfig(dtype="float64", device="cpu", max_new_tokens=4, top_k=5)
    engine = GreaterEngine(model, cfg, pad_id=0, eos_ids=[1], phrase_ids=[11, 12])
    items, _ = random_items(2, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5.2x: "`past_key_values` is deprecated"
        rollout = engine.rollout([[20, 21]], items)[0]
    assert torch.isfinite(rollout.answer_loss).all()
