"""The meta-prompt GPO sends to the optimizer model: named templates and one builder.

Layout of the user message (after Tang et al., GPO): the task, the retrieved part of the trajectory
(the update direction), the current prompt with its score, a few task examples with gold outputs,
and the update instruction with the edit budget in words. Every template's fields are declared in
`TEMPLATE_FIELDS`; a test formats each with exactly those fields.

The prompts (written by the optimizer model after the first step) and the examples (item content) are
fenced between markers that carry a nonce (`gradgate.core.fence`), so none of them can pass for the
meta-prompt's own words.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradgate.core.fence import FENCE_NOTE, fence, make_nonce
from gradgate.core.method_settings import ScoreScale

OPEN_TAG = "<prompt>"
CLOSE_TAG = "</prompt>"

META_SYSTEM = (
    "You are an expert prompt engineer. You improve a prompt for a language model step by step, the way "
    "gradient descent improves model weights: each step moves the current prompt a limited distance in a "
    "direction that earlier steps suggest will raise its score."
) + FENCE_NOTE

TASK_SECTION = "## Task\n{task}\n"

TRAJECTORY_SECTION = (
    "## Earlier prompts\n"
    "Earlier prompts from this optimization with their scores on a development set. Scores range from "
    "{scale_low} to {scale_high}; higher is better. Notice which changes raised the score and which "
    "lowered it.\n\n"
    "{entries}"
)

TRAJECTORY_EMPTY = (
    "## Earlier prompts\nNone yet: this is the first step. Scores range from {scale_low} to {scale_high}; higher is better.\n"
)

TRAJECTORY_ENTRY = "Prompt (score {score}):\n{text}\n"

CURRENT_SECTION = "## Current prompt (score {score})\n{text}\n"

EXAMPLES_SECTION = "## Examples of the task\nInputs and the output the prompt should lead to:\n\n{examples}"

EXAMPLE_ENTRY = "Input:\n{input}\nGold output:\n{output}\n"

NO_GOLD_OUTPUT = "(none given: a judge scores the output)"

PLACEHOLDER_NOTE = "The prompt is a template: keep each of these placeholders exactly as written: {placeholders}.\n"

UPDATE_INSTRUCTION = (
    "## Your update\n"
    "Write an improved version of the current prompt that should score higher. Change at most {edit_budget} "
    "words of the current prompt (each added, removed or replaced word counts as one) and keep the rest "
    "as it is.\n"
    "{placeholder_note}"
    "Reply with the new prompt only, between {open_tag} and {close_tag}, without the markers that fence the "
    "prompts above."
)

TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "META_SYSTEM": (),
    "TASK_SECTION": ("task",),
    "TRAJECTORY_SECTION": ("scale_low", "scale_high", "entries"),
    "TRAJECTORY_EMPTY": ("scale_low", "scale_high"),
    "TRAJECTORY_ENTRY": ("score", "text"),
    "CURRENT_SECTION": ("score", "text"),
    "EXAMPLES_SECTION": ("examples",),
    "EXAMPLE_ENTRY": ("input", "output"),
    "NO_GOLD_OUTPUT": (),
    "PLACEHOLDER_NOTE": ("placeholders",),
    "UPDATE_INSTRUCTION": ("edit_budget", "placeholder_note", "open_tag", "close_tag"),
}

#: fence labels (the marker's name before the nonce)
FENCE_LABELS = {"prompt": "PROMPT", "input": "INPUT", "gold": "GOLD"}

DEFAULT_TASK = "Improve the prompt so that the model's outputs score higher."

_SCALES: dict[str, tuple[str, str, float, int]] = {  # low, high, factor, decimals
    "0-100": ("0", "100", 100.0, 1),
    "0-1": ("0", "1", 1.0, 3),
}


def format_score(score: float, scale: ScoreScale) -> str:
    """A [0, 1] score written on the scale the meta-prompt states."""
    _, _, factor, decimals = _SCALES[scale]
    return f"{score * factor:.{decimals}f}"


def build_meta_prompt(
    *,
    task: str,
    earlier: Sequence[tuple[str, float]],
    current: str,
    current_score: float,
    examples: Sequence[tuple[str, str | None]],
    edit_budget: int,
    placeholders: Sequence[str] = (),
    scale: ScoreScale = "0-100",
) -> list[dict[str, str]]:
    """Chat messages for one GPO step.

    `earlier`: retrieved trajectory entries other than the current prompt, (text, score in [0, 1]), in the
    order to show; `examples`: (rendered input, gold output or None).
    """
    low, high, _, _ = _SCALES[scale]
    nonce = make_nonce(current, *(t for t, _ in earlier), *(text for pair in examples for text in pair))

    def fenced(kind: str, text: str) -> str:
        return fence(FENCE_LABELS[kind], text, nonce)

    parts = [TASK_SECTION.format(task=task.strip() or DEFAULT_TASK)]
    if earlier:
        entries = "\n".join(TRAJECTORY_ENTRY.format(score=format_score(s, scale), text=fenced("prompt", t)) for t, s in earlier)
        parts.append(TRAJECTORY_SECTION.format(scale_low=low, scale_high=high, entries=entries))
    else:
        parts.append(TRAJECTORY_EMPTY.format(scale_low=low, scale_high=high))
    parts.append(CURRENT_SECTION.format(score=format_score(current_score, scale), text=fenced("prompt", current)))
    if examples:
        shown = "\n".join(
            EXAMPLE_ENTRY.format(input=fenced("input", i), output=NO_GOLD_OUTPUT if o is None else fenced("gold", o))
            for i, o in examples
        )
        parts.append(EXAMPLES_SECTION.format(examples=shown))
    note = PLACEHOLDER_NOTE.format(placeholders=", ".join(placeholders)) if placeholders else ""
    parts.append(
        UPDATE_INSTRUCTION.format(edit_budget=edit_budget, placeholder_note=note, open_tag=OPEN_TAG, close_tag=CLOSE_TAG)
    )
    return [{"role": "system", "content": META_SYSTEM}, {"role": "user", "content": "\n".join(parts)}]
