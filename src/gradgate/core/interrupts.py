"""SIGINT and SIGTERM end a job the way any other fault does: partial report written, resume state kept,
temporary files removed, and exit 130 or 143 (128 + the signal, as a shell reports it).

    with interrupts_raise():          # the CLI, around every job
        run_the_job()

A CI timeout or a cancelled workflow sends SIGTERM (and SIGKILL after a grace period); Ctrl-C sends SIGINT.
Where the signal lands decides how it is delivered:

* in synchronous code, the handler raises `Interrupted` there;
* while an asyncio loop runs (model calls in flight), the handler cancels the loop's tasks, so every await
  unwinds through its `finally` blocks; a job that catches `asyncio.CancelledError` to write its partial
  report calls `interrupted_error()` for the error to record. When the block ends, `Interrupted` is raised
  if the job returned or unwound with a cancellation.

A second signal while the job cleans up is ignored, so the cleanup finishes. Handlers are restored on exit.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from gradgate.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signal being handled, while a job stops


def interrupt_pending() -> bool:
    """A signal arrived and the job is stopping (publish nothing, write what there is)."""
    return bool(_received)


def interrupted_error() -> Interrupted:
    """The error a job records when a cancellation reached it: the signal received (SIGTERM if none was)."""
    return Interrupted(_received[0] if _received else signal.SIGTERM)


def _handler(signum: int, frame: FrameType | None) -> None:
    if _received:
        return  # already stopping: let the cleanup finish
    _received.append(signum)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise Interrupted(signum) from None
    # call_soon_threadsafe wakes the loop: it may be asleep in select() with a long timeout.
    loop.call_soon_threadsafe(_cancel_all, loop, f"interrupted by {signal.Signals(signum).name}")


def _cancel_all(loop: asyncio.AbstractEventLoop, message: str) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel(msg=message)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM stop the job (see the module doc). Outside the main thread: no effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        try:
            yield
        except asyncio.CancelledError:
            if not _received:
                raise
            raise interrupted_error() from None
        if _received:
            raise interrupted_error()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _received.clear()
