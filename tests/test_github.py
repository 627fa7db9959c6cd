"""GitHubClient and the run context against the spec-checking fake GitHub server."""

from __future__ import annotations

import datetime as dt
import email.utils
import importlib.util
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gradgate.errors import ConfigError, GitHubError
from gradgate.github.client import (
    MAX_BODY_CHARS,
    GitHubClient,
    hidden_marker,
    truncate_body,
)
from gradgate.github.context import github_context_from_env
from tests import fake_github as fake_module
from tests.fake_github import FakeGitHub, OpenAPISpec, load_spec

fake_github = fake_module.fake_github  # the fixture

TOKEN = "ghs_s3cretTOKENvalue123"
REPO = fake_module.DEFAULT_REPOSITORY
REPO_ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- gradgate-report -->"


def subset_script() -> object:
    """scripts/github_openapi_subset.py as a module (scripts/ is not a package)."""
    path = REPO_ROOT / "scripts" / "github_openapi_subset.py"
    spec = importlib.util.spec_from_file_location("github_openapi_subset", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(fake: FakeGitHub, token: str = TOKEN, **kw: object) -> tuple[GitHubClient, Sleeps]:
    sleeps = Sleeps()
    client = GitHubClient(token, api_url=fake.api_url, repository=REPO, sleep=sleeps, **kw)  # type: ignore[arg-type]
    return client, sleeps


# -- the fake server checks requests against GitHub's description ----------------------------------------


def test_fake_flags_a_body_that_breaks_the_schema(fake_github: FakeGitHub) -> None:
    url = f"{fake_github.api_url}/repos/{REPO}/issues/7/comments"
    bad = httpx.post(url, json={"text": "no body field"})
    assert bad.status_code == 400
    assert any("'body' is a required property" in v for v in fake_github.violations)
    fake_github.violations.clear()  # this test wanted the violation; the fixture would fail otherwise

    good = httpx.post(url, json={"body": "hello"})
    assert good.status_code == 201
    assert fake_github.violations == []
    assert fake_github.comments_on(7)[0]["body"] == "hello"


def test_fake_flags_bad_query_and_unknown_routes(fake_github: FakeGitHub) -> None:
    base = f"{fake_github.api_url}/repos/{REPO}"
    assert httpx.get(f"{base}/pulls", params={"state": "merged"}).status_code == 400
    assert httpx.get(f"{base}/issues/7/comments", params={"perpage": "5"}).status_code == 400
    assert httpx.get(f"{base}/issues/x/comments").status_code == 400
    assert httpx.delete(f"{base}/pulls").status_code == 404
    text = "\n".join(fake_github.violations)
    assert "'state' must be one of" in text
    assert "'perpage' is not declared" in text
    assert "'issue_number' must be an integer" in text
    assert "method not allowed" in text
    fake_github.violations.clear()


# -- the committed subset of GitHub's description -----------------------------------------------------------


def test_committed_subset_is_closed_and_matches_the_script() -> None:
    script: Any = subset_script()
    path = fake_module.spec_path()
    assert path == REPO_ROOT / "tests" / "github_spec" / "api.github.com.subset.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["info"]["version"] == script.VERSION
    assert raw["info"]["x-gradgate-subset"]["operations"] == list(script.OPERATIONS)
    assert script.dangling_refs(raw) == []
    # Cutting the subset again changes nothing: exactly those operations, exactly what they reference.
    assert script.render(script.build_subset(raw, script.OPERATIONS)) == path.read_text(encoding="utf-8")
    operation_ids = {op["operationId"] for item in raw["paths"].values() for op in item.values() if "operationId" in op}
    assert operation_ids == set(script.OPERATIONS)
    # The fake implements every operation of the subset.
    assert all(hasattr(FakeGitHub, "_op_" + op.replace("/", "_").replace("-", "_")) for op in operation_ids)
    licence = (path.parent / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Octokit contributors" in licence
    assert "github_openapi_subset.py" in (path.parent / "README.md").read_text(encoding="utf-8")


def test_an_operation_missing_from_the_subset_fails_the_test(fake_github: FakeGitHub) -> None:
    spec = load_spec()
    assert spec.match("GET", "/repos/o/r/issues/7")[0] is None  # issues/get: real, but gradgate does not call it
    route = spec.match("GET", "/repos/o/r/issues/7/comments")[0]
    assert route is not None and route.operation_id == "issues/list-comments"
    answer = httpx.get(f"{fake_github.api_url}/repos/{REPO}/issues/7")
    assert answer.status_code == 404
    assert fake_github.violations == [
        "GET /repos/octo-org/prompt-repo/issues/7: no such operation in GitHub's OpenAPI description"
    ]
    with pytest.raises(pytest.fail.Exception, match="no such operation"):
        fake_module.assert_no_violations(fake_github)  # what the fixture runs at teardown
    fake_github.violations.clear()


def test_gradgate_calling_an_unlisted_operation_is_a_violation() -> None:
    """Were GET /user not in the subset, the client's identity look-up would be flagged."""
    script: Any = subset_script()
    raw = json.loads(fake_module.spec_path().read_text(encoding="utf-8"))
    without_user = script.build_subset(raw, [op for op in script.OPERATIONS if op != "users/get-authenticated"])
    with FakeGitHub(spec=OpenAPISpec(without_user)) as fake:
        fake.add_comment(3, f"{MARK}\nquoted by a person")
        client, _ = make_client(fake)
        client.upsert_sticky_comment(3, "report", "gradgate-report")
        assert fake.violations == ["GET /user: no such operation in GitHub's OpenAPI description"]
        with pytest.raises(pytest.fail.Exception):
            fake_module.assert_no_violations(fake)


def test_fake_records_without_the_token(tmp_path: Path) -> None:
    record = tmp_path / "rec.json"
    with FakeGitHub(record_file=record) as fake:
        client, _ = make_client(fake)
        client.upsert_sticky_comment(3, "report", "gradgate-report")
    data = json.loads(record.read_text())
    assert [r["operation_id"] for r in data["requests"]] == ["issues/list-comments", "issues/create-comment"]
    assert data["violations"] == []
    assert TOKEN not in record.read_text()


# -- sticky comment --------------------------------------------------------------------------------------


def test_sticky_comment_is_created_once_then_updated(fake_github: FakeGitHub) -> None:
    client, _ = make_client(fake_github)
    first = client.upsert_sticky_comment(12, "score 0.71", "gradgate-report")
    second = client.upsert_sticky_comment(12, "score 0.74", "gradgate-report")
    assert first.created and not second.created
    assert first.id == second.id
    mine = [c for c in fake_github.comments_on(12) if "<!-- gradgate-report -->" in c["body"]]
    assert len(mine) == 1
    assert mine[0]["body"].endswith("score 0.74")
    assert first.url.endswith(f"#issuecomment-{first.id}")
    for request in fake_github.requests:
        assert request.authorized
        assert request.headers["x-github-api-version"] == "2022-11-28"
        assert request.headers["accept"] == "application/vnd.github+json"


def test_sticky_comment_found_on_a_later_page(fake_github: FakeGitHub) -> None:
    for i in range(130):
        fake_github.add_comment(4, f"chatter {i}")
    ours = fake_github.add_comment(4, "<!-- gradgate-report -->\nold", user="github-actions[bot]")
    fake_github.add_comment(4, "more chatter")
    client, _ = make_client(fake_github)
    ref = client.upsert_sticky_comment(4, "new", "gradgate-report")
    assert ref.id == ours["id"] and not ref.created
    assert len(fake_github.comments_on(4)) == 132
    lists = [r for r in fake_github.requests if r.operation_id == "issues/list-comments"]
    pages = [r.query.get("page", ["1"])[0] for r in lists]
    assert pages == ["1", "2"]
    assert ours["body"] == "<!-- gradgate-report -->\nnew"


def test_a_persons_comment_with_the_marker_is_left_alone(fake_github: FakeGitHub) -> None:
    """GITHUB_TOKEN (github-actions[bot], no GET /user): a person's comment quoting the marker stays as it is."""
    person = fake_github.add_comment(6, f"{MARK}\nI copied the report here", user="octocat")
    client, _ = make_client(fake_github)
    first = client.upsert_sticky_comment(6, "score 0.70", "gradgate-report")
    assert first.created and first.id != person["id"]
    rerun, _ = make_client(fake_github)  # the next workflow run
    second = rerun.upsert_sticky_comment(6, "score 0.75", "gradgate-report")
    assert not second.created and second.id == first.id
    assert person["body"] == f"{MARK}\nI copied the report here" and person["updated_at"] == person["created_at"]
    bots = [c for c in fake_github.comments_on(6) if c["user"]["login"] == "github-actions[bot]"]
    assert len(bots) == 1 and bots[0]["body"] == f"{MARK}\nscore 0.75"
    assert bots[0]["user"]["type"] == "Bot"
    calls = [(r.operation_id, r.status) for r in fake_github.requests]
    assert calls == [
        ("issues/list-comments", 200),
        ("users/get-authenticated", 403),  # installation tokens may not read /user: the bot rule applies
        ("issues/create-comment", 201),
        ("issues/list-comments", 200),
        ("users/get-authenticated", 403),
        ("issues/update-comment", 200),
    ]
    rerun.upsert_sticky_comment(6, "score 0.80", "gradgate-report")  # asked once per client
    assert [r.operation_id for r in fake_github.requests].count("users/get-authenticated") == 2


def test_a_personal_token_updates_only_its_own_comment(fake_github: FakeGitHub) -> None:
    """A personal access token: GET /user names the login; other people's and bots' comments stay."""
    fake_github.login = "octo-dev"
    other = fake_github.add_comment(8, f"{MARK}\nquoted", user="octocat")
    bot = fake_github.add_comment(8, f"{MARK}\nfrom a GITHUB_TOKEN run", user="github-actions[bot]")
    client, _ = make_client(fake_github)
    first = client.upsert_sticky_comment(8, "one", "gradgate-report")
    second = client.upsert_sticky_comment(8, "two", "gradgate-report")
    assert first.created and not second.created and first.id == second.id
    assert other["body"] == f"{MARK}\nquoted" and bot["body"] == f"{MARK}\nfrom a GITHUB_TOKEN run"
    mine = [c for c in fake_github.comments_on(8) if c["user"]["login"] == "octo-dev"]
    assert len(mine) == 1 and mine[0]["body"] == f"{MARK}\ntwo" and mine[0]["user"]["type"] == "User"
    assert [r.status for r in fake_github.requests if r.operation_id == "users/get-authenticated"] == [200]


def test_sticky_comment_truncates_to_githubs_limit(fake_github: FakeGitHub) -> None:
    client, _ = make_client(fake_github)
    huge = "```\n" + ("x" * 99 + "\n") * 1000  # 100 kB inside an unclosed code fence
    client.upsert_sticky_comment(5, huge, "gradgate-report")
    body = fake_github.comments_on(5)[0]["body"]
    assert len(body) <= MAX_BODY_CHARS
    assert body.startswith("<!-- gradgate-report -->")
    assert "truncated" in body and body.count("```") % 2 == 0


def test_truncate_body_keeps_short_text_and_cuts_long() -> None:
    assert truncate_body("short") == "short"
    cut = truncate_body("é" * 100, limit=90, note="[cut]")
    assert len(cut) <= 90 and cut.endswith("[cut]")


def test_marker_must_fit_an_html_comment() -> None:
    assert hidden_marker("<!-- a.b -->") == "<!-- a.b -->"
    with pytest.raises(ConfigError):
        hidden_marker("bad -- marker")


def test_enterprise_prefix() -> None:
    with FakeGitHub(prefix="/api/v3") as fake:
        assert fake.api_url.endswith("/api/v3")
        client, _ = make_client(fake)
        client.upsert_sticky_comment(2, "hi", "m")
        assert client.create_or_update_pull("tune", "main", "t", "b").created
        assert fake.violations == []
        # The same request without the prefix is a violation.
        httpx.get(f"{fake.base_url}/repos/{REPO}/pulls")
        assert any("not under the API prefix" in v for v in fake.violations)


# -- pull requests ---------------------------------------------------------------------------------------


def test_pull_created_then_updated(fake_github: FakeGitHub) -> None:
    fake_github.add_pull("gradgate/tune", "main", head_owner="someone-else")  # a fork's same-named branch
    client, _ = make_client(fake_github)
    assert client.find_pull("gradgate/tune", "main") is None
    first = client.create_or_update_pull("gradgate/tune", "main", "Tune prompts", "body 1")
    second = client.create_or_update_pull("gradgate/tune", "main", "Tune prompts (2)", "body 2")
    assert first.created and not second.created and first.number == second.number
    mine = [p for p in fake_github.pulls if p["head"]["label"] == "octo-org:gradgate/tune"]
    assert len(mine) == 1 and mine[0]["body"] == "body 2" and mine[0]["title"] == "Tune prompts (2)"
    found = client.find_pull("gradgate/tune", None)
    assert found is not None and found.number == first.number
    head_queries = [r.query["head"] for r in fake_github.requests if r.operation_id == "pulls/list"]
    assert all(q == ["octo-org:gradgate/tune"] for q in head_queries)


def test_pull_create_race_updates_the_existing_one(fake_github: FakeGitHub) -> None:
    client, _ = make_client(fake_github)
    existing = fake_github.add_pull("tune", "main")
    # The look-up sees nothing (a concurrent run opens the PR in between); the create then says it exists.
    fake_github.fail_next(200, body=[], method="GET", path_contains="/pulls")
    ref = client.create_or_update_pull("tune", "main", "t", "b")
    assert ref.number == existing["number"] and not ref.created


# -- failures --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, "token was rejected"),
        (403, "pull-requests: write"),
        (404, "not found"),
        (422, "Validation Failed"),
    ],
)
def test_http_errors_explain_what_to_do(
    fake_github: FakeGitHub, caplog: pytest.LogCaptureFixture, status: int, expected: str
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_github.fail_next(status)
    client, sleeps = make_client(fake_github)
    with pytest.raises(GitHubError) as info:
        client.upsert_sticky_comment(9, "x", "gradgate-report")
    text = str(info.value)
    assert expected in text
    assert str(status) in text
    assert TOKEN not in text and TOKEN not in caplog.text and TOKEN not in repr(client)
    assert sleeps == []  # client errors are not retried
    assert len(fake_github.requests) == 1


def test_422_includes_githubs_message(fake_github: FakeGitHub) -> None:
    client, _ = make_client(fake_github)
    fake_github.fail_next(
        422,
        body={"message": "Validation Failed", "errors": [{"message": "No commits between main and tune"}]},
        method="POST",
    )
    with pytest.raises(GitHubError, match="No commits between main and tune"):
        client.create_or_update_pull("tune", "main", "t", "b")


def test_token_checks(fake_github: FakeGitHub) -> None:
    fake_github.token = "the-right-one"
    wrong, _ = make_client(fake_github, token="the-wrong-one")
    with pytest.raises(GitHubError, match="token was rejected") as info:
        wrong.find_pull("b")
    assert "the-wrong-one" not in str(info.value)
    missing, _ = make_client(fake_github, token="")
    with pytest.raises(GitHubError, match="no GitHub token was given"):
        missing.find_pull("b")
    right, _ = make_client(fake_github, token="the-right-one")
    assert right.find_pull("b") is None


def test_server_error_is_retried(fake_github: FakeGitHub) -> None:
    fake_github.fail_next(500)
    client, sleeps = make_client(fake_github, backoff=0.5)
    ref = client.upsert_sticky_comment(1, "x", "m")
    assert ref.created
    assert sleeps == [0.5]
    assert [r.status for r in fake_github.requests] == [500, 200, 201]


def test_server_error_gives_up_after_max_retries(fake_github: FakeGitHub) -> None:
    fake_github.fail_next(502, times=10)
    client, sleeps = make_client(fake_github, backoff=0.5, max_retries=2)
    with pytest.raises(GitHubError, match="server error"):
        client.find_pull("b")
    assert sleeps == [0.5, 1.0]
    assert len(fake_github.requests) == 3


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, {"Retry-After": "7"}),
        (403, {"Retry-After": "7", "x-ratelimit-remaining": "0"}),
    ],
)
def test_rate_limit_waits_for_retry_after(fake_github: FakeGitHub, status: int, headers: dict[str, str]) -> None:
    fake_github.fail_next(status, headers=headers, body={"message": "API rate limit exceeded"})
    client, sleeps = make_client(fake_github)
    assert client.find_pull("b") is None
    assert sleeps == [7.0]


