"""SIGINT/SIGTERM become `Interrupted`: jobs write what they have and the process exits 128 + signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

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
