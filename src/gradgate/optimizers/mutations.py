"""The mutation library: named, documented instruction edits that seed a search when the rewriter is weak.

A 135M rewriter mostly paraphrases or drops the template variables. These edits are the ones PromptBreeder
("thinking styles") and OPRO (seed instructions) start their searches from; each is one line added to the prompt,
so every `{{variable}}` and the rest of the prompt stay exactly as they are. GRAD-SUM and GPO add a few of them
(`mutations: N` per step, seeded) to the rewriter's candidates; all compete on dev the same way.

| name | kind | where | line added |
|---|---|---|---|
| step-by-step | thinking | before the input | Think step by step. |
| small-steps | thinking | before the input | Work it out in small steps, then give the answer. |
| deep-breath | thinking | before the input | Take a deep breath and work on this problem step by step. |
| check-answer | thinking | before the input | Read the question carefully and check your answer before you reply. |
| restate | thinking | before the input | First restate the problem in your own words, then solve it. |
| answer-options | format | after the input | Answer with one of: "A", "B". (the suite's options) |
| answer-only-options | answer-only | after the input | Answer only with "A" or "B", nothing else. |
| answer-only-final | answer-only | after the input | Answer only with the final answer, nothing else. |
| final-number | format | after the input | End with the final number. (numeric answers) |
| role-expert | role | first line | You are a careful expert. Your task: <the suite's description> |
| role-teacher | role | first line | You are a patient teacher who gets every detail right. |

Options come from the suite: `scoring.options` (log-likelihood scoring), else the closed label set GReaTer's answer
phrase lists too (`scoring.answers.label_set`) when its labels are short; numeric answers are `answers.is_numeric`.
Entries whose data is missing (no options, no description) are skipped.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gradgate.core.prompts import VARIABLE_RE
from gradgate.core.suites import Suite
from gradgate.scoring.answers import is_numeric, label_set

Place = Literal["prefix", "before_input", "suffix"]
Needs = Literal["", "options", "numbers", "task"]

MAX_OPTION_CHARS = 24  # longer labels are not listed in a prompt


@dataclass(frozen=True)
class Mutation:
    name: str
    kind: str  # thinking, format, answer-only, role
    place: Place  # prefix: a first line; before_input: just before the first {{variable}} line; suffix: a last line
    text: str  # the line; {options} / {options_or} / {task} are filled from the suite
    needs: Needs = ""
    doc: str = ""


LIBRARY: tuple[Mutation, ...] = (
    Mutation("step-by-step", "thinking", "before_input", "Think step by step.", doc="zero-shot chain of thought"),
    Mutation(
        "small-steps",
        "thinking",
        "before_input",
        "Work it out in small steps, then give the answer.",
        doc="PromptBreeder thinking style: decomposition",
    ),
    Mutation(
        "deep-breath",
        "thinking",
        "before_input",
        "Take a deep breath and work on this problem step by step.",
        doc="OPRO's best instruction for PaLM 2 on GSM8K",
    ),
    Mutation(
        "check-answer",
        "thinking",
        "before_input",
        "Read the question carefully and check your answer before you reply.",
        doc="self-verification cue",
    ),
    Mutation(
        "restate",
        "thinking",
        "before_input",
        "First restate the problem in your own words, then solve it.",
        doc="PromptBreeder thinking style: rephrasing",
    ),
    Mutation(
        "answer-options",
        "format",
        "suffix",
        "Answer with one of: {options}.",
        needs="options",
        doc="names the answer options, so the answer's form is not guessed",
    ),
    Mutation(
        "answer-only-options",
        "answer-only",
        "suffix",
        "Answer only with {options_or}, nothing else.",
        needs="options",
        doc="options plus a ban on extra text",
    ),
    Mutation(
        "answer-only-final",
        "answer-only",
        "suffix",
        "Answer only with the final answer, nothing else.",
        doc="a ban on extra text when the options are open",
    ),
    Mutation(
        "final-number",
        "format",
        "suffix",
        "End with the final number.",
        needs="numbers",
        doc="for numeric answers scored by their final number",
    ),
    Mutation(
        "role-expert",
        "role",
        "prefix",
        "You are a careful expert. Your task: {task}",
        needs="task",
        doc="a role line naming the task (the suite's description)",
    ),
    Mutation("role-teacher", "role", "prefix", "You are a patient teacher who gets every detail right.", doc="a role line"),
)
BY_NAME = {m.name: m for m in LIBRARY}


@dataclass(frozen=True)
class TaskFacts:
    """What the library's entries are filled with."""

    options: tuple[str, ...] = ()
    numeric: bool = False
    task: str = ""


def facts_for(suite: Suite, task_description: str = "") -> TaskFacts:
    """The answer options (scoring options, else the suite's closed set of short labels) and the task description."""
    options = tuple(suite.spec.scoring.options or ())
    expected = [i.expected for i in suite.items if i.expected is not None]
    if not options:
        labels = label_set(expected)
        if len(labels) > 1 and all(len(x) <= MAX_OPTION_CHARS for x in labels):
            options = labels
    numeric = is_numeric(expected)
    if numeric and len(options) > 2:
        options = ()  # counts are not a closed set of options
    return TaskFacts(options=options, numeric=numeric, task=" ".join(task_description.split()))


def _quoted(options: Sequence[str], last: str) -> str:
    quoted = [f'"{o}"' for o in options]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" {last} " + quoted[-1]


def line_for(mutation: Mutation, facts: TaskFacts) -> str | None:
    """The line this mutation adds for this task, or None when its data is missing."""
    if mutation.needs == "options" and not facts.options:
        return None
    if mutation.needs == "numbers" and not facts.numeric:
        return None
    if mutation.needs == "task" and not facts.task:
        return None
    text = mutation.text.format(
        options=", ".join(f'"{o}"' for o in facts.options),
        options_or=_quoted(facts.options, "or") if facts.options else "",
        task=facts.task,
    )
    return text.replace("{{", "{ {").replace("}}", "} }")  # a description's braces never become variables


def apply(body: str, mutation: Mutation, facts: TaskFacts) -> str | None:
    """The body with the mutation's line added; None when it does not apply or the line is already there."""
    line = line_for(mutation, facts)
    if line is None or line in body:
        return None
    if mutation.place == "prefix":
        return f"{line}\n{body}"
    if mutation.place == "suffix":
        core = body.rstrip()
        return f"{core}\n{line}{body[len(core) :] or chr(10)}"
    match = VARIABLE_RE.search(body)
    if match is None:
        core = body.rstrip()
        return f"{core}\n{line}{body[len(core) :] or chr(10)}"
    start = body.rfind("\n", 0, match.start()) + 1
    return f"{body[:start]}{line}\n{body[start:]}"


def propose(body: str, facts: TaskFacts, *, count: int, rng: random.Random, exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Up to `count` (mutated body, mutation name) pairs, drawn without repeats by `rng`; bodies in `exclude` skipped."""
    if count <= 0:
        return []
    order = list(LIBRARY)
    rng.shuffle(order)
    out: list[tuple[str, str]] = []
    for mutation in order:
        text = apply(body, mutation, facts)
        if text is not None and text not in exclude and all(text != t for t, _ in out):
            out.append((text, mutation.name))
        if len(out) >= count:
            break
    return out
