"""Reuse the key/value cache of prompts scored a moment ago when a new prompt starts the same way.

Scoring a suite asks for one prompt per item, and those prompts share their start: the chat template, the
instruction and, with demonstrations, several worked examples, before the item's own input. Run from scratch,
each item pays for that shared start again; with four causal_judgement stories as demonstrations it is most of
the prompt. Here the model runs only the tokens after the longest start it has already seen.

Only full-attention caches are reused. A sliding-window layer (Gemma 3's local layers) keeps just its last
window, so it cannot be cut back to an earlier length; such models always run the whole prompt.

The reused numbers are the same keys and values a whole-prompt pass computes, up to float rounding (about 1e-5
in a log-likelihood on CPU, as in any KV-cached generation).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradgate.models.local.kv import reusable

# Below this many shared tokens copying the cache saves too little to be worth it.
MIN_SHARED_TOKENS = 16
# The cached prompts' keys and values together stay under this size (SmolLM2-135M: 46 KB per token in float32,
# so about 11,000 tokens: several demonstration-carrying prompts).
MAX_CACHED_BYTES = 512 * 2**20


@dataclass
class _Entry:
    ids: tuple[int, ...]
    cache: Any  # a transformers Cache holding exactly `ids`
    nbytes: int


def _nbytes(cache: Any) -> int:
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


def _shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """The caches of the last prompts one model scored, newest last. Not thread-safe: callers hold the torch lock."""

    def __init__(self, max_bytes: int = MAX_CACHED_BYTES) -> None:
        self.max_bytes = max_bytes
        self.enabled = True  # False: every prompt runs whole (benchmarks compare both ways)
        self._entries: OrderedDict[tuple[Any, tuple[int, ...]], _Entry] = OrderedDict()
        self.reused_tokens = 0  # prompt tokens not recomputed, since creation (for benchmarks and tests)

    def take(self, model_key: Any, ids: Sequence[int]) -> tuple[int, Any]:
        """(n, cache): a private cache holding the first n tokens of `ids`, n < len(ids) so that at least the
        last token still runs (its logits are wanted); (0, None) when nothing long enough is cached."""
        if not self.enabled:
            return 0, None
        best: _Entry | None = None
        best_len = 0
        for (key, _), entry in self._entries.items():
            if key == model_key:
                shared = _shared_length(entry.ids, ids)
                if shared > best_len:
                    best, best_len = entry, shared
        best_len = min(best_len, len(ids) - 1)
        if best is None or best_len < MIN_SHARED_TOKENS:
            return 0, None
        self._entries.move_to_end((model_key, best.ids))
        cache = copy.deepcopy(best.cache)
        if len(best.ids) > best_len:
            cache.crop(best_len - len(best.ids))  # a negative count: drop that many tokens from the end
        self.reused_tokens += best_len
        return best_len, cache

    def keep(self, model_key: Any, ids: Sequence[int], cache: Any) -> None:
        """Remember a copy of `cache`, which holds exactly `ids`; the oldest entries go past the size limit."""
        if not self.enabled or not reusable(cache) or len(ids) < MIN_SHARED_TOKENS:
            return
        entry = _Entry(tuple(ids), copy.deepcopy(cache), _nbytes(cache))
        if entry.nbytes > self.max_bytes:
            return
        self._entries[(model_key, entry.ids)] = entry
        self._entries.move_to_end((model_key, entry.ids))
        while sum(e.nbytes for e in self._entries.values()) > self.max_bytes:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
