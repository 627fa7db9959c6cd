"""Every text GRAD-SUM sends to a model, as named constants, and the one builder that fills them.

Three requests per iteration and prompt of the beam (Austin & Chartock, "GRAD-SUM"):

* GRADIENT: for one failing item, concrete advice on how the prompt should change;
* SUMMARY: all of a prompt's gradients folded into one general paragraph (keeps the edit from
  overfitting to single items, and cuts the editor's input);
* EDIT: a new prompt from the old one and the feedback, between <prompt> tags.

`TEMPLATES` declares each template's fields; a test formats every template with them.

Model output and item content (the prompt under edit, the case's input, output and expected answer, the
evaluator's explanation, the collected advice) reach the model fenced between markers that carry a nonce
(`gradgate.core.fence`): `build_messages` fences the fields in `FENCED` and the system messages say that
fenced text is data. The prompt shown to the editor stays between <prompt> tags, the form its reply
must take.
"""

from __future__ import annotations

from gradgate.core.fence import FENCE_NOTE, fence, make_nonce

GRADIENT_SYSTEM = (
    "You improve instructions (prompts) for an AI assistant. You read one case where the assistant's "
    "output failed a quality check and say how the prompt should change so such cases succeed. "
    "Give advice about the prompt, not a corrected answer." + FENCE_NOTE
)

GRADIENT_TEMPLATE = """Task the prompt is for: {task_description}

The prompt (placeholders like {{{{name}}}} are filled with each case's input):
{prompt}

What a good output does:
{criteria}

The input the assistant got:
{input}

The assistant's output:
{output}
{expected_section}
Why it failed (the evaluator's explanation):
{explanation}

In two to four sentences, give concrete advice on how the prompt should change so that outputs like \
this one pass. Do not solve the case yourself."""

EXPECTED_SECTION = """
The expected answer:
{expected}
"""

SUMMARY_SYSTEM = (
    "You summarize feedback about a prompt for an AI assistant. Merge many pieces of advice into one "
    "short, general paragraph that states what the prompt should change. Keep advice that recurs; drop "
    "details that only fit a single case." + FENCE_NOTE
)

SUMMARY_TEMPLATE = """Task the prompt is for: {task_description}

The prompt:
{prompt}

Advice collected from {count} failing cases:
{gradients}

Write one general paragraph (at most five sentences) that says how the prompt should change."""

EDIT_SYSTEM = (
    "You rewrite prompts for an AI assistant so that it does its task better. You keep every "
    "placeholder written in double curly braces exactly as it is, and you reply with the new prompt "
    "between <prompt> and </prompt>." + FENCE_NOTE
)

EDIT_TEMPLATE = """Task the prompt is for: {task_description}

Current prompt:
<prompt>
{prompt}
</prompt>

Feedback on how the prompt should change:
{feedback}

Write an improved version of the prompt that follows the feedback. Keep these placeholders exactly \
as written: {variables}. Reply with only the new prompt between <prompt> and </prompt>."""

NOT_DESCRIBED = "(not described)"  # the suite and the prompt give no task description
NO_VARIABLES = "(this prompt has none)"
NO_EXPLANATION = "(no explanation given: the output did not meet the criteria)"
FEEDBACK_ITEM = "- {text}"
# The criteria a gradient is asked against when no judge scores the suite: its metrics, by name.
METRIC_CRITERIA = "The output passes the automatic check(s): {names}."
DEFAULT_CRITERIA = "The output is correct."

#: template name -> the fields it must be formatted with
TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gradient": (
        GRADIENT_TEMPLATE,
        ("task_description", "prompt", "criteria", "input", "output", "expected_section", "explanation"),
    ),
    "expected": (EXPECTED_SECTION, ("expected",)),
    "summary": (SUMMARY_TEMPLATE, ("task_description", "prompt", "count", "gradients")),
    "edit": (EDIT_TEMPLATE, ("task_description", "prompt", "feedback", "variables")),
    "feedback_item": (FEEDBACK_ITEM, ("text",)),
}

_SYSTEMS = {"gradient": GRADIENT_SYSTEM, "summary": SUMMARY_SYSTEM, "edit": EDIT_SYSTEM}

#: template name -> {field: fence label}: the fields that hold model output or item content
FENCED: dict[str, dict[str, str]] = {
    "gradient": {"prompt": "PROMPT", "input": "INPUT", "output": "OUTPUT", "explanation": "EXPLANATION"},
    "summary": {"prompt": "PROMPT", "gradients": "ADVICE"},
    "edit": {"feedback": "FEEDBACK"},
}
EXPECTED_LABEL = "EXPECTED"


def build_messages(kind: str, **fields: object) -> list[dict[str, str]]:
    """The chat messages of one GRAD-SUM request (`kind`: gradient, summary or edit)."""
    template, declared = TEMPLATES[kind]
    missing = [name for name in declared if name not in fields]
    if missing:
        raise KeyError(f"{kind} template needs field(s) {', '.join(missing)}")
    values = {name: str(fields[name]) for name in declared}
    fenced = FENCED.get(kind, {})
    expected = _expected_body(values["expected_section"]) if "expected_section" in values else None
    nonce = make_nonce(*(values[name] for name in fenced), expected)
    for name, label in fenced.items():
        values[name] = fence(label, values[name], nonce)
    if expected is not None:
        values["expected_section"] = EXPECTED_SECTION.format(expected=fence(EXPECTED_LABEL, expected, nonce))
    user = template.format(**values)
    return [{"role": "system", "content": _SYSTEMS[kind]}, {"role": "user", "content": user}]


def _expected_body(section: str) -> str | None:
    """The answer inside an `EXPECTED_SECTION` the caller filled (it is fenced here); None for no section."""
    head, tail = EXPECTED_SECTION.split("{expected}")
    if len(section) >= len(head) + len(tail) and section.startswith(head) and section.endswith(tail):
        return section[len(head) : len(section) - len(tail)]
    if section.strip():
        raise ValueError("expected_section must be EXPECTED_SECTION filled with the expected answer, or empty")
    return None


def feedback_list(texts: list[str]) -> str:
    return "\n".join(FEEDBACK_ITEM.format(text=" ".join(t.split())) for t in texts)
