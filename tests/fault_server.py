"""A fault-injecting OpenAI-compatible server on loopback, for the gateway's failure paths.

    with FaultServer(["429", "500", "ok"], retry_after="100000") as server:
        # litellm: model="openai/fault", api_base=server.base_url, api_key="x"
        ...
    server.calls  # chat requests received (what a provider would bill)

Each chat request takes the next fault of the plan; once the plan is used up, every request gets `then`
(default "ok"). Faults:

* ``ok``: a well-formed reply whose text is ``reply(messages)``;
* ``429``: rate limited, with ``Retry-After: <retry_after>``; ``500`` and ``503``: server errors;
* ``garbage``: 200 with a body that is not JSON; ``empty``: 200 with ``choices: []``;
  ``nocontent``: 200 with a choice whose message has no content;
* ``hang``: never answers (until the server stops);
* ``drop``: the headers and part of the body, then the connection closes;
* ``kill``: the server stops listening and drops the request, as if its process died: later requests are
  refused.

The server runs in a thread of the test process, so a test can read ``calls`` while a subprocess talks to it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("ok", "429", "500", "503", "garbage", "empty", "nocontent", "hang", "drop", "kill")
MODEL = "fault"

Reply = Callable[[list[dict[str, Any]]], str]


def completion_body(text: str | None, *, choices: bool = True) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    if text is not None:
        message["content"] = text
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}] if choices else [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: FaultServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            request = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            request = {}
        owner = self.server.owner
        fault = owner._next(request)
        if fault == "ok":
            self._json(200, completion_body(owner.reply(request.get("messages") or [])))
        elif fault == "429":
            self._json(429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": owner.retry_after})
        elif fault in ("500", "503"):
            self._json(int(fault), {"error": {"message": f"injected {fault}", "type": "server_error"}})
        elif fault == "garbage":
            self._send(200, b"<html>502 Bad Gateway, but with status 200</html>\x00\xff", "application/json")
        elif fault == "empty":
            self._json(200, completion_body("unused", choices=False))
        elif fault == "nocontent":
            self._json(200, completion_body(None))
        elif fault == "hang":
            owner._stopped.wait(60)
            self._abort()
        elif fault == "drop":
            body = json.dumps(completion_body("this reply is cut short")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self._abort()
        elif fault == "kill":
            owner._kill()
            self._abort()
        else:  # pragma: no cover - the constructor checks the plan
            raise AssertionError(fault)

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _abort(self) -> None:
        """Close the connection without finishing the response."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FaultServer:
    """An OpenAI-compatible chat server on 127.0.0.1 that fails on purpose (see the module docstring)."""

    def __init__(self, plan: Iterable[str] = (), *, then: str = "ok", retry_after: str = "1", reply: Reply | None = None) -> None:
        self.plan = list(plan)
        for fault in [*self.plan, then]:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        self.then = then
        self.retry_after = retry_after
        self.reply: Reply = reply or (lambda messages: "ok")
        self.requests: list[dict[str, Any]] = []
        self.faults: list[str] = []  # the fault each request got, in arrival order
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._closed = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def _next(self, request: dict[str, Any]) -> str:
        with self._lock:
            fault = self.plan.pop(0) if self.plan else self.then
            self.requests.append(request)
            self.faults.append(fault)
            return fault

    def _kill(self) -> None:
        # Called from a handler thread: serve_forever runs in another, so waiting for it to end is safe.
        self._server.shutdown()
        self._close_listener()  # later connections are refused

    def _close_listener(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.server_close()

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._server.shutdown()  # returns at once when serve_forever is not running
        self._close_listener()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
