"""Candidate hygiene: what a rewriter's reply holds, and the cheap checks before any scoring call.

    bodies = parse_prompt_reply(reply.text)          # every method parses replies with this one function
    reason = screen(original, body)                  # None, or why the candidate is rejected without a call

Rejected without a call (`screen`): a candidate that lost a template variable of the original; one that writes an
include (`{{> path}}`) the original does not have (model-written text must never read files from disk); one longer
than `length_cap(original)` (the demonstrations slot is not counted). Duplicates of an earlier candidate are never
rescored: `OptimizeContext` maps them to the earlier record.
"""

from __future__ import annotations

import re

from gradgate.core.demos import slot_problem, without_slot
from gradgate.core.prompts import INCLUDE_RE, template_variables

# A candidate may be this many times as long as the original (slot excluded), and at least MIN_LENGTH_CAP characters.
LENGTH_FACTOR = 4
MIN_LENGTH_CAP = 2000

_TAGGED = re.compile(r"<\s*prompt\s*>(.*?)(?:<\s*/\s*prompt\s*>|(?=<\s*prompt\s*>)|\Z)", re.IGNORECASE | re.DOTALL)
_CLOSE_ONLY = re.compile(r"<\s*/\s*prompt\s*>", re.IGNORECASE)
_FENCE = re.compile(r"\A```[A-Za-z0-9_-]*\s*\n(.*?)\n?```\s*\Z", re.DOTALL)
_LEAD_IN = re.compile(
    r"\A\s*(?:here(?:'s| is)|new prompt|improved prompt|updated prompt|here you go)[^\n]*:\s*\n",
    re.IGNORECASE,
)


def _clean(block: str) -> str:
    text = block.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if len(text) >= 6 and text.startswith('"""') and text.endswith('"""'):
        text = text[3:-3].strip()
    return re.sub(r"<\s*/?\s*prompt\s*>", "", text, flags=re.IGNORECASE).strip()


def parse_prompt_reply(reply: str) -> list[str]:
    """Prompt bodies in a rewriter's reply, tolerant of what small models write.

    Tagged blocks (`<prompt>…</prompt>`, any case) first: a missing closing tag ends at the next opening tag or the
    end. Without an opening tag: the text before a stray closing tag, else the whole reply, minus a lead-in line
    ("Here is the new prompt:"). Each block loses a code fence or triple quotes around it. Empty blocks are dropped.
    """
    found = [m.group(1) for m in _TAGGED.finditer(reply)]
    if not found:
        text = reply.strip()
        close = _CLOSE_ONLY.search(text)
        if close:
            text = text[: close.start()]
        found = [_LEAD_IN.sub("", text.strip() + "\n") if "\n" in text.strip() else text]
    out: list[str] = []
    for block in found:
        text = _clean(block)
        if text and text not in out:
            out.append(text)
    return out


def keep_layout(text: str, original: str) -> str:
    """A model-written body with the original's trailing newline(s): the prompt file keeps its layout."""
    return text.rstrip() + original[len(original.rstrip()) :] if text else text


def length_cap(original: str) -> int:
    return max(MIN_LENGTH_CAP, LENGTH_FACTOR * len(without_slot(original)))


def new_includes(original: str, candidate: str) -> list[str]:
    """Includes the candidate writes that the original does not have."""
    have = {m.group(0) for m in INCLUDE_RE.finditer(original)}
    return [m.group(0) for m in INCLUDE_RE.finditer(candidate) if m.group(0) not in have]


def missing_variables(original: str, candidate: str) -> list[str]:
    """Template variables of the original that the candidate lost."""
    have = set(template_variables(candidate))
    return [v for v in template_variables(original) if v not in have]


def screen(original: str, candidate: str) -> str | None:
    """Why `candidate` must be rejected before any call, or None when it may be scored."""
    if not candidate.strip():
        return "empty candidate"
    lost = missing_variables(original, candidate)
    if lost:
        return f"lost template variable(s): {', '.join(lost)}"
    includes = new_includes(original, candidate)
    if includes:
        return f"writes an include ({', '.join(includes)[:120]}): model-written text never reads files"
    problem = slot_problem(candidate)
    if problem is not None:  # the tuning pull request would write a file that no longer loads
        return f"demonstrations markers: {problem.message}"
    length, cap = len(without_slot(candidate)), length_cap(original)
    if length > cap:
        return f"{length} characters, over the cap of {cap}"
    return None
