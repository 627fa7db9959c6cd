"""The one redactor (gradgate.core.secrets): canary values never survive `redact`, the logging filter
or the atomic writer; short values and ordinary prose are left alone."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradgate.core.config import parse_config
from gradgate.core.files import atomic_write_text
from gradgate.core.secrets import (
    MASK,
    RedactingFilter,
    forget_registered,
    is_secret_name,
    redact,
    register_env_secret,
    register_secret,
)

CANARY = "canary-7f3a9c1e2b4d"  # no known token shape: only registration or an env name can mask it


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    forget_registered()
    yield
    forget_registered()


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "GITHUB_TOKEN", "gh_token", "MY_SECRET_THING", "DB_PASSWORD", "HF_TOKEN"])
def test_values_of_credential_named_variables_are_masked(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, CANARY)
    assert redact(f"value={CANARY}!") == f"value={MASK}!"


@pytest.mark.parametrize("name", ["PATH_KEYBOARD", "HOME", "MONKEY_BUSINESS", "TOKENIZERS_PARALLELISM"])
def test_ordinary_variables_are_not_secret_names(name: str) -> None:
    assert not is_secret_name(name)


def test_the_credential_a_config_names_is_masked_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GG_PROVIDER_CRED", CANARY)  # an unremarkable name: only the config says it is a key
    assert CANARY in redact(CANARY)
    parse_config({"models": {"task": {"model": "openai/gpt-4o-mini", "api_key_env": "GG_PROVIDER_CRED"}}}, "gradgate.yaml")
    assert redact(f"reply: {CANARY}") == f"reply: {MASK}"


def test_registered_values_are_masked_and_short_ones_refused() -> None:
    assert register_secret(f"  {CANARY}\n")
    assert not register_secret("abc12")  # would mask ordinary text
    assert not register_secret(None)
    assert redact(f"x {CANARY} abc12 y") == f"x {MASK} abc12 y"


def test_env_secret_registered_by_name_counts_a_later_value(monkeypatch: pytest.MonkeyPatch) -> None:
    register_env_secret("GG_LATER")
    monkeypatch.setenv("GG_LATER", CANARY)
    assert CANARY not in redact(CANARY)


def test_the_longest_secret_is_masked_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A_TOKEN", "abcdef")
    monkeypatch.setenv("B_TOKEN", "abcdef-ghijkl")
    assert redact("abcdef-ghijkl") == MASK


@pytest.mark.parametrize(
    ("text", "gone"),
    # Token shapes are built from parts so that no literal token sits in the repository.
    [
        ("token ghp_" + "a1B2" * 9, "ghp_"),
        ("gho_" + "Z" * 36, "gho_"),
        ("ghs_" + "9" * 36 + " in a log", "ghs_"),
        ("ghu_" + "x" * 30, "ghu_"),
        ("github_pat_" + "11" + "A" * 20 + "_" + "b" * 26, "github_pat_"),
        ("key sk-proj-" + "k3y" * 10, "sk-proj"),
        ("Authorization: Bearer " + "eyJhbGci" + "x" * 20 + ".e30.sig", "eyJhbGci"),
        ("http.extraheader=AUTHORIZATION: basic " + "eC1hY2Nl" + "Q" * 16, "eC1hY2Nl"),
        ("clone https://x-access-token:s3cr3t-value@github.com/o/r.git", "s3cr3t-value"),
    ],
)
def test_token_shapes_are_masked_wherever_they_come_from(text: str, gone: str) -> None:
    cleaned = redact(text)
    assert gone not in cleaned and MASK in cleaned


@pytest.mark.parametrize(
    "text",
    ["Bearer authentication is used", "the task-specific sk-learn model", "ssh://git@github.com/o/r", "the token expired"],
)
def test_prose_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_masking_inside_json_keeps_it_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_API_KEY", CANARY)
    document = json.dumps({"a": f"Bearer abc123456789 {CANARY}", "b": "https://u:p4ssw0rd@h/x", "c": "ghp_" + "a" * 36})
    cleaned = redact(document)
    assert json.loads(cleaned) == {"a": f"Bearer {MASK} {MASK}", "b": f"https://{MASK}@h/x", "c": MASK}


def test_the_logging_filter_masks_messages_args_and_tracebacks() -> None:
    register_secret(CANARY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("gradgate.test_secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("calling with %s", CANARY)
        try:
            raise RuntimeError(f"server said {CANARY}")
        except RuntimeError:
            logger.exception("failed")
        logger.warning("bad %s %s", "only one arg")  # a malformed record must not raise
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert CANARY not in text
    assert "calling with ***" in text and "RuntimeError: server said ***" in text


def test_reports_written_through_the_atomic_writer_are_masked(tmp_path: Path) -> None:
    register_secret(CANARY)
    atomic_write_text(tmp_path / "report.md", f"output: {CANARY}\n")
    assert (tmp_path / "report.md").read_text() == f"output: {MASK}\n"
    atomic_write_text(tmp_path / "exact.txt", CANARY, redact_secrets=False)
    assert (tmp_path / "exact.txt").read_text() == CANARY
