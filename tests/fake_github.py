"""A fake GitHub REST server on loopback that checks every request against GitHub's OpenAPI description.

Every request is matched to an operation of the description (method + path template, under an optional
GitHub Enterprise prefix such as ``/api/v3``); its path parameters, query parameters and JSON body are
validated with ``jsonschema``. A request that does not fit is answered 400/404 *and* recorded as a
violation; the pytest fixture ``fake_github`` fails the test at teardown when any violation was recorded.

The description is the committed subset ``tests/github_spec/api.github.com.subset.json``: GitHub's official
description (npm ``@octokit/openapi``, pinned) cut down to the operations gradgate calls by
``scripts/github_openapi_subset.py``. A call to any other operation is therefore a violation ("no such
operation"), so a new endpoint in gradgate fails the tests until it is added to that script and the subset
regenerated.

The operations of the subset are implemented in memory: issue comments (list with pagination, create,
update; each carries its author in ``user``), pull requests (list with ``head``/``base``/``state`` filters,
create, update) and ``GET /user``. The token acts as ``login`` (default ``github-actions[bot]``, the
identity of Actions' GITHUB_TOKEN): comments it creates are authored by it, and ``GET /user`` answers 403
"Resource not accessible by integration" for a ``[bot]`` login like GitHub does for installation tokens,
or the user for a person's login (a personal access token).

Use it three ways:

* pytest: ``def test_x(fake_github): ...`` (import the fixture or list this module in ``pytest_plugins``);
* Python: ``with FakeGitHub() as gh: ...``;
* a process: ``python -m tests.fake_github --port 8123 --record requests.json`` serves until killed and
  rewrites the record file (requests + violations) after every request.

"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema

try:  # the CLI mode runs in containers where pytest may be missing
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

SPEC_URI = "urn:github:openapi"
DEFAULT_REPOSITORY = "octo-org/prompt-repo"
MAX_BODY_CHARS = 65536  # GitHub rejects longer comment and pull request bodies with 422
API_VERSIONS = {"2022-11-28"}
DOCS = "https://docs.github.com/rest"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


SPEC_FILE = Path(__file__).resolve().parent / "github_spec" / "api.github.com.subset.json"
GITHUB_ACTIONS_BOT = "github-actions[bot]"


def spec_path() -> Path:
    """The committed subset of GitHub's OpenAPI description (regenerate: scripts/github_openapi_subset.py)."""
    return SPEC_FILE


def _openapi30_to_jsonschema(node: Any) -> Any:
    """Turn OpenAPI 3.0 ``nullable: true`` into a JSON Schema type list; jsonschema ignores ``nullable``."""
    if isinstance(node, dict):
        out = {k: _openapi30_to_jsonschema(v) for k, v in node.items()}
        if out.get("nullable") is True:
            kind = out.get("type")
            if isinstance(kind, str):
                out["type"] = [kind, "null"]
            elif "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(node, list):
        return [_openapi30_to_jsonschema(v) for v in node]
    return node


@dataclass(frozen=True)
class Route:
    template: str
    method: str
    operation_id: str
    pattern: re.Pattern[str]
    specificity: tuple[int, ...]  # literal segments win over parameters at the first differing position
    pointer: str  # JSON pointer of the operation inside the description


