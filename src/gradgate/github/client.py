"""The GitHub REST API: the sticky pull request comment and the auto-tuning pull request.

``GitHubClient`` is a small synchronous httpx client for one repository. It retries 5xx answers and rate
limits (429, or 403 with ``x-ratelimit-remaining: 0``) with backoff, honouring ``Retry-After`` up to a cap,
and turns every failure into a ``GitHubError`` that says what to do. The token is sent only in the
``Authorization`` header to the configured API host and is scrubbed from every message and log line.

The run's context (repository, pull request, token) is `gradgate.github.context`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gradgate import __version__
from gradgate.core.retry_after import parse_retry_after
from gradgate.core.secrets import redact
from gradgate.errors import ConfigError, GitHubError

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = f"gradgate/{__version__}"
# GitHub refuses comment and pull request bodies longer than this many characters (422).
MAX_BODY_CHARS = 65536
TRUNCATION_NOTE = (
    "\n\n---\n_gradgate: this text was truncated to fit GitHub's 65536-character limit; "
    "the full report is in the job summary and the workflow artifacts._\n"
)
PER_PAGE = 100  # the most GitHub serves per page
# The account Actions' GITHUB_TOKEN acts as (an installation token of the "GitHub Actions" app).
GITHUB_ACTIONS_LOGIN = "github-actions[bot]"

PERMISSION_HINT = (
    "give the workflow job `permissions: pull-requests: write` (comments, pull requests) and "
    "`contents: write` (pushing the tuning branch); on pull requests from forks GITHUB_TOKEN is read-only, "
    "so gradgate cannot comment there"
)


@dataclass(frozen=True)
class CommentRef:
    id: int
    url: str
    created: bool


@dataclass(frozen=True)
class PullRef:
    number: int
    url: str
    created: bool


def hidden_marker(marker: str) -> str:
    """The HTML comment that identifies gradgate's sticky comment (invisible in the rendered comment)."""
    text = marker.strip()
    if text.startswith("<!--") and text.endswith("-->"):
        text = text[4:-3].strip()
    if not text or "--" in text or ">" in text or "\n" in text:
        raise ConfigError(
            f"comment marker {marker!r} cannot be used inside an HTML comment",
            hint="use letters, digits, dots, dashes (not '--') and underscores, e.g. 'gradgate-report'",
        )
    return f"<!-- {text} -->"


def truncate_body(text: str, limit: int = MAX_BODY_CHARS, note: str = TRUNCATION_NOTE) -> str:
    """Cut ``text`` to at most ``limit`` characters at a line end, closing an open code fence, with a note."""
    if len(text) <= limit:
        return text
    budget = limit - len(note) - len("\n```")
    cut = text[:budget]
    newline = cut.rfind("\n")
    if newline > budget * 0.8:  # prefer a whole line unless that throws away a lot
        cut = cut[:newline]
    if cut.count("```") % 2 == 1:
        cut += "\n```"
    return cut + note


