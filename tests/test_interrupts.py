"""SIGINT/SIGTERM become `Interrupted`: jobs write what they have and the process exits 128 + signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gradgate.core.interrupts import interrupts_raise
from gradgate.errors import Interrupted

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from gradgate.core.interrupts import interrupts_raise
    from gradgate.errors import Interrupted

    async def work():
        print("ready", flush=True)
        await asyncio.sleep(60)

    try:
        with interrupts_raise():
            asyncio.run(work())
    except Interrupted as exc:
        print("cleanup", exc.signum, flush=True)
        sys.exit(exc.exit_code)
    """
)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_inside_an_event_loop_ends_as_interrupted_with_128_plus_signal(sig: signal.Signals, code: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    child.send_signal(sig)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == code
    assert out.strip() == f"cleanup {int(sig)}"


def test_the_signal_handlers_are_restored_after_the_block() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info, interrupts_raise():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert info.value.exit_code == 143 and "SIGTERM" in info.value.message
    assert signal.getsignal(signal.SIGTERM) is before


# -- the real CLI, with model calls in flight -------------------------------------------------------------------


def _start_eval(repo: Path) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    environment.update(HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_PROXY="127.0.0.1")
    command = [sys.executable, "-m", "gradgate", "eval", "--repo", str(repo), "--out", str(repo / "out"), "--no-cache"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_eval_interrupted_mid_call_writes_partial_results_and_exits_128_plus_signal(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """Three items answered, the fourth call hangs; the signal arrives while it is in flight."""
    from tests.fault_server import FaultServer
    from tests.test_faults import make_repo

    with FaultServer(["ok", "ok", "ok", "hang"]) as server:
        repo = make_repo(tmp_path, server, timeout_seconds=60)
        child = _start_eval(repo)
        deadline = time.monotonic() + 60
        while server.calls < 4 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
        assert server.calls == 4, child.communicate()[1]
        child.send_signal(sig)
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == code, stderr
    assert "Traceback" not in stderr and "interrupted by" in stderr
    data = json.loads((repo / "out" / "results.json").read_text(encoding="utf-8"))
    [prompt] = data["prompts"]
    assert data["complete"] is False and "interrupted" in data["error"]
    assert prompt["n_scored"] == 3
    assert [p.name for p in repo.rglob("*.tmp")] == []
