"""The gate's pull request comment against the spec-checked fake GitHub server on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import fake_github as fake_module
from tests.fake_github import FakeGitHub
from tests.test_gate import check, gh_env, make_repo

fake_github = fake_module.fake_github  # the fixture
REPO = fake_module.DEFAULT_REPOSITORY
MARKER = "<!-- gradgate-check -->"
TOKEN = "ghs_test-token-0123456789"
NO_SLEEP = {"sleep": lambda seconds: None}


def pr_env(tmp_path: Path, api_url: str, *, number: int = 7, fork: bool = False, token: str | None = TOKEN) -> dict[str, str]:
    head_repo = "someone/prompt-repo" if fork else REPO
    event = {
        "pull_request": {
            "number": number,
            "head": {"ref": "feature", "repo": {"full_name": head_repo}},
            "base": {"ref": "main", "repo": {"full_name": REPO}},
        }
    }
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    extra = {
        "GITHUB_API_URL": api_url,
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_EVENT_PATH": str(path),
        "GITHUB_EVENT_NAME": "pull_request",
    }
    if token:
        extra["GITHUB_TOKEN"] = token
    return gh_env(tmp_path, **extra)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built once: one repository with a regression, one with only an improvement."""
    root = tmp_path_factory.mktemp("gate-gh")
    return {"regress": make_repo(root / "regress"), "clean": make_repo(root / "clean", regress=False)}


def ours(gh: FakeGitHub, number: int = 7) -> list[dict[str, Any]]:
    """gradgate's comments: the marker, written by the token's account (GITHUB_TOKEN: github-actions[bot])."""
    return [c for c in gh.comments_on(number) if MARKER in c["body"] and c["user"]["login"] == gh.login]


def test_sticky_comment_created_once_then_updated(fake_github: FakeGitHub, repos: dict[str, Path], tmp_path: Path) -> None:
    fake_github.add_comment(7, "LGTM from a human")
    quote = fake_github.add_comment(7, f"{MARKER}\nA human pasted an old report", user="octocat")
    env = pr_env(tmp_path, fake_github.api_url)
    first = check(repos["regress"], tmp_path / "out1", env)
    assert first.exit_code == 1 and first.comment_url
    assert len(ours(fake_github)) == 1 and "❌ 1 regressed" in ours(fake_github)[0]["body"]
    second = check(repos["clean"], tmp_path / "out2", env)  # the pull request was fixed
    assert second.exit_code == 0
    mine = ours(fake_github)
    assert len(mine) == 1 and "regressed" not in mine[0]["body"].split("\n")[1]
    assert "✅ 1 improved" in mine[0]["body"]
    assert len(fake_github.comments_on(7)) == 3  # the humans' comments are untouched, the quote too
    assert quote["body"] == f"{MARKER}\nA human pasted an old report"
    methods = [(r.method, r.operation_id) for r in fake_github.requests]
    assert methods.count(("POST", "issues/create-comment")) == 1
    assert methods.count(("PATCH", "issues/update-comment")) == 1
    assert all(r.authorized for r in fake_github.requests)
    # The step summary got the same report before the run ended.
    assert "✅ 1 improved" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()


def test_github_enterprise_api_url(repos: dict[str, Path], tmp_path: Path) -> None:
    with FakeGitHub(prefix="/api/v3") as gh:
        outcome = check(repos["clean"], tmp_path / "out", pr_env(tmp_path, gh.api_url))
        assert outcome.exit_code == 0 and len(ours(gh)) == 1
        assert all(r.path.startswith("/repos/") for r in gh.requests)
        assert gh.violations == []


@pytest.mark.parametrize("kind", ["fork", "no-token", "not-a-pull-request"])
def test_no_comment_but_summary_and_verdict(kind: str, fake_github: FakeGitHub, repos: dict[str, Path], tmp_path: Path) -> None:
    env = pr_env(tmp_path, fake_github.api_url, fork=kind == "fork", token=None if kind == "no-token" else TOKEN)
    if kind == "not-a-pull-request":
        Path(env["GITHUB_EVENT_PATH"]).write_text(json.dumps({"ref": "refs/heads/main"}))
    outcome = check(repos["regress"], tmp_path / "out", env)
    assert outcome.exit_code == 1 and outcome.error is None and outcome.comment_url is None
    assert fake_github.requests == []
    assert "❌ 1 regressed" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "verdict=regressed" in Path(env["GITHUB_OUTPUT"]).read_text()


@pytest.mark.parametrize(
    ("status", "headers", "said"),
    [
        (401, {}, "token was rejected"),
        (403, {}, "lacks permission"),
        (404, {}, "was not found"),
        (422, {}, "rejected the request as invalid"),
        (500, {}, "server error"),
        (429, {"Retry-After": "3600"}, "rate limit hit"),
        (403, {"Retry-After": "3600", "x-ratelimit-remaining": "0"}, "asks to wait 3600s"),
    ],
)
def test_api_faults_end_with_a_message_and_exit_3(
    status: int,
    headers: dict[str, str],
    said: str,
    fake_github: FakeGitHub,
    repos: dict[str, Path],
    tmp_path: Path,
) -> None:
    fake_github.fail_next(status, headers, times=10)
    env = pr_env(tmp_path, fake_github.api_url)
    outcome = check(repos["clean"], tmp_path / "out", env, github_options=NO_SLEEP)
    assert outcome.exit_code == 3
    assert said in (outcome.error or "")
    if not headers:  # rate limits say how long GitHub asked to wait instead of the status
        assert f"failed with {status}" in (outcome.error or "")
    assert TOKEN not in (outcome.error or "")
    # Written before the failing exit: report, job summary, outputs.
    assert "✅ 1 improved" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "verdict=improved" in Path(env["GITHUB_OUTPUT"]).read_text()
    assert (tmp_path / "out" / "report.md").is_file()


def test_short_rate_limit_is_waited_out(fake_github: FakeGitHub, repos: dict[str, Path], tmp_path: Path) -> None:
    waits: list[float] = []
    fake_github.fail_next(429, {"Retry-After": "2"}, times=1)
    outcome = check(
        repos["clean"],
        tmp_path / "out",
        pr_env(tmp_path, fake_github.api_url),
        github_options={"sleep": waits.append},
    )
    assert outcome.exit_code == 0 and waits == [2.0] and len(ours(fake_github)) == 1


def test_comment_failure_does_not_hide_a_regression(fake_github: FakeGitHub, repos: dict[str, Path], tmp_path: Path) -> None:
    fake_github.fail_next(403, times=10)
    outcome = check(repos["regress"], tmp_path / "out", pr_env(tmp_path, fake_github.api_url), github_options=NO_SLEEP)
    assert outcome.exit_code == 1 and "lacks permission" in (outcome.error or "")
