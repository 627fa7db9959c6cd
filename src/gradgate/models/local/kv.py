"""A model's key/value cache across transformers versions: the keyword a forward pass takes it by, the cache a pass
returns, and whether a cache can be cut back and padded.

transformers 5.2x renamed the forward keyword and the output field `past_key_values` to `cache`; the old names
still work there with a deprecation warning and go in 5.40. 4.56, the oldest version gradgate allows, knows only
the old ones. Every forward pass that passes a cache goes through `cache_keyword`, so one place follows the rename.
"""

from __future__ import annotations

import inspect
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
