"""The phrase an answer follows after the model's reasoning, and the answer labels written after it.

GReaTer's loss reads the gold answer after this phrase (optimizers/greater) and a loglik suite with
`scoring.reasoning_tokens` ranks its options after it (scoring/scorer.py): one builder, so dev is scored the way
GReaTer trains.

The phrase is built from the suite, as the paper's per-task extractors are ("Therefore, the final answer
(use exact format: '$ True' or '$ False') is $"): a closed label set is listed, numeric answers get a numeric cue, and
a suite may write its own (`scoring.answer_phrase`). Option labels such as "(A)" are answered as "A" (``answer_label``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gradgate.errors import ConfigError

# Appended after the model's reasoning; the loss is the cross-entropy of the gold answer that follows it.
# Close to the paper's extractor. No trailing space: the answer is tokenized with its leading space (" True"),
# which is how BPE vocabularies store words. Used as is when the answers are free text.
EXTRACTION_PHRASE = " Therefore, the final answer is"
LABELLED_PHRASE = " Therefore, the final answer ({labels}) is"  # a closed label set, listed
NUMERIC_PHRASE = " Therefore, the final answer (a number) is"

MAX_LISTED_LABELS = 12  # more distinct answers than this are free text, not a label set
_OPTION_LABEL = re.compile(r"^\(([A-Za-z0-9]{1,3})\)$")  # "(A)" -> "A"
_NUMBER = re.compile(r"^[-+]?(?:\d[\d,]*)?\.?\d+$")  # 42, -3.5, +5, .5, 1,000, 1,000.25


def answer_label(answer: str) -> str:
    """The answer as GReaTer writes it after the phrase: stripped, "(A)" -> "A"."""
    text = answer.strip()
    match = _OPTION_LABEL.match(text)
    return match.group(1) if match else text


def label_set(answers: Sequence[str], options: Sequence[str] = ()) -> tuple[str, ...]:
    """The closed set of answer labels: the suite's options in their order, else the sorted distinct gold answers when
    they are few and recur (at most MAX_LISTED_LABELS, each seen twice on average); () for free-text answers."""
    if options:
        return tuple(dict.fromkeys(answer_label(o) for o in options if o.strip()))
    distinct = tuple(sorted({answer_label(a) for a in answers if a.strip()}))
    if distinct and len(distinct) <= MAX_LISTED_LABELS and 2 * len(distinct) <= len(answers):
        return distinct
    return ()


def is_numeric(answers: Sequence[str]) -> bool:
    cleaned = [a.strip() for a in answers if a.strip()]
    return bool(cleaned) and all(_NUMBER.match(a) for a in cleaned)


def build_extraction_phrase(
    answers: Sequence[str], *, options: Sequence[str] = (), override: str | None = None, where: str | None = None
) -> str:
    """The phrase that follows the reasoning. ``override`` (the suite's or the setting's) wins and must hold text;
    numeric answers get a numeric cue; a closed label set is listed ("(True or False)", "(A, B, C or D)");
    free text gets ``EXTRACTION_PHRASE``."""
    if override is not None:
        if not override.strip():
            raise ConfigError(
                "the extraction phrase is empty: the answer loss needs a phrase to follow the reasoning",
                where=where,
                hint="remove it (GReaTer then builds one from the suite) or write one, e.g. 'Therefore, the final answer is'",
            )
        return " " + override.strip()
    if is_numeric(answers) and not options:
        return NUMERIC_PHRASE
    labels = label_set(answers, options)
    if not labels:
        return EXTRACTION_PHRASE
    listed = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]
    return LABELLED_PHRASE.format(labels=listed)