class OpenAPISpec:
    """The loaded description: route matching and request checking, with validators compiled once."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = _openapi30_to_jsonschema(raw)
        resource = referencing.jsonschema.DRAFT4.create_resource(self.raw)
        self.registry: referencing.Registry[Any] = referencing.Registry().with_resource(SPEC_URI, resource)
        self._routes: dict[int, list[Route]] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        self._lock = threading.Lock()
        for template, item in self.raw["paths"].items():
            segments = template.strip("/").split("/")
            regex = "".join("/([^/]+)" if seg.startswith("{") and seg.endswith("}") else "/" + re.escape(seg) for seg in segments)
            specificity = tuple(0 if seg.startswith("{") else 1 for seg in segments)
            escaped = template.replace("~", "~0").replace("/", "~1")
            for method, op in item.items():
                if method not in _METHODS:
                    continue
                route = Route(
                    template=template,
                    method=method.upper(),
                    operation_id=op.get("operationId", f"{method} {template}"),
                    pattern=re.compile(f"^{regex}$"),
                    specificity=specificity,
                    pointer=f"/paths/{escaped}/{method}",
                )
                self._routes.setdefault(len(segments), []).append(route)
        for routes in self._routes.values():
            routes.sort(key=lambda r: r.specificity, reverse=True)

    def operation(self, route: Route) -> dict[str, Any]:
        node: Any = self.raw
        for part in route.pointer.lstrip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return dict(node)

    def _deref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.registry.resolver(SPEC_URI).lookup(f"{SPEC_URI}{node['$ref']}").contents
        return node

    def validator(self, pointer: str) -> jsonschema.protocols.Validator:
        """A compiled validator for the schema at ``pointer`` (``#/...``), cached for the session."""
        with self._lock:
            found = self._validators.get(pointer)
            if found is None:
                schema = {"$ref": f"{SPEC_URI}{pointer}"}
                found = jsonschema.Draft4Validator(schema, registry=self.registry)
                self._validators[pointer] = found
            return found

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, path parameters, path known under another method)."""
        segments = path.strip("/").split("/")
        path_known = False
        for route in self._routes.get(len(segments), []):
            found = route.pattern.match("/" + "/".join(segments))
            if not found:
                continue
            if route.method != method:
                path_known = True
                continue
            names = re.findall(r"{([^}]+)}", route.template)
            values = [urllib.parse.unquote(v) for v in found.groups()]
            return route, dict(zip(names, values, strict=True)), True
        return None, {}, path_known

    def check_request(
        self,
        route: Route,
        path_params: Mapping[str, str],
        query: Mapping[str, list[str]],
        body: bytes,
        content_type: str,
    ) -> tuple[list[str], Any]:
        """Violations of the operation's parameters and request body, and the decoded JSON body."""
        op = self.operation(route)
        problems: list[str] = []
        params = [self._deref(p) for p in op.get("parameters", [])]
        declared = {(p["in"], p["name"]): p for p in params}
        for (where, name), param in declared.items():
            if where == "path" and name not in path_params:
                problems.append(f"path parameter {name!r} missing")
            if where == "query" and param.get("required") and name not in query:
                problems.append(f"required query parameter {name!r} missing")
        for name, value in path_params.items():
            found = declared.get(("path", name))
            if found is None:
                problems.append(f"path parameter {name!r} not declared")
            else:
                problems += _check_scalar(f"path parameter {name!r}", found.get("schema", {}), [value])
        for name, values in query.items():
            found = declared.get(("query", name))
            if found is None:
                problems.append(f"query parameter {name!r} is not declared for {route.operation_id}")
            else:
                problems += _check_scalar(f"query parameter {name!r}", found.get("schema", {}), values)
        decoded: Any = None
        request_body = op.get("requestBody")
        if request_body is not None:
            request_body = self._deref(request_body)
        if body:
            if request_body is None:
                problems.append(f"{route.operation_id} takes no request body")
            elif "json" not in content_type:
                problems.append(f"body sent with Content-Type {content_type!r}, expected application/json")
            else:
                try:
                    decoded = json.loads(body)
                except ValueError as exc:
                    problems.append(f"body is not JSON: {exc}")
                else:
                    media = request_body.get("content", {}).get("application/json")
                    if media is not None and "schema" in media:
                        escaped = route.template.replace("~", "~0").replace("/", "~1")
                        body_at = f"#/paths/{escaped}/{route.method.lower()}/requestBody"
                        body_at = op["requestBody"].get("$ref", body_at)
                        pointer = f"{body_at}/content/application~1json/schema"
                        errors = sorted(self.validator(pointer).iter_errors(decoded), key=lambda e: list(e.absolute_path))
                        for err in errors:
                            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                            problems.append(f"body {where}: {err.message}")
        elif request_body is not None and request_body.get("required"):
            problems.append(f"{route.operation_id} requires a JSON body")
        return problems, decoded


