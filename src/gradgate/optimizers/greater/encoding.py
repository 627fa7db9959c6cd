"""Text <-> token ids for GReaTer: the items around the instruction, the gold answers, the extraction phrase and the
banned tokens. The search (search.py) and the held-out evaluator (bench/greater_eval.py) share it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gradgate.core.prompts import render_template
from gradgate.optimizers.greater.engine import EncodedItem, GreaterEngine, LabelChoice
from gradgate.optimizers.greater.prompts import ANSWER_SEPARATOR, PromptSplit, build_answer_tail, direct_phrase, label_variants
from gradgate.optimizers.greater.settings import WHERE, GreaterConfig
from gradgate.scoring.answers import answer_label, build_extraction_phrase, label_set

# Splits the chat-templated user message around the instruction; never sent to a model.
_SENTINEL = "\u2063GRADGATE-INSTRUCTION\u2063"


class ItemLike(Protocol):
    @property
    def vars(self) -> Mapping[str, Any]: ...
    @property
    def expected(self) -> str | None: ...


@dataclass(frozen=True)
class AnswerSpec:
    """What the suite says about its answers: the options (log-likelihood suites) and its own phrase, if any."""

    options: tuple[str, ...] = ()
    phrase: str | None = None  # the suite's `scoring.answer_phrase`
    where: str | None = None  # where that phrase was written, for errors


def is_direct(config: GreaterConfig) -> bool:
    """No reasoning and no phrase of the setting's: the answer follows the prompt the way the scorer ranks a plain
    loglik suite's options (its answer prefix, the suite's phrase, then the option as written)."""
    return config.extraction_phrase is None and config.max_new_tokens == 0


def answer_form(config: GreaterConfig) -> Callable[[str], str]:
    """How a gold answer is written after the phrase, as the suite is scored: the option as written when direct
    ("(A)"), else GReaTer's label ("(A)" -> "A"), which the scorer also ranks after reasoning."""
    return str.strip if is_direct(config) else answer_label


def resolve_phrase(config: GreaterConfig, answers: Sequence[str], spec: AnswerSpec) -> tuple[str, tuple[str, ...]]:
    """(extraction phrase, answer labels in `answer_form`): the setting's phrase, else the suite's, else one built
    from the answers. Direct (`is_direct`), the phrase is the one the scorer ranks a loglik suite's options after."""
    if is_direct(config):
        phrase = direct_phrase(spec.phrase)
        if spec.options:
            return phrase, tuple(dict.fromkeys(o.strip() for o in spec.options if o.strip()))
    elif config.extraction_phrase is not None:
        phrase = build_extraction_phrase(answers, override=config.extraction_phrase, where=f"{WHERE}.extraction_phrase")
    else:
        phrase = build_extraction_phrase(answers, options=spec.options, override=spec.phrase, where=spec.where)
    return phrase, label_set(answers, spec.options)


def label_choice(tokenizer: Any, labels: Sequence[str]) -> LabelChoice:
    """Where the labels, as they follow the phrase (" True", " (A)"), first differ in tokens (see LabelChoice)."""
    return LabelChoice.of([tokenizer(ANSWER_SEPARATOR + label, add_special_tokens=False)["input_ids"] for label in labels])


def banned_ids(tokenizer: Any, labels: Sequence[str]) -> frozenset[int]:
    """Token ids that spell an answer label on their own (" True", "False", " A"): never instruction tokens."""
    out: set[int] = set()
    for form in label_variants(labels):
        ids = tokenizer(form, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.add(int(ids[0]))
    return frozenset(out)


def encode_items(
    tokenizer: Any,
    split: PromptSplit,
    items: Sequence[ItemLike],
    *,
    use_chat_template: bool,
    form: Callable[[str], str] = answer_label,
) -> list[EncodedItem]:
    """Each item's prompt as token ids before and after the instruction, and its gold answer's ids (`form`: how the
    answer is written, see `answer_form`)."""
    chat = use_chat_template and getattr(tokenizer, "chat_template", None)
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for n, item in enumerate(items):
        values = {k: str(v) for k, v in item.vars.items()}
        head = render_template(split.head, values, where=f"item {n}")
        tail = render_template(split.tail, values, where=f"item {n}")
        if chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": head + _SENTINEL + tail}], tokenize=False, add_generation_prompt=True
            )
            before_text, after_text = str(text).split(_SENTINEL, 1)
            before = tokenizer(before_text, add_special_tokens=False)["input_ids"]
        else:
            before_text, after_text = head, tail
            before = tokenizer(before_text, add_special_tokens=True)["input_ids"]
        after = tokenizer(after_text, add_special_tokens=False)["input_ids"]
        if not before or (not chat and start_id is not None and before[0] != start_id):
            before = [start_id, *before]  # a slot needs a token before it to be predicted from
        gold: list[int] = []
        if item.expected is not None and str(item.expected).strip():
            gold = tokenizer(build_answer_tail(str(item.expected), phrase="", form=form)[1], add_special_tokens=False)[
                "input_ids"
            ]
        encoded.append(EncodedItem(tuple(before), tuple(after), tuple(gold), item.expected))
    return encoded


def step_items(costs: Sequence[int], order: Sequence[int], max_items: int, max_tokens: int) -> list[int]:
    """The items one step uses, as sorted indices: the first of `order` (a seeded permutation) up to `max_items`,
    as long as their `costs` (tokens each puts through the model) stay within `max_tokens` together; at least one.
    Stopping at the first item that does not fit, rather than skipping it, keeps the subset random: skipping would
    prefer short inputs."""
    chosen: list[int] = []
    total = 0
    for index in order[:max_items]:
        if chosen and total + costs[index] > max_tokens:
            break
        chosen.append(index)
        total += costs[index]
    return sorted(chosen)


@dataclass(frozen=True)
class Problem:
    """What stays fixed during a search: the engine, the encoded items, and the prompt around the instruction."""

    engine: GreaterEngine
    tokenizer: Any
    split: PromptSplit
    items: list[EncodedItem]
    is_word: Callable[[int], bool]
    banned: frozenset[int] = frozenset()  # answer-label tokens
    phrase: str = ""
    labels: tuple[str, ...] = ()

    def token(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    def instruction_text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def prompt_text(self, ids: Sequence[int]) -> str:
        return self.split.join(self.instruction_text(ids))

    def ends_sentence(self, ids: Sequence[int]) -> bool:
        """The instruction's last token holds a '.' (the reference's stop for growing the prompt)."""
        return bool(ids) and "." in self.token(ids[-1])
