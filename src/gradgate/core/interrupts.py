"""SIGINT and SIGTERM become an `Interrupted` error, so every job ends the way it ends on any other fault:
partial report written, resume state kept, temporary files removed, and exit 130 or 143.

    with interrupts_raise():
        run_the_job()

A CI timeout or a cancelled workflow sends SIGTERM (then SIGKILL after a grace period); Ctrl-C sends SIGINT.
The first signal raises in the main thread; a second one while the job is still cleaning up is ignored, so the
cleanup finishes. Handlers are restored on exit.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from gradgate.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise `Interrupted` (once). Outside the main thread: no effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            return  # already stopping: let the cleanup finish
        received.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