def _check_scalar(label: str, schema: Mapping[str, Any], values: list[str]) -> list[str]:
    """Check string-encoded parameter values against a (simple) parameter schema."""
    kind = schema.get("type")
    if len(values) > 1 and kind != "array":
        return [f"{label} given {len(values)} times"]
    items = schema.get("items", {}) if kind == "array" else schema
    item_kind = items.get("type")
    problems: list[str] = []
    for raw in values:
        parts = raw.split(",") if kind == "array" else [raw]
        for value in parts:
            converted: Any = value
            if item_kind == "integer":
                if not re.fullmatch(r"-?\d+", value):
                    problems.append(f"{label} must be an integer, got {value!r}")
                    continue
                converted = int(value)
            elif item_kind == "boolean":
                if value not in ("true", "false"):
                    problems.append(f"{label} must be true or false, got {value!r}")
                    continue
                converted = value == "true"
            if "enum" in items and converted not in items["enum"]:
                problems.append(f"{label} must be one of {items['enum']}, got {value!r}")
            if isinstance(converted, int) and not isinstance(converted, bool):
                if "minimum" in items and converted < items["minimum"]:
                    problems.append(f"{label} must be >= {items['minimum']}, got {converted}")
                if "maximum" in items and converted > items["maximum"]:
                    problems.append(f"{label} must be <= {items['maximum']}, got {converted}")
    return problems


@functools.cache
def load_spec(path: str | None = None) -> OpenAPISpec:
    """Load (once per process) and index the OpenAPI description (default: the committed subset)."""
    source = Path(path) if path else spec_path()
    with source.open(encoding="utf-8") as fh:
        return OpenAPISpec(json.load(fh))


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the enterprise prefix and without the query string
    query: dict[str, list[str]]
    body: Any
    operation_id: str | None
    status: int
    authorized: bool  # an Authorization header was present (its value is never recorded)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    status: int
    headers: dict[str, str]
    body: Any
    times: int
    method: str | None
    path_contains: str | None


_DEFAULT_FAULT_BODIES: dict[int, dict[str, Any]] = {
    401: {"message": "Bad credentials", "status": "401"},
    403: {"message": "Resource not accessible by integration", "status": "403"},
    404: {"message": "Not Found", "status": "404"},
    422: {
        "message": "Validation Failed",
        "errors": [{"resource": "Issue", "code": "custom"}],
        "status": "422",
    },
    429: {"message": "API rate limit exceeded", "status": "429"},
    500: {"message": "Server Error", "status": "500"},
    502: {"message": "Bad Gateway", "status": "502"},
    503: {"message": "Service Unavailable", "status": "503"},
}


