"""A real OpenAI-compatible server on loopback: ``transformers serve`` over the converted SmolLM2 folder.

Use it as a pytest plugin (``pytest_plugins = ["tests.openai_server"]``) for the session fixture
``openai_server``, or without pytest through the context manager ``start_openai_server(folder, port)``.

litellm reaches it with ``model="openai/" + handle.model, api_base=handle.base_url, api_key="x"``; the server
is pinned to one model and answers only requests that name it (its folder path, as given on the command line).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

READY_TIMEOUT_S = 120.0


@dataclass
class ServerHandle:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the served model name; litellm uses "openai/<model>"
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_command() -> list[str]:
    # Prefer the console script beside this interpreter, so a virtualenv's transformers is the one that
    # serves.
    beside = Path(sys.executable).with_name("transformers")
    if beside.is_file():
        return [str(beside), "serve"]
    found = shutil.which("transformers")
    if found:
        return [found, "serve"]
    return [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve"]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@contextlib.contextmanager
def start_openai_server(
    folder: str | Path, port: int | None = None, *, timeout: float = READY_TIMEOUT_S
) -> Iterator[ServerHandle]:
    """Serve a Hugging Face model folder on 127.0.0.1 until the block ends; RuntimeError if never ready."""
    port = port or free_port()
    model = str(Path(folder).resolve())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see gradgate.core.environment.prepare_torch_env
    log_dir = Path(tempfile.mkdtemp(prefix="gradgate-serve-"))
    log_path = log_dir / "serve.log"
    command = [*_serve_command(), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    command += ["--dtype", "float32", model]
    with log_path.open("wb") as log:
        # The log goes to a file: a pipe nobody reads would fill and stall the server.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    handle = ServerHandle(f"http://127.0.0.1:{port}/v1", model, port, process, log_path)
    try:
        _wait_ready(handle, timeout)
        yield handle
    finally:
        _stop(process)
        shutil.rmtree(log_dir, ignore_errors=True)


def _wait_ready(handle: ServerHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{handle.port}/health"
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(f"transformers serve exited with code {handle.process.returncode}:\n{handle.log_tail()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"transformers serve was not ready after {timeout:.0f} s:\n{handle.log_tail()}")


@pytest.fixture(scope="session")
def openai_server() -> Iterator[ServerHandle]:
    """A session-wide ``transformers serve`` of the embedded SmolLM2 model (converted on first use)."""
    from gradgate.models.local import converted_model_dir

    folder = converted_model_dir("smollm2-135m-instruct")
    with start_openai_server(folder) as handle:
        yield handle
