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

One parser (`marker_lines`) finds the marker lines for every function here, so what `find_slot` reads,
`strip_slot_markers` removes and `slot_problem` checks are the same lines. A marker line is the marker alone
on its line (spaces and tabs around it allowed); a line that only looks like one (an HTML comment naming
gradgate…demos in another case or spelling, or a marker with other text on its line) is `"bad"`: prompt files
holding one are refused at load (`slot_problem`), as are bodies whose markers are not exactly zero or one slot
(one open marker line, later one close marker line, nothing marker-like inside).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gradgate.core.files import shown

OPEN_MARKER = "<!-- gradgate:demos -->"
CLOSE_MARKER = "<!-- /gradgate:demos -->"
SLOT_HINT = (
    f"a prompt holds at most one demonstrations slot: one `{OPEN_MARKER}` line, then one `{CLOSE_MARKER}` line, "
    "each marker alone on its line and written exactly so; nothing marker-like elsewhere or inside the slot"
)

# What may be meant as a marker: gradgate and demos close together (any case, any separator). Searched first,
# so a body without it costs one scan; a hit is a marker line, or "bad" when its line also opens a comment.
_MENTION = re.compile(r"gradgate[^\w\n]{0,8}demos", re.IGNORECASE)
# A marker line, without its "\n": the marker alone, spaces and tabs around it (and a stray "\r") allowed.
_MARKER = re.compile(r"[ \t]*<!--[ \t]*(/?)gradgate:demos[ \t]*-->[ \t]*\r?")
# `inert` text never holds "<!--", so a slot that gradgate wrote never holds a "bad" line.
_COMMENT = "<!--"
_FIRST_VARIABLE = re.compile(r"\{\{\s*[A-Za-z_]")

MarkerKind = Literal["open", "close", "bad"]


@dataclass(frozen=True)
class MarkerLine:
    kind: MarkerKind
    line: int  # 1-based, counted from `first_line`
    start: int  # offset of the line's first character
    end: int  # offset just past the line (past its "\n" when it has one)
    text: str  # the line, without its "\n"


@dataclass(frozen=True)
class SlotProblem:
    line: int  # the offending marker line, counted from `first_line`
    message: str


def marker_lines(text: str, first_line: int = 1) -> list[MarkerLine]:
    """Every marker line and every line that looks like one, in order."""
    found: list[MarkerLine] = []
    line, counted_to, at = first_line, 0, 0
    while (hit := _MENTION.search(text, at)) is not None:
        start = text.rfind("\n", 0, hit.start()) + 1
        stop = text.find("\n", hit.end())
        stop = len(text) if stop < 0 else stop
        at = stop + 1  # one verdict per line
        body = text[start:stop]
        marker = _MARKER.fullmatch(body)
        kind: MarkerKind | None = ("close" if marker.group(1) else "open") if marker else ("bad" if _COMMENT in body else None)
        if kind is None:
            continue
        line += text.count("\n", counted_to, start)
        counted_to = start
        found.append(MarkerLine(kind=kind, line=line, start=start, end=min(stop + 1, len(text)), text=body))
    return found


def slot_problem(text: str, first_line: int = 1) -> SlotProblem | None:
    """Why the marker lines of `text` are not exactly zero or one well-formed slot (None when they are)."""
    opened: MarkerLine | None = None
    closed: MarkerLine | None = None
    for marker in marker_lines(text, first_line):
        line_text = shown(marker.text.strip(), limit=80)
        if marker.kind == "bad":
            message = f"line {marker.line} looks like a demonstrations marker but is not one: {line_text}"
        elif closed is not None and opened is not None:
            slot = f"the slot on lines {opened.line}-{closed.line}"
            message = (
                f"line {marker.line} opens a second demonstrations slot after {slot}"
                if marker.kind == "open"
                else f"line {marker.line} closes a demonstrations slot again, after {slot}"
            )
        elif opened is not None:
            if marker.kind == "close":
                closed = marker
                continue
            message = f"line {marker.line} opens a demonstrations slot inside the one opened on line {opened.line}"
        elif marker.kind == "close":
            message = f"line {marker.line} closes a demonstrations slot that no `{OPEN_MARKER}` line opened"
        else:
            opened = marker
            continue
        return SlotProblem(line=marker.line, message=message)
    if opened is not None and closed is None:
        return SlotProblem(
            line=opened.line, message=f"line {opened.line} opens a demonstrations slot that no `{CLOSE_MARKER}` line closes"
        )
    return None


def _slot(body: str) -> tuple[MarkerLine, MarkerLine] | None:
    markers = marker_lines(body)
    if [m.kind for m in markers] == ["open", "close"]:
        return markers[0], markers[1]
    return None


def find_slot(body: str) -> tuple[int, int] | None:
    """(start, end) of the slot's content (between the marker lines), or None when the body has no slot.

    A body whose markers are not exactly one well-formed slot has none (a loaded prompt never is such a body)."""
    slot = _slot(body)
    return (slot[0].end, slot[1].start) if slot else None


def slot_content(body: str) -> str:
    """The text between the markers ('' when there is no slot)."""
    span = find_slot(body)
    return body[span[0] : span[1]] if span else ""


def with_slot(body: str, content: str) -> str:
    """The body with the slot holding `content`; only the slot's bytes change (or a new slot is inserted).

    Marker lines that do not form one slot (only a model-written candidate can hold them: loaded prompts are
    checked) are dropped first; they are never sent to a model, so what the model sees of the rest is unchanged.
    """
    inner = content if not content or content.endswith("\n") else content + "\n"
    span = find_slot(body)
    if span is not None:
        return body[: span[0]] + inner + body[span[1] :]
    for marker in reversed([m for m in marker_lines(body) if m.kind != "bad"]):
        body = body[: marker.start] + body[marker.end :]
    block = f"{OPEN_MARKER}\n{inner}{CLOSE_MARKER}\n"
    match = _FIRST_VARIABLE.search(body)
    if match is None:
        separator = "" if not body or body.endswith("\n\n") else ("\n" if body.endswith("\n") else "\n\n")
        return body + separator + block
    line_start = body.rfind("\n", 0, match.start()) + 1
    return body[:line_start] + block + "\n" + body[line_start:]


def without_slot(body: str) -> str:
    """The body with the whole slot (markers, content and the blank line `with_slot` put after it) removed."""
    slot = _slot(body)
    if slot is None:
        return body
    opened, closed = slot
    end = closed.start + len(closed.text)
    for _ in range(2):
        end += 1 if body.startswith("\n", end) else 2 if body.startswith("\r\n", end) else 0
    return body[: opened.start] + body[end:]


def strip_slot_markers(text: str) -> str:
    """Remove the marker lines (what a model sees of a slot is its content only)."""
    markers = [m for m in marker_lines(text) if m.kind != "bad"]
    if not markers:
        return text
    parts, at = [], 0
    for marker in markers:
        parts.append(text[at : marker.start])
        at = marker.end
    parts.append(text[at:])
    return "".join(parts)


def inert(text: str) -> str:
    """Text that is safe inside a slot: no `{{variable}}`, no `{{> include}}`, no marker."""
    out = text.replace("{{", "{ {").replace("}}", "} }")
    return out.replace("<!--", "<! --")