def test_rate_limit_honours_a_retry_after_http_date(fake_github: FakeGitHub) -> None:
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    fake_github.fail_next(429, headers={"Retry-After": when}, body={"message": "API rate limit exceeded"})
    client, sleeps = make_client(fake_github)
    assert client.find_pull("b") is None
    assert len(sleeps) == 1 and 20 < sleeps[0] <= 30


def test_rate_limit_longer_than_the_cap_fails_without_sleeping(fake_github: FakeGitHub) -> None:
    fake_github.fail_next(403, headers={"Retry-After": "3600", "x-ratelimit-remaining": "0"})
    client, sleeps = make_client(fake_github, max_wait=60)
    with pytest.raises(GitHubError, match="rate limit") as info:
        client.find_pull("b")
    assert "3600s" in str(info.value) and sleeps == []


def test_unreachable_api_is_a_github_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    client = GitHubClient(TOKEN, api_url=f"http://{TOKEN}@127.0.0.1:{port}", repository=REPO, sleep=sleeps, max_retries=1)
    with pytest.raises(GitHubError, match="could not reach") as info:
        client.find_pull("b")
    assert TOKEN not in str(info.value) and len(sleeps) == 1


def test_bad_repository_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        GitHubClient(TOKEN, repository="no-slash")


# -- context from the environment ------------------------------------------------------------------------


