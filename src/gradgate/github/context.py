"""What GitHub Actions says about this run: repository, pull request, refs and token.

``github_context_from_env`` reads the environment and the workflow event payload into a ``GitHubContext``;
it never fails, because running outside a pull request is normal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradgate.errors import ConfigError
from gradgate.github.client import DEFAULT_API_URL, GitHubClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GitHubContext:
    """What the environment says about this run; every field may be missing outside GitHub Actions."""

    token: str | None = field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL
    repository: str | None = None
    event_name: str | None = None
    pr_number: int | None = None
    head_repo: str | None = None
    base_repo: str | None = None
    base_ref: str | None = None
    head_ref: str | None = None
    head_sha: str | None = None

    @property
    def is_fork(self) -> bool:
        """The pull request comes from another repository (its GITHUB_TOKEN is read-only)."""
        if self.pr_number is None:
            return False
        if self.head_repo is None or self.base_repo is None:
            return self.event_name in ("pull_request", "pull_request_target")  # deleted fork: assume a fork
        return self.head_repo.lower() != self.base_repo.lower()

    @property
    def can_comment(self) -> bool:
        return bool(self.token) and self.pr_number is not None and self.repository is not None and not self.is_fork

    def client(self, **kwargs: Any) -> GitHubClient:
        if not self.repository:
            raise ConfigError("GITHUB_REPOSITORY is not set", hint="set it to owner/name")
        return GitHubClient(self.token or "", api_url=self.api_url, repository=self.repository, **kwargs)


def read_event(path: str | None) -> dict[str, Any]:
    """The workflow event payload at `path` (GITHUB_EVENT_PATH), or {} when there is none or it is unreadable."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: a hostile, deeply nested payload
        logger.warning("could not read the GitHub event file %s (%s); assuming no pull request", path, type(exc).__name__)
        return {}
    if not isinstance(data, dict):
        logger.warning("the GitHub event file %s is not a JSON object; assuming no pull request", path)
        return {}
    return data


def dig(data: Any, *keys: str) -> Any:
    """data[k1][k2]... or None as soon as a level is not a mapping."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def github_context_from_env(env: Mapping[str, str]) -> GitHubContext:
    """Read the run context from GitHub Actions' environment and event payload; never raises."""
    token = env.get("GITHUB_TOKEN") or env.get("INPUT_GITHUB_TOKEN") or env.get("INPUT_GITHUB-TOKEN") or None
    event = read_event(env.get("GITHUB_EVENT_PATH"))
    pull = event.get("pull_request")
    pr_number: Any = dig(pull, "number")
    if pr_number is None and isinstance(dig(event, "issue", "pull_request"), dict):
        pr_number = dig(event, "issue", "number")  # issue_comment on a pull request
    if not isinstance(pr_number, int) or isinstance(pr_number, bool) or pr_number <= 0:
        if pr_number is not None:
            logger.warning("the GitHub event has an odd pull request number %r; ignoring it", pr_number)
        pr_number = None

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    base_repo = text(dig(pull, "base", "repo", "full_name")) or (env.get("GITHUB_REPOSITORY") if pr_number else None)
    return GitHubContext(
        token=token,
        api_url=(env.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/"),
        repository=env.get("GITHUB_REPOSITORY") or None,
        event_name=env.get("GITHUB_EVENT_NAME") or None,
        pr_number=pr_number,
        head_repo=text(dig(pull, "head", "repo", "full_name")) if pull else base_repo,
        base_repo=base_repo,
        base_ref=text(dig(pull, "base", "ref")) or env.get("GITHUB_BASE_REF") or None,
        head_ref=text(dig(pull, "head", "ref")) or env.get("GITHUB_HEAD_REF") or None,
        head_sha=text(dig(pull, "head", "sha")) or env.get("GITHUB_SHA") or None,
    )
