"""The demonstrations slot of a prompt body: worked examples between two marker lines.

    Answer the following question.

    <!-- gradgate:demos -->
    Examples:

    Input: not True and False
    Answer: False
    <!-- /gradgate:demos -->

    {{input}}

The slot is plain text a person can read and edit; the two marker lines are never sent to a model
(`strip_slot_markers` removes them when a prompt is rendered). Writing a slot changes only the bytes
between the markers, or, when the body has no slot yet, inserts one just before the line with the first
`{{variable}}` (or at the end): everything outside it stays byte-for-byte. Text put in the slot is made
inert (`inert`): doubled braces cannot become variables or `{{> includes}}`, and no marker can be faked.
"""

from __future__ import annotations

import re

OPEN_MARKER = "<!-- gradgate:demos -->"
CLOSE_MARKER = "<!-- /gradgate:demos -->"

_MARKER_LINE = re.compile(r"^[ \t]*<!--[ \t]*/?gradgate:demos[ \t]*-->[ \t]*(?:\r?\n|\Z)", re.MULTILINE)
_SLOT = re.compile(
    r"^[ \t]*<!--[ \t]*gradgate:demos[ \t]*-->[ \t]*\r?\n(?P<content>.*?)^[ \t]*<!--[ \t]*/gradgate:demos[ \t]*-->[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_FIRST_VARIABLE = re.compile(r"\{\{\s*[A-Za-z_]")


def find_slot(body: str) -> tuple[int, int] | None:
    """(start, end) of the slot's content (between the marker lines), or None when the body has no slot."""
    match = _SLOT.search(body)
    return (match.start("content"), match.end("content")) if match else None


def slot_content(body: str) -> str:
    """The text between the markers ('' when there is no slot)."""
    span = find_slot(body)
    return body[span[0] : span[1]] if span else ""


def with_slot(body: str, content: str) -> str:
    """The body with the slot holding `content`; only the slot's bytes change (or a new slot is inserted)."""
    inner = content if not content or content.endswith("\n") else content + "\n"
    span = find_slot(body)
    if span is not None:
        return body[: span[0]] + inner + body[span[1] :]
    block = f"{OPEN_MARKER}\n{inner}{CLOSE_MARKER}\n"
    match = _FIRST_VARIABLE.search(body)
    if match is None:
        separator = "" if not body or body.endswith("\n\n") else ("\n" if body.endswith("\n") else "\n\n")
        return body + separator + block
    line_start = body.rfind("\n", 0, match.start()) + 1
    return body[:line_start] + block + "\n" + body[line_start:]


def without_slot(body: str) -> str:
    """The body with the whole slot (markers, content and the blank line `with_slot` put after it) removed."""
    match = _SLOT.search(body)
    if match is None:
        return body
    end = match.end()
    for _ in range(2):
        end += 1 if body.startswith("\n", end) else 2 if body.startswith("\r\n", end) else 0
    return body[: match.start()] + body[end:]


def strip_slot_markers(text: str) -> str:
    """Remove the two marker lines (what a model sees of a slot is its content only)."""
    if "gradgate:demos" not in text:
        return text
    return _MARKER_LINE.sub("", text)


def inert(text: str) -> str:
    """Text that is safe inside a slot: no `{{variable}}`, no `{{> include}}`, no marker."""
    out = text.replace("{{", "{ {").replace("}}", "} }")
    return out.replace("<!--", "<! --")
