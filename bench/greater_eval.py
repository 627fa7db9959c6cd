"""Held-out accuracy of a prompt the way GReaTer reads answers: greedy reasoning, the extraction phrase, a few greedy
answer tokens, a normalized match with the gold answer.

Used by bench/bench_greater.py; the optimizer itself scores prompts with gradgate's shared scorer instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gradgate.optimizers.greater.engine import Meter
from gradgate.optimizers.greater.prompts import split_prompt
from gradgate.optimizers.greater.search import GreaterSearch, ItemLike, encode_items


@dataclass(frozen=True)
class EvalReport:
    accuracy: float
    answers: tuple[str, ...]
    correct: tuple[bool, ...]


def normalize_answer(text: str) -> str:
    """First line, without leading spaces, colons, quotes, brackets or markdown markers; lower case."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = re.sub(r"^[\s:$*\"'`(\[]+", "", text)
    return text.strip().lower()


def answer_matches(generated: str, gold: str) -> bool:
    """Normalized generated text starts with the normalized gold answer, followed by a non-alphanumeric boundary."""
    got, want = normalize_answer(generated), normalize_answer(gold).rstrip(".")
    if not want or not got.startswith(want):
        return False
    rest = got[len(want) :]
    return not rest or not rest[0].isalnum()


def evaluate(search: GreaterSearch, *, prompt_body: str, items: Sequence[ItemLike], model_name: str) -> EvalReport:
    """Accuracy of a prompt on items with the search's model and settings (span, chat template, answer_tokens)."""
    cfg = search.config
    model, tokenizer = search.load(model_name)
    split = split_prompt(prompt_body, cfg.span)
    encoded = encode_items(tokenizer, split, items, use_chat_template=cfg.use_chat_template)
    engine = search.make_engine(model, tokenizer, Meter(None, cfg.budget_role))
    instruction = tokenizer(split.instruction, add_special_tokens=False)["input_ids"]
    rollout = engine.rollout([instruction], encoded, generate_answers=True)[0]
    correct = tuple(answer_matches(a, str(it.expected or "")) for a, it in zip(rollout.answers, items, strict=True))
    return EvalReport(accuracy=sum(correct) / max(len(correct), 1), answers=tuple(rollout.answers), correct=correct)