class HTTPReply:
    def __init__(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class FakeGitHub:
    """In-memory GitHub for one repository, served over HTTP on 127.0.0.1."""

    def __init__(
        self,
        *,
        repository: str = DEFAULT_REPOSITORY,
        prefix: str = "",
        port: int = 0,
        token: str | None = None,
        spec: OpenAPISpec | None = None,
        record_file: Path | None = None,
        login: str = GITHUB_ACTIONS_BOT,
    ) -> None:
        self.repository = repository
        self.owner = repository.split("/", 1)[0]
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.spec = spec or load_spec()
        self.token = token  # when set, requests must carry exactly this token
        self.login = login  # whom the token acts as: the author of what it creates, GET /user
        self.record_file = record_file
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        self.comments: list[dict[str, Any]] = []
        self.pulls: list[dict[str, Any]] = []
        # Pull request creation fails with 422 like GitHub when this says the head branch does not exist.
        self.branch_exists: Callable[[str], bool] | None = None
        self._faults: list[Fault] = []
        self._next_id = 1000
        self._next_number = 1
        self._lock = threading.RLock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = fake.handle(self.command, self.path, dict(self.headers.items()), body)
                payload = b"" if reply.body is None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                if payload:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() (each test's teardown) fast.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fake-github", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + self.prefix

    # -- test controls -----------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        times: int = 1,
        *,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching (valid) requests with ``status`` instead of the real handler."""
        if body is None:
            body = _DEFAULT_FAULT_BODIES.get(status, {"message": f"HTTP {status}"})
        with self._lock:
            self._faults.append(Fault(status, dict(headers or {}), body, times, method and method.upper(), path_contains))

    def add_comment(self, issue_number: int, body: str, *, user: str = "octocat") -> dict[str, Any]:
        with self._lock:
            return self._new_comment(issue_number, body, user)

    def add_pull(
        self,
        head: str,
        base: str,
        *,
        title: str = "a pull request",
        body: str = "",
        state: str = "open",
        head_owner: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            return self._new_pull(head, base, title, body, state, head_owner or self.owner)

    def comments_on(self, issue_number: int) -> list[dict[str, Any]]:
        return [c for c in self.comments if c["_issue"] == issue_number]

    # -- request handling --------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> HTTPReply:
        split = urllib.parse.urlsplit(raw_path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        lower = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            reply, route, decoded, path = self._dispatch(method, split.path, query, lower, body)
            self.requests.append(
                RecordedRequest(
                    method=method,
                    path=path,
                    query=query,
                    body=decoded if decoded is not None else (body.decode("utf-8", "replace") or None),
                    operation_id=route.operation_id if route else None,
                    status=reply.status,
                    authorized="authorization" in lower,
                    headers={k: v for k, v in lower.items() if k in ("accept", "x-github-api-version", "user-agent")},
                )
            )
            self._write_record()
        return reply

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> tuple[HTTPReply, Route | None, Any, str]:
        if self.prefix:
            if not (path == self.prefix or path.startswith(self.prefix + "/")):
                self._violation(f"{method} {path}: not under the API prefix {self.prefix}")
                return HTTPReply(404, {"message": "Not Found"}), None, None, path
            path = path[len(self.prefix) :] or "/"
        route, path_params, path_known = self.spec.match(method, path)
        if route is None:
            why = "method not allowed for this path" if path_known else "no such operation"
            self._violation(f"{method} {path}: {why} in GitHub's OpenAPI description")
            return HTTPReply(404, {"message": "Not Found", "documentation_url": DOCS}), None, None, path
        problems, decoded = self.spec.check_request(route, path_params, query, body, headers.get("content-type", ""))
        version = headers.get("x-github-api-version")
        if version is not None and version not in API_VERSIONS:
            problems.append(f"unsupported X-GitHub-Api-Version {version!r}")
        if problems:
            for problem in problems:
                self._violation(f"{method} {path} ({route.operation_id}): {problem}")
            return (
                HTTPReply(400, {"message": "; ".join(problems), "documentation_url": DOCS}),
                route,
                decoded,
                path,
            )
        auth = headers.get("authorization")
        if self.token is not None:
            if not auth:
                return HTTPReply(401, {"message": "Requires authentication"}), route, decoded, path
            scheme, _, value = auth.partition(" ")
            if scheme.lower() not in ("bearer", "token") or value != self.token:
                return HTTPReply(401, {"message": "Bad credentials"}), route, decoded, path
        fault = self._take_fault(method, path)
        if fault is not None:
            return HTTPReply(fault.status, copy.deepcopy(fault.body), fault.headers), route, decoded, path
        owner, repo = path_params.get("owner"), path_params.get("repo")
        if owner is not None and f"{owner}/{repo}".lower() != self.repository.lower():
            return HTTPReply(404, {"message": "Not Found"}), route, decoded, path
        handler = getattr(self, "_op_" + re.sub(r"\W", "_", route.operation_id), None)
        if handler is None:
            return (
                HTTPReply(501, {"message": f"fake GitHub does not implement {route.operation_id}"}),
                route,
                decoded,
                path,
            )
        return handler(path_params, query, decoded or {}), route, decoded, path

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.method and fault.method != method:
                continue
            if fault.path_contains and fault.path_contains not in path:
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            return fault
        return None

    def _write_record(self) -> None:
        if self.record_file is None:
            return
        data = {"requests": [asdict(r) for r in self.requests], "violations": self.violations}
        fd, tmp = tempfile.mkstemp(dir=self.record_file.parent, prefix=".fake-github-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, self.record_file)

    # -- objects -----------------------------------------------------------------------------------------

    def _now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _user(self, login: str) -> dict[str, Any]:
        return {
            "login": login,
            "id": abs(hash(login)) % 10**6,
            "type": "Bot" if login.endswith("[bot]") else "User",
        }

    def _new_comment(self, issue_number: int, body: str, user: str) -> dict[str, Any]:
        self._next_id += 1
        cid = self._next_id
        comment = {
            "_issue": issue_number,
            "id": cid,
            "node_id": f"IC_{cid}",
            "url": f"{self.api_url}/repos/{self.repository}/issues/comments/{cid}",
            "html_url": f"https://github.com/{self.repository}/pull/{issue_number}#issuecomment-{cid}",
            "issue_url": f"{self.api_url}/repos/{self.repository}/issues/{issue_number}",
            "body": body,
            "user": self._user(user),
            "created_at": self._now(),
            "updated_at": self._now(),
            "author_association": "NONE",
        }
        self.comments.append(comment)
        return comment

    def _new_pull(self, head: str, base: str, title: str, body: str, state: str, head_owner: str) -> dict[str, Any]:
        number = self._next_number
        self._next_number += 1
        self._next_id += 1
        repo = {"full_name": f"{head_owner}/{self.repository.split('/', 1)[1]}"}
        pull = {
            "id": self._next_id,
            "node_id": f"PR_{self._next_id}",
            "number": number,
            "url": f"{self.api_url}/repos/{self.repository}/pulls/{number}",
            "html_url": f"https://github.com/{self.repository}/pull/{number}",
            "state": state,
            "title": title,
            "body": body,
            "user": self._user(self.login),
            "head": {"ref": head, "label": f"{head_owner}:{head}", "sha": "0" * 40, "repo": repo},
            "base": {
                "ref": base,
                "label": f"{self.owner}:{base}",
                "sha": "0" * 40,
                "repo": {"full_name": self.repository},
            },
            "draft": False,
            "merged": False,
            "created_at": self._now(),
            "updated_at": self._now(),
        }
        self.pulls.append(pull)
        return pull

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _paginate(self, path: str, query: Mapping[str, list[str]], items: list[dict[str, Any]]) -> HTTPReply:
        per_page = min(max(int(query.get("per_page", ["30"])[0]), 1), 100)
        page = max(int(query.get("page", ["1"])[0]), 1)
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []
        kept = {k: v[0] for k, v in query.items() if k not in ("page", "per_page")}

        def link(n: int, rel: str) -> str:
            qs = urllib.parse.urlencode({**kept, "per_page": per_page, "page": n})
            return f'<{self.api_url}{path}?{qs}>; rel="{rel}"'

        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        headers = {"Link": ", ".join(links)} if links else {}
        return HTTPReply(200, [self._public(i) for i in chunk], headers)

    def _too_long(self, body: str | None) -> HTTPReply | None:
        if body is not None and len(body) > MAX_BODY_CHARS:
            return HTTPReply(
                422,
                {
                    "message": "Validation Failed",
                    "errors": [
                        {
                            "resource": "IssueComment",
                            "code": "custom",
                            "field": "body",
                            "message": f"body is too long (maximum is {MAX_BODY_CHARS} characters)",
                        }
                    ],
                },
            )
        return None

    # -- operations (named after operationId) -------------------------------------------------------------

    def _op_issues_list_comments(self, p: Mapping[str, str], q: Mapping[str, list[str]], b: Any) -> HTTPReply:
        path = f"/repos/{p['owner']}/{p['repo']}/issues/{p['issue_number']}/comments"
        return self._paginate(path, q, self.comments_on(int(p["issue_number"])))

    def _op_issues_create_comment(self, p: Mapping[str, str], q: Mapping[str, list[str]], b: Any) -> HTTPReply:
        return self._too_long(b["body"]) or HTTPReply(
            201, self._public(self._new_comment(int(p["issue_number"]), b["body"], self.login))
        )

    def _find_comment(self, comment_id: str) -> dict[str, Any] | None:
        return next((c for c in self.comments if c["id"] == int(comment_id)), None)

    def _op_issues_update_comment(self, p: Mapping[str, str], q: Mapping[str, list[str]], b: Any) -> HTTPReply:
        comment = self._find_comment(p["comment_id"])
        if comment is None:
            return HTTPReply(404, {"message": "Not Found"})
        too_long = self._too_long(b["body"])
        if too_long:
            return too_long
        comment["body"] = b["body"]
        comment["updated_at"] = self._now()
        return HTTPReply(200, self._public(comment))

    def _op_pulls_list(self, p: Mapping[str, str], q: Mapping[str, list[str]], b: Any) -> HTTPReply:
        state = q.get("state", ["open"])[0]
        pulls = [pr for pr in self.pulls if state == "all" or pr["state"] == state]
        if "head" in q:
            pulls = [pr for pr in pulls if pr["head"]["label"] == q["head"][0]]  # GitHub wants owner:ref
        if "base" in q:
            pulls = [pr for pr in pulls if pr["base"]["ref"] == q["base"][0]]
        pulls = sorted(pulls, key=lambda pr: pr["number"], reverse=q.get("direction", ["desc"])[0] == "desc")
        return self._paginate(f"/repos/{p['owner']}/{p['repo']}/pulls", q, pulls)

    def _op_users_get_authenticated(self, p: Mapping[str, str], q: Mapping[str, list[str]], b: Any) -> HTTPReply:
        if self.login.endswith("[bot]"):  # installation tokens (GITHUB_TOKEN) may not read /user
            return HTTPReply(
                403,
                {
                    "message": "Resource not accessible by integration",
                    "documentation_url": f"{DOCS}/users/users#get-the-authenticated-user",
                    "status": "403",
                },
            )
        return HTTPReply(200, {**self._user(self.login), "name": None, "site_admin": False})

    def _op_pulls_create(self, p: Mapping[str, str], q: Mapping[str, list[str]], b: Any) -> HTTPReply:
        errors = [
            {"resource": "PullRequest", "field": f, "code": "missing_field"} for f in ("head", "base", "title") if f not in b
        ]
        if errors:
            return HTTPReply(422, {"message": "Validation Failed", "errors": errors})
        owner, _, ref = b["head"].rpartition(":")
        owner = owner or self.owner
        if self.branch_exists is not None and not self.branch_exists(ref):
            return HTTPReply(
                422,
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                },
            )
        if any(
            pr["state"] == "open" and pr["head"]["label"] == f"{owner}:{ref}" and pr["base"]["ref"] == b["base"]
            for pr in self.pulls
        ):
            return HTTPReply(
                422,
                {
                    "message": "Validation Failed",
                    "errors": [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"A pull request already exists for {owner}:{ref}.",
                        }
                    ],
                },
            )
        too_long = self._too_long(b.get("body"))
        if too_long:
            return too_long
        return HTTPReply(201, self._new_pull(ref, b["base"], b["title"], b.get("body") or "", "open", owner))

    def _op_pulls_update(self, p: Mapping[str, str], q: Mapping[str, list[str]], b: Any) -> HTTPReply:
        pull = next((pr for pr in self.pulls if pr["number"] == int(p["pull_number"])), None)
        if pull is None:
            return HTTPReply(404, {"message": "Not Found"})
        too_long = self._too_long(b.get("body"))
        if too_long:
            return too_long
        for key in ("title", "body", "state"):
            if key in b:
                pull[key] = b[key]
        if "base" in b:
            pull["base"]["ref"] = b["base"]
        pull["updated_at"] = self._now()
        return HTTPReply(200, pull)


if pytest is not None:

    def assert_no_violations(server: FakeGitHub) -> None:
        """Fail the running test when ``server`` recorded a request that breaks the description."""
        if server.violations:
            pytest.fail(
                "requests that do not match GitHub's OpenAPI description "
                f"({spec_path().relative_to(Path(__file__).resolve().parents[1])}; an operation missing "
                "there is added in scripts/github_openapi_subset.py):\n  " + "\n  ".join(server.violations)
            )

    @pytest.fixture
    def fake_github() -> Iterator[FakeGitHub]:
        """A started FakeGitHub; the test fails at teardown if any request broke GitHub's description."""
        server = FakeGitHub().start()
        try:
            yield server
        finally:
            server.stop()
        assert_no_violations(server)


def _branch_in(git_dir: Path, ref: str) -> bool:
    """Whether branch ``ref`` exists in the git repository at ``git_dir`` (bare or not)."""
    found = subprocess.run(
        ["git", "-C", str(git_dir), "rev-parse", "--verify", "--quiet", f"refs/heads/{ref}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    return found.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_github", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", type=Path, help="JSON file rewritten after every request")
    parser.add_argument("--prefix", default="", help="serve under this path prefix, e.g. /api/v3")
    parser.add_argument("--repository", default=DEFAULT_REPOSITORY)
    parser.add_argument(
        "--token",
        default=os.environ.get("FAKE_GITHUB_TOKEN"),
        help="require this token (default: $FAKE_GITHUB_TOKEN; none required if unset)",
    )
    parser.add_argument(
        "--login",
        default=GITHUB_ACTIONS_BOT,
        help="whom the token acts as (default: %(default)s; a [bot] login cannot read GET /user)",
    )
    parser.add_argument(
        "--git-remote",
        type=Path,
        help="a git repository (e.g. the bare remote the workflow pushes to): creating a pull request answers 422 "
        "like GitHub unless its head branch exists there",
    )
    args = parser.parse_args(argv)
    server = FakeGitHub(
        repository=args.repository,
        prefix=args.prefix,
        port=args.port,
        token=args.token,
        login=args.login,
        record_file=args.record.resolve() if args.record else None,
    )
    if args.git_remote is not None:
        server.branch_exists = functools.partial(_branch_in, args.git_remote.resolve())
    server.start()
    server._write_record()
    print(f"fake GitHub serving {server.api_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
