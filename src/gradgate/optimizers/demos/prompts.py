"""How demonstrations read inside a prompt's demonstrations slot (`gradgate.core.demos`): the only text the
`demos` method puts in front of the task model. A person reads the same text in the prompt file.

    Examples:

    Input: not True and False
    Answer: False

With one template variable the input is labelled `Input:`; with several, each line is `<variable>: <value>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gradgate.core.demos import inert

DEMOS_HEADER = "Examples:"
INPUT_LABEL = "Input"
ANSWER_LABEL = "Answer"
DEMO_LINE = "{label}: {value}"


@dataclass(frozen=True)
class Demo:
    """One worked example: the item's input values (variable, value) and the answer shown for it."""

    values: tuple[tuple[str, str], ...]
    answer: str
    item_id: str = ""


def format_demo(demo: Demo) -> str:
    if len(demo.values) == 1:
        lines = [DEMO_LINE.format(label=INPUT_LABEL, value=inert(demo.values[0][1].strip()))]
    else:
        lines = [DEMO_LINE.format(label=name, value=inert(value.strip())) for name, value in demo.values]
    lines.append(DEMO_LINE.format(label=ANSWER_LABEL, value=inert(demo.answer.strip())))
    return "\n".join(lines)


def format_demos(demos: Sequence[Demo]) -> str:
    """The slot's content: the header, then one block per demonstration, blank lines between."""
    if not demos:
        return ""
    return "\n\n".join([DEMOS_HEADER, *(format_demo(d) for d in demos)]) + "\n"


_BLOCK = re.compile(
    rf"^(?P<input>.*?)^{ANSWER_LABEL}:[ \t]?(?P<answer>.*?)(?=\n\n(?!{ANSWER_LABEL}:)\S|\Z)", re.MULTILINE | re.DOTALL
)


def parse_demos(content: str) -> list[tuple[str, str]]:
    """(input text, answer) of each demonstration in a slot's content, as a person or gradgate wrote it."""
    text = content.strip()
    if text.startswith(DEMOS_HEADER):
        text = text[len(DEMOS_HEADER) :].lstrip("\n")
    out = []
    for match in _BLOCK.finditer(text):
        shown = match.group("input").strip()
        prefix = f"{INPUT_LABEL}:"
        shown = shown[len(prefix) :].strip() if shown.startswith(prefix) else shown
        out.append((shown, match.group("answer").strip()))
    return out