def _event(tmp_path: Path, payload: object) -> str:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(payload) if not isinstance(payload, str) else payload)
    return str(path)


def _pr_event(head_repo: str | None) -> dict[str, object]:
    return {
        "pull_request": {
            "number": 42,
            "head": {
                "ref": "feature",
                "sha": "a" * 40,
                "repo": {"full_name": head_repo} if head_repo else None,
            },
            "base": {"ref": "main", "repo": {"full_name": "octo-org/prompt-repo"}},
        }
    }


def test_context_for_a_same_repo_pull_request(tmp_path: Path) -> None:
    env = {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOSITORY": "octo-org/prompt-repo",
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_API_URL": "https://ghe.example/api/v3/",
        "GITHUB_EVENT_PATH": _event(tmp_path, _pr_event("octo-org/prompt-repo")),
    }
    ctx = github_context_from_env(env)
    assert (ctx.pr_number, ctx.base_ref, ctx.head_ref, ctx.head_sha) == (42, "main", "feature", "a" * 40)
    assert ctx.api_url == "https://ghe.example/api/v3"
    assert not ctx.is_fork and ctx.can_comment
    assert TOKEN not in repr(ctx)


def test_context_for_a_fork(tmp_path: Path) -> None:
    env = {
        "INPUT_GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOSITORY": "octo-org/prompt-repo",
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": _event(tmp_path, _pr_event("stranger/prompt-repo")),
    }
    ctx = github_context_from_env(env)
    assert ctx.token == TOKEN and ctx.is_fork and not ctx.can_comment
    deleted = github_context_from_env({**env, "GITHUB_EVENT_PATH": _event(tmp_path, _pr_event(None))})
    assert deleted.is_fork


