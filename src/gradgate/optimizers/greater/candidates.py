"""Which tokens GReaTer may put at the optimized slot: word tokens from the items' top-k next tokens there,
intersected over random item subsets and united (the reference's proposal), never a banned id."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import Tensor

_WORD_RE = re.compile(r"[A-Za-z ]*[A-Za-z][A-Za-z ]*|\s?[.,]")


def is_word_text(text: str) -> bool:
    """Letters and spaces (at least one letter), or a lone '.' / ',' (optionally after a space)."""
    return bool(_WORD_RE.fullmatch(text))


class WordFilter:
    """Which token ids decode to word tokens; decodes lazily and remembers."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._known: dict[int, bool] = {}

    def __call__(self, token_id: int) -> bool:
        if token_id not in self._known:
            ok = token_id not in self._special and is_word_text(self._tokenizer.decode([token_id]))
            self._known[token_id] = ok
        return self._known[token_id]


def propose_candidates(
    topk: Tensor,
    current_id: int,
    *,
    num_intersections: int,
    intersection_size: int,
    is_word: Callable[[int], bool],
    generator: torch.Generator,
    banned: Collection[int] = (),
    fallback: int = 10,
) -> list[int]:
    """Candidate ids for one slot: current id first, then the united subset intersections (sorted).

    topk: (N, k) next-token ids per item at the slot. Each of ``num_intersections`` random subsets of
    ``intersection_size`` items keeps the ids in every member's top-k; the union over subsets is filtered to word
    tokens that are not ``banned`` (the answer labels' tokens and the token before the slot, as the reference bans
    the previous token). When the union is empty (common with few, diverse items) the ``fallback`` most frequent
    allowed word tokens over all items' top-k are used instead, so a step always has something to try.
    """
    n = topk.shape[0]
    rows = [set(r) for r in topk.tolist()]
    united: set[int] = set()
    for _ in range(num_intersections):
        members = torch.randperm(n, generator=generator)[: min(intersection_size, n)].tolist()
        united |= set.intersection(*(rows[i] for i in members))
    banned = set(banned)

    def allowed(t: int) -> bool:
        return t != current_id and t not in banned and is_word(t)

    words = sorted(t for t in united if allowed(t))
    if not words:
        counts = Counter(t for r in topk.tolist() for t in r)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        words = sorted([t for t, _ in ranked if allowed(t)][:fallback])
    return [current_id, *words]