class GitHubClient:
    """REST client for one repository (``owner/name``), public GitHub or GitHub Enterprise Server."""

    def __init__(
        self,
        token: str,
        *,
        api_url: str = DEFAULT_API_URL,
        repository: str,
        timeout: float = 30,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        owner, _, name = repository.partition("/")
        if not owner or not name or "/" in name:
            raise ConfigError(
                f"repository {repository!r} is not of the form owner/name",
                hint="set GITHUB_REPOSITORY (GitHub Actions sets it for you)",
            )
        self.repository = repository
        self.owner = owner
        self.api_url = api_url.rstrip("/")
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.max_wait = max_wait
        self._sleep = sleep
        self._login: str | None = None  # whom the token acts as (GET /user); None for installation tokens
        self._login_asked = False
        self._has_token = bool(token)
        self._redact: Callable[[str], str] = lambda text: redact(text, (token,) if token else ())
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.api_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,  # a redirect to another host must not carry the token
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GitHubClient(api_url={self.api_url!r}, repository={self.repository!r})"

    # -- transport ---------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Send one request, retrying 5xx, transport errors and rate limits; else raise ``GitHubError``.

        A status in ``allow`` (that is not a rate limit) is returned instead of raised.
        """
        label = f"{method} {self._path_of(url)}"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._http.request(method, url, params=params, json=json_body)
            except httpx.TransportError as exc:
                if last:
                    raise GitHubError(
                        self._redact(f"could not reach the GitHub API at {self.api_url} ({label}): {type(exc).__name__}: {exc}"),
                        hint="check GITHUB_API_URL and the network; GitHub may be having an outage",
                    ) from None
                wait = self._backoff(attempt)
                logger.warning("GitHub API %s failed (%s); retrying in %.1fs", label, type(exc).__name__, wait)
                self._sleep(wait)
                continue
            if response.status_code < 400:
                return response
            if self._is_rate_limited(response):
                wait = self._rate_limit_wait(response, attempt)
                if wait > self.max_wait:
                    raise GitHubError(
                        f"GitHub API rate limit hit on {label}; GitHub asks to wait {wait:.0f}s, "
                        f"longer than gradgate waits ({self.max_wait:.0f}s)",
                        hint="rerun the job later, or use a token with a higher rate limit",
                    )
                if last:
                    raise GitHubError(
                        f"GitHub API rate limit hit on {label}; limited after {self.max_retries} retries",
                        hint="rerun the job later, or reduce how often gradgate runs",
                    )
                logger.warning("GitHub API rate limit on %s; waiting %.1fs", label, wait)
                self._sleep(wait)
                continue
            if response.status_code in allow:
                return response
            if response.status_code >= 500 and not last:
                wait = self._backoff(attempt)
                logger.warning("GitHub API %s answered %d; retrying in %.1fs", label, response.status_code, wait)
                self._sleep(wait)
                continue
            raise self._error(response, label)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    def _path_of(self, url: str) -> str:
        return url[len(self.api_url) :] if url.startswith(self.api_url) else url

    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff * (2**attempt), self.max_wait))

    @staticmethod
    def _is_rate_limited(response: httpx.Response) -> bool:
        if response.status_code == 429:
            return True
        if response.status_code != 403:
            return False
        if response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers:
            return True
        return "rate limit" in GitHubClient._message(response).lower()  # secondary rate limits

    def _rate_limit_wait(self, response: httpx.Response, attempt: int) -> float:
        retry_after = parse_retry_after(response.headers)
        if retry_after is not None:
            return retry_after
        reset = response.headers.get("x-ratelimit-reset")
        if reset is not None and response.headers.get("x-ratelimit-remaining") == "0":
            try:
                return max(0.0, float(reset) - time.time()) + 1.0
            except ValueError:
                pass
        return max(60.0, self._backoff(attempt))  # GitHub's advice without headers: wait at least a minute

    @staticmethod
    def _message(response: httpx.Response) -> str:
        try:
            data = response.json()
        except ValueError:
            return response.text[:200]
        if not isinstance(data, dict):
            return ""
        message = str(data.get("message", ""))
        details = []
        for err in data.get("errors") or []:
            if isinstance(err, dict):
                details.append(
                    str(err.get("message") or " ".join(str(err[k]) for k in ("resource", "field", "code") if err.get(k)))
                )
            else:
                details.append(str(err))
        if details:
            message += " (" + "; ".join(details) + ")"
        return message

    def _error(self, response: httpx.Response, label: str) -> GitHubError:
        status = response.status_code
        said = self._message(response)
        head = f"GitHub API {label} failed with {status}"
        if said:
            head += f": {said}"
        if status == 401:
            if self._has_token:
                message, hint = (
                    f"{head}; the token was rejected (invalid or expired)",
                    "pass a valid token (GITHUB_TOKEN or the github-token input)",
                )
            else:
                message, hint = (
                    f"{head}; no GitHub token was given",
                    "set GITHUB_TOKEN or the action's github-token input to ${{ secrets.GITHUB_TOKEN }}",
                )
        elif status == 403:
            message, hint = f"{head}; the token lacks permission for this", PERMISSION_HINT
        elif status == 404:
            message = f"{head}; repository {self.repository} or the pull request was not found, or the token cannot see it"
            hint = "check GITHUB_REPOSITORY, the pull request number and the token's access to the repository"
        elif status == 422:
            message, hint = (
                f"{head}; GitHub rejected the request as invalid",
                "read GitHub's message above; for pull requests check that the head branch was pushed",
            )
        elif status >= 500:
            message, hint = (
                f"{head}; GitHub had a server error (after {self.max_retries} retries)",
                "rerun the job later; see https://www.githubstatus.com",
            )
        else:
            message, hint = head, None
        return GitHubError(self._redact(message), hint=self._redact(hint) if hint else None)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise GitHubError(
                f"GitHub API answered {response.status_code} with a body that is not JSON",
                hint="check GITHUB_API_URL points at the REST API (GitHub Enterprise: https://HOST/api/v3)",
            ) from None

    def _paged(self, path: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item of a list endpoint, following the ``Link: rel="next"`` header."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        query: Mapping[str, Any] | None = {**params, "per_page": PER_PAGE}
        while url is not None:
            response = self._request("GET", url, params=query)
            page = self._json(response)
            if not isinstance(page, list):
                raise GitHubError(f"GitHub API GET {path} did not answer a list")
            items += [item for item in page if isinstance(item, dict)]
            following = response.links.get("next", {}).get("url")
            if following and not following.startswith(self.api_url + "/"):
                # The token is only ever sent to the configured API host.
                raise GitHubError(f"GitHub API pagination pointed outside {self.api_url}; stopping")
            url, query = following, None
        return items

    # -- comments ----------------------------------------------------------------------------------------

    def authenticated_login(self) -> str | None:
        """The login the token acts as (``GET /user``, asked once); None when GitHub will not say.

        Personal access tokens (classic and fine-grained) and user-to-server tokens may read ``GET /user``.
        Installation tokens, among them Actions' GITHUB_TOKEN, are refused with 403 ("Resource not
        accessible by integration"): their account is an app's bot, which None stands for.
        """
        if not self._login_asked:
            response = self._request("GET", "/user", allow=(403, 404))
            data = self._json(response) if response.status_code < 400 else None
            login = data.get("login") if isinstance(data, dict) else None
            self._login = login if isinstance(login, str) and login else None
            self._login_asked = True
            logger.debug("the GitHub token acts as %s", self._login or "an app installation (a bot)")
        return self._login

    def _own_comments(self, comments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of ``comments``, those this token wrote; see ``upsert_sticky_comment`` for the rule."""
        if not comments:
            return []  # nothing to tell apart: the first run costs no GET /user

        def author(comment: dict[str, Any]) -> tuple[str, str]:
            user = comment.get("user")
            user = user if isinstance(user, dict) else {}
            return str(user.get("login") or ""), str(user.get("type") or "")

        login = self.authenticated_login()
        if login is not None:
            return [c for c in comments if author(c)[0].lower() == login.lower()]
        bots = [c for c in comments if author(c)[1] == "Bot"]
        return [c for c in bots if author(c)[0] == GITHUB_ACTIONS_LOGIN] or bots

    def upsert_sticky_comment(self, pr_number: int, body: str, marker: str) -> CommentRef:
        """Create or update the one comment on ``pr_number`` that carries ``<!-- marker -->``.

        Only a comment this token wrote is updated; anybody else's comment that carries the marker (a person
        quoting the report, say) is left alone and gradgate's own is created beside it. Whose comment it is:

        * when ``GET /user`` answers (a personal or user token), comments whose ``user.login`` is that login;
        * when it is refused (an installation token: Actions' GITHUB_TOKEN or another GitHub App), comments
          whose author is a bot (``user.type == "Bot"``); those by ``github-actions[bot]``, the
          GITHUB_TOKEN's account, first. A person's account is never of type Bot, so people's comments are
          safe; two apps' tokens cannot be told apart, so they would share the one comment.

        ``GET /user`` is asked at most once per client, and only when some comment carries the marker.
        Among several own comments with the marker the oldest is updated.
        """
        tag = hidden_marker(marker)
        text = body if tag in body else f"{tag}\n{body}"
        text = truncate_body(text)
        if tag not in text:  # the marker was deep inside and got cut: keep it findable next run
            text = truncate_body(f"{tag}\n{text}")
        base = f"/repos/{self.repository}/issues/{int(pr_number)}/comments"
        marked = [c for c in self._paged(base, {}) if tag in str(c.get("body") or "")]
        existing = self._own_comments(marked)
        if len(existing) < len(marked):
            logger.info(
                "%d comment(s) on #%d carry %s but were not written by this token; leaving them alone",
                len(marked) - len(existing),
                pr_number,
                tag,
            )
        if existing:
            if len(existing) > 1:
                logger.warning("%d comments carry %s; updating the oldest", len(existing), tag)
            comment = min(existing, key=lambda c: int(c["id"]))
            response = self._request(
                "PATCH",
                f"/repos/{self.repository}/issues/comments/{int(comment['id'])}",
                json_body={"body": text},
            )
            data = self._json(response)
            logger.info("updated comment %s on #%d", data.get("id"), pr_number)
            return CommentRef(id=int(data["id"]), url=str(data.get("html_url", "")), created=False)
        data = self._json(self._request("POST", base, json_body={"body": text}))
        logger.info("created comment %s on #%d", data.get("id"), pr_number)
        return CommentRef(id=int(data["id"]), url=str(data.get("html_url", "")), created=True)

    # -- pull requests -----------------------------------------------------------------------------------

    def find_pull(self, head_branch: str, base: str | None = None) -> PullRef | None:
        """The open pull request from ``head_branch`` of this repository (into ``base`` when given)."""
        params: dict[str, Any] = {"state": "open", "head": f"{self.owner}:{head_branch}"}
        if base:
            params["base"] = base
        pulls = self._paged(f"/repos/{self.repository}/pulls", params)
        if not pulls:
            return None
        pull = min(pulls, key=lambda p: int(p["number"]))
        return PullRef(number=int(pull["number"]), url=str(pull.get("html_url", "")), created=False)

    def create_or_update_pull(self, head: str, base: str, title: str, body: str) -> PullRef:
        """Open a pull request ``head`` → ``base``, or update the title and body of the open one."""
        text = truncate_body(body)
        existing = self.find_pull(head, base)
        if existing is None:
            try:
                data = self._json(
                    self._request(
                        "POST",
                        f"/repos/{self.repository}/pulls",
                        json_body={"title": title, "head": head, "base": base, "body": text},
                    )
                )
            except GitHubError as exc:
                # Someone (a concurrent run) opened it between our look-up and the create: update that one.
                if "already exists" not in exc.message:
                    raise
                existing = self.find_pull(head, base)
                if existing is None:
                    raise
            else:
                logger.info("opened pull request #%s", data.get("number"))
                return PullRef(number=int(data["number"]), url=str(data.get("html_url", "")), created=True)
        data = self._json(
            self._request(
                "PATCH",
                f"/repos/{self.repository}/pulls/{existing.number}",
                json_body={"title": title, "body": text},
            )
        )
        logger.info("updated pull request #%d", existing.number)
        return PullRef(number=existing.number, url=str(data.get("html_url", existing.url)), created=False)