@pytest.mark.parametrize("payload", ["{not json", "[1, 2]", {"pull_request": {"number": "7"}}, {}])
def test_context_survives_odd_event_files(tmp_path: Path, caplog: pytest.LogCaptureFixture, payload: object) -> None:
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": "o/r", "GITHUB_EVENT_PATH": _event(tmp_path, payload)}
    ctx = github_context_from_env(env)
    assert ctx.pr_number is None and not ctx.can_comment
    missing = github_context_from_env({**env, "GITHUB_EVENT_PATH": str(tmp_path / "nope.json")})
    assert missing.pr_number is None
    assert "could not read the GitHub event file" in caplog.text


def test_context_outside_actions() -> None:
    ctx = github_context_from_env({})
    assert ctx.token is None and ctx.repository is None and not ctx.can_comment
    assert ctx.api_url == "https://api.github.com"


def test_context_for_issue_comment_on_a_pull_request(tmp_path: Path) -> None:
    payload = {"issue": {"number": 8, "pull_request": {"url": "x"}}}
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": "o/r", "GITHUB_EVENT_PATH": _event(tmp_path, payload)}
    ctx = github_context_from_env(env)
    assert ctx.pr_number == 8 and ctx.can_comment


def test_fake_runs_as_a_process(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    repo_root = Path(__file__).resolve().parents[1]
    command = ["-m", "tests.fake_github", "--port", "0", "--record", str(record), "--prefix", "/api/v3"]
    proc = subprocess.Popen(
        [sys.executable, *command],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        api_url = line.strip().rsplit(" ", 1)[-1]
        assert api_url.endswith("/api/v3")
        client = GitHubClient(TOKEN, api_url=api_url, repository=REPO)
        client.upsert_sticky_comment(3, "from a process", "gradgate-report")
        httpx.post(f"{api_url}/repos/{REPO}/issues/3/comments", json={"body": 1})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    data = json.loads(record.read_text())
    assert [r["status"] for r in data["requests"]] == [200, 201, 400]
    assert len(data["violations"]) == 1 and "is not of type 'string'" in data["violations"][0]
