"""The one redactor: keeps credentials out of logs, errors, reports, caches and pull-request text.

`redact(text)` masks, longest first:

* the value of every environment variable whose name looks like a credential (ends in `_KEY`,
  `_TOKEN`, `_PAT`, or contains `SECRET`, `PASSWORD`, `PASSWD` or `CREDENTIAL`);
* the value of every variable registered by name (`register_env_secret`; the config's `api_key_env`
  of each model is registered when the config is loaded) and every value registered directly
  (`register_secret`);
* well-known token shapes, wherever they come from: GitHub tokens (`ghp_`, `gho_`, `ghs_`, `ghu_`,
  `ghr_`, `github_pat_`), `sk-` API keys, `Bearer …`, `Authorization: Basic …`, and the credentials
  of `scheme://user:password@host` URLs.

Values shorter than `MIN_SECRET_LENGTH` are never masked (they would mask ordinary text).
`RedactingFilter` applies `redact` to every log record, exception text included.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping

MASK = "***"
MIN_SECRET_LENGTH = 6

_SECRET_NAME = re.compile(r"(_KEY|_TOKEN|_PAT|_APIKEY)$|^(KEY|TOKEN|APIKEY)$|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Token shapes. The character classes never include quotes, backslashes or angle brackets, so masking
# inside JSON or Markdown keeps the document well-formed.
_TOKEN_SHAPES = re.compile(
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"
    r"|(?<![A-Za-z0-9_])sk-[A-Za-z0-9_-]{16,}"
)
_TOKEN_CHARS = r"[A-Za-z0-9._~+/=-]"
_AUTH_SCHEMES = re.compile(
    # `Authorization: <scheme> <credential>` (HTTP headers, git's http.extraheader): always a credential.
    rf"(?P<head>\bauthorization\s*[:=]\s*[\"']?\s*(?:bearer|basic|token|digest)[ \t]+){_TOKEN_CHARS}{{4,}}"
    # `Bearer <token>` alone: a token has a digit or punctuation, or is long (so "Bearer authentication" stays).
    rf"|(?P<bearer>\bbearer[ \t]+)(?:(?=[A-Za-z]*[0-9._~+/=-]){_TOKEN_CHARS}{{8,}}|[A-Za-z]{{20,}})",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/@:\"'<>]+:[^\s/@\"'<>]+@")

_lock = threading.Lock()
_registered_values: set[str] = set()
_registered_names: set[str] = set()


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential."""
    return bool(_SECRET_NAME.search(name))


def register_secret(value: str | None) -> bool:
    """Mask `value` from now on. Values shorter than MIN_SECRET_LENGTH are refused (False)."""
    cleaned = (value or "").strip()
    if len(cleaned) < MIN_SECRET_LENGTH:
        return False
    with _lock:
        _registered_values.add(cleaned)
    return True


def register_env_secret(name: str | None) -> None:
    """Mask the value of environment variable `name` (read at redaction time, so a later value counts too)."""
    if name:
        with _lock:
            _registered_names.add(name)


def forget_registered() -> None:
    """Drop every registered value and name (tests)."""
    with _lock:
        _registered_values.clear()
        _registered_names.clear()


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Every value to mask, longest first (so a secret that contains another is masked whole)."""
    env = os.environ if env is None else env
    with _lock:
        values = set(_registered_values)
        names = set(_registered_names)
    for key, value in env.items():
        if key in names or is_secret_name(key):
            cleaned = (value or "").strip()
            if len(cleaned) >= MIN_SECRET_LENGTH:
                values.add(cleaned)
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every known secret value and every token shape replaced by MASK."""
    if not text:
        return text
    values = [v for v in (e.strip() for e in extra if e) if len(v) >= MIN_SECRET_LENGTH]
    for value in sorted(values, key=len, reverse=True) + secret_values():
        if value in text:
            text = text.replace(value, MASK)
    text = _TOKEN_SHAPES.sub(MASK, text)
    text = _AUTH_SCHEMES.sub(lambda m: (m.group("head") or m.group("bearer")) + MASK, text)
    return _URL_CREDENTIALS.sub(lambda m: m.group("scheme") + MASK + "@", text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, and in its exception and stack text, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its template, masked
            message = str(record.msg)
            record.args = None
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
