"""A model's key/value cache across transformers versions: the keyword a forward pass takes it by, the cache a pass
returns, whether a cache can be cut back, and several prefills padded into one (the one place that rewrites a cache's
layers).

transformers 5.2x renamed the forward keyword and the output field `past_key_values` to `cache`; the old names
still work there with a deprecation warning and go in 5.40. 4.56, the oldest version gradgate allows, knows only
the old ones. Every forward pass that passes a cache goes through `cache_keyword`, so one place follows the rename.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import cache as memoize
from typing import Any


@memoize
def _keyword_of(forward: Any) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_keyword(model: Any) -> str:
    """`cache` where the model's forward takes it, else `past_key_values`."""
    return _keyword_of(type(model).forward)


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword argument that passes `cache` (None: none yet) to `model`'s forward."""
    return {cache_keyword(model): cache}


def returned_cache(out: Any) -> Any:
    """The cache a forward pass with use_cache returned, under either name."""
    found = getattr(out, "cache", None)
    return found if found is not None else out.past_key_values


def reusable(cache: Any) -> bool:
    """True when every layer of `cache` keeps its whole past and can be cut back to a shorter prompt (or padded to a
    longer one). A sliding-window layer (Gemma 3's local layers) keeps only its last window."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(not getattr(layer, "is_sliding", False) for layer in layers) and hasattr(cache, "crop")


def merge_prefills(parts: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
    """One left-padded batch from prefills of different lengths, each (mask (b, T), cache): (mask (B, T_max), cache).
    Padded key/value positions are zeros, masked out. The widest part's cache object carries the merged layers."""
    if len(parts) == 1:
        return parts[0]
    import torch
    import torch.nn.functional as F

    width = max(mask.shape[1] for mask, _ in parts)
    cache = next(c for mask, c in parts if mask.shape[1] == width)
    for i, layer in enumerate(cache.layers):
        layer.keys = torch.cat([F.pad(c.layers[i].keys, (0, 0, width - m.shape[1], 0)) for m, c in parts])
        layer.values = torch.cat([F.pad(c.layers[i].values, (0, 0, width - m.shape[1], 0)) for m, c in parts])
    return torch.cat([F.pad(mask, (width - mask.shape[1], 0)) for mask, _ in parts]), cache
