"""GitHub Actions runtime integration: step outputs, the job summary, annotations, secret masking.

Everything here is a no-op outside GitHub Actions (``GITHUB_ACTIONS`` is not ``true``), so the CLI can call
it unconditionally. Workflow commands go to stdout, which is where the runner reads them; the output and
summary files are appended to, as the runner expects (it reads them after the step, so no atomic rename).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

# GitHub refuses a step summary larger than 1 MiB (the whole file of one step).
MAX_SUMMARY_BYTES = 1024 * 1024
SUMMARY_TRUNCATION_NOTE = "\n\n> [!WARNING]\n> gradgate truncated this summary to fit GitHub's 1 MiB limit.\n"


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def in_github_actions(env: Mapping[str, str] | None = None) -> bool:
    return _env(env).get("GITHUB_ACTIONS") == "true"


def _runner_file(variable: str, env: Mapping[str, str] | None) -> Path | None:
    values = _env(env)
    if not in_github_actions(values):
        return None
    path = values.get(variable)
    if not path:
        logger.debug("%s is not set; skipping", variable)
        return None
    return Path(path)


def set_output(name: str, value: str, *, env: Mapping[str, str] | None = None) -> None:
    """Set step output ``name``; multiline values use a random heredoc delimiter that cannot clash."""
    if not name or any(ch in name for ch in "\r\n=<") or name != name.strip():
        raise ValueError(f"invalid step output name {name!r}")
    path = _runner_file("GITHUB_OUTPUT", env)
    if path is None:
        return
    text = str(value)
    if "\n" in text or "\r" in text:
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        while delimiter in text:  # astronomically unlikely, but a clash would corrupt every later output
            delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        record = f"{name}<<{delimiter}\n{text}\n{delimiter}\n"
    else:
        record = f"{name}={text}\n"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(record)


def _cut_utf8(data: bytes, limit: int) -> bytes:
    """The longest prefix of ``data`` within ``limit`` bytes that ends on a character boundary."""
    return data[: max(0, limit)].decode("utf-8", errors="ignore").encode("utf-8")


def write_step_summary(markdown: str, *, env: Mapping[str, str] | None = None) -> None:
    """Append ``markdown`` to the job summary, truncating so the step's file stays within 1 MiB."""
    path = _runner_file("GITHUB_STEP_SUMMARY", env)
    if path is None:
        return
    used = path.stat().st_size if path.exists() else 0
    room = MAX_SUMMARY_BYTES - used
    data = (markdown if markdown.endswith("\n") else markdown + "\n").encode("utf-8")
    if len(data) > room:
        note = SUMMARY_TRUNCATION_NOTE.encode("utf-8")
        if room < len(note) + 1:
            logger.warning("the job summary is full (%d bytes); dropping %d bytes", used, len(data))
            return
        logger.warning("the job summary would exceed 1 MiB; truncating %d bytes to %d", len(data), room)
        data = _cut_utf8(data, room - len(note)) + note
    with path.open("ab") as fh:
        fh.write(data)


def escape_data(text: str) -> str:
    """Escape a workflow command's message (GitHub's documented escaping)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command's property value: also ``:`` and ``,``, which delimit properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(name: str, message: str, properties: Mapping[str, str | int | None], env: Mapping[str, str] | None) -> None:
    if not in_github_actions(env):
        return
    props = ",".join(f"{key}={escape_property(str(value))}" for key, value in properties.items() if value is not None)
    line = f"::{name}{' ' + props if props else ''}::{escape_data(message)}\n"
    sys.stdout.write(line)
    sys.stdout.flush()


def annotate(
    level: Literal["error", "warning", "notice"],
    message: str,
    file: str | None = None,
    line: int | None = None,
    title: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> None:
    """An annotation, shown on the file and line in the pull request's diff when given."""
    _command(level, message, {"file": file, "line": line, "title": title}, env)


def mask_secret(value: str, *, env: Mapping[str, str] | None = None) -> None:
    """Ask the runner to mask ``value`` in all later log output (each line of a multiline secret)."""
    if not in_github_actions(env):
        return
    for part in value.splitlines():
        if part.strip():
            sys.stdout.write(f"::add-mask::{escape_data(part)}\n")
    sys.stdout.flush()
