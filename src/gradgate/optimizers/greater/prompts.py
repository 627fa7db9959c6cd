"""Texts GReaTer puts in front of the model, and how a prompt body is cut around the text it optimizes.

GReaTer sends no instructions to a large model: the only model-facing texts are the phrase that asks the optimized
model for its final answer after its own reasoning (or, with no reasoning, the scorer's answer prefix), and the
instruction used when a prompt has none to optimize.

The extraction phrase is built from the suite (gradgate.scoring.answers, shared with the scorer, which ranks a loglik
suite's options after it when the suite sets `scoring.reasoning_tokens`). After reasoning, option labels such as "(A)"
are answered as "A" (``answer_label``) in the phrase, in the loss and when generated answers are matched; with no
reasoning the option is written as the scorer ranks it, "(A)" (encoding.answer_form), and a right answer is decided
at the token where the options first differ (engine.LabelChoice).

Optimizable span: the free text of the prompt body outside ``{{variable}}`` placeholders, either after the last
placeholder (``suffix``) or before the first (``prefix``); ``auto`` takes the suffix when it holds a letter, else the
prefix. Whitespace around the span and all text between placeholders stay fixed. A body with no free text gets
``SEED_INSTRUCTION`` as a suffix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gradgate.core.method_settings import SpanChoice
from gradgate.core.prompts import VARIABLE_RE
from gradgate.errors import ConfigError
from gradgate.models.local.runtime import DEFAULT_ANSWER_PREFIX
from gradgate.scoring.answers import EXTRACTION_PHRASE, answer_label

# Put between the extraction phrase and the gold answer.
ANSWER_SEPARATOR = " "

# With no reasoning (max_new_tokens 0) the answer follows the prompt as the embedded runtime ranks a loglik suite's
# options: the assistant turn opens with its answer prefix, then the suite's answer phrase if any, then the option.
DIRECT_PHRASE = DEFAULT_ANSWER_PREFIX.rstrip()

# Used when the prompt body has no free text to optimize (e.g. a body that is only "{{question}}").
SEED_INSTRUCTION = "Let's think step by step."

_LABEL_LINE = re.compile(r"[A-Za-z][\w ]{0,30}:")  # "A:", "Answer:": kept fixed at the end of a suffix
_HAS_LETTER = re.compile(r"[A-Za-z]")


def build_answer_tail(
    gold: str, *, phrase: str = EXTRACTION_PHRASE, form: Callable[[str], str] = answer_label
) -> tuple[str, str]:
    """(phrase, answer text) that follow the reasoning; the loss is taken on the answer text only. `form` writes the
    answer: GReaTer's label ("(A)" -> "A") by default."""
    return phrase, ANSWER_SEPARATOR + form(gold)


def direct_phrase(suite_phrase: str | None) -> str:
    """The text before the answer when the model does not reason: the scorer's, so train and dev read one sequence."""
    return DIRECT_PHRASE + (" " + suite_phrase.strip() if suite_phrase and suite_phrase.strip() else "")


def label_variants(labels: Sequence[str]) -> tuple[str, ...]:
    """Spellings of each label a tokenizer may give its own token: with and without a leading space, as written and
    as GReaTer writes it ("(A)" and "A"), lower case and capitalized. Their tokens are banned from the instruction
    (the answer must not leak in)."""
    out: dict[str, None] = {}
    spellings = dict.fromkeys(s for label in labels for s in (label, answer_label(label)))
    for spelling in spellings:
        for form in (spelling, spelling.lower(), spelling.capitalize()):
            out[form] = out[" " + form] = None
    return tuple(out)


@dataclass(frozen=True)
class PromptSplit:
    head: str  # body text up to the instruction (may hold placeholders), fixed
    instruction: str  # the optimized free text
    tail: str  # body text after the instruction, fixed

    def join(self, instruction: str) -> str:
        return self.head + instruction + self.tail


def split_prompt(body: str, span: SpanChoice = "auto") -> PromptSplit:
    """Cut the body into fixed head, optimized instruction and fixed tail (see the module docstring).

    The instruction is made of whole lines without placeholders: those after the last placeholder's line
    (``suffix``, trailing label lines such as "A:" excluded) or those before the first placeholder's line
    (``prefix``), so labels like "Question: {{q}}" stay fixed.
    """
    matches = list(VARIABLE_RE.finditer(body))
    if not matches:
        raise ConfigError(
            "the prompt has no {{variable}} placeholder, so the items' inputs have nowhere to go",
            hint="put the input in the body, e.g. 'Question: {{question}}'",
        )
    prefix_end = body.rfind("\n", 0, matches[0].start()) + 1  # start of the first placeholder's line
    newline = body.find("\n", matches[-1].end())
    suffix_start = len(body) if newline < 0 else newline + 1  # just after the last placeholder's line
    suffix_end = len(body)
    lines = body[suffix_start:].splitlines(keepends=True)
    while lines and (not lines[-1].strip() or _LABEL_LINE.fullmatch(lines[-1].strip())):
        suffix_end -= len(lines.pop())
    if span == "suffix" or (span == "auto" and _HAS_LETTER.search(body[suffix_start:suffix_end])):
        start, end = suffix_start, suffix_end
    elif span == "prefix" or (span == "auto" and _HAS_LETTER.search(body[:prefix_end])):
        start, end = 0, prefix_end
    else:
        start = end = suffix_start
    text = body[start:end]
    core = text.strip()
    if not core:  # nothing to optimize there: seed an instruction on its own line
        head, tail = body[:start], body[end:]
        if head and not head.endswith("\n"):
            head += "\n"
        if tail and not tail.startswith("\n"):
            tail = "\n" + tail
        return PromptSplit(head=head, instruction=SEED_INSTRUCTION, tail=tail)
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return PromptSplit(head=body[:start] + lead, instruction=core, tail=trail + body[end:])
