"""What a person watching a long command sees: live progress, a quiet start-up, a table at the end.

    with open_progress(console) as progress:   # rich bars on a terminal, plain log lines elsewhere (CI logs)
        progress.watch(session.budget)
        progress.stage(Stage("eval math", total=12, unit="items"))
        progress.advance()
        progress.finish("math: 10/12 passed")

Jobs call the `Progress` protocol; the gate and the optimizers know nothing of it. Their work is watched from
outside: a check one prompt at a time (`gate_with_progress`: task-model requests, then the verdict), an
optimization through the budget and the trajectory.json each run rewrites after every candidate
(`optimize_stage`). Every status shows the calls used and the budget left. On a terminal the display redraws
ten times a second; elsewhere a line is written when a stage starts and ends, and at least once a minute.
`quiet_libraries(verbose)` runs once at start-up: at the default verbosity third-party warnings, deprecation
notices, GGUF conversion and weight-loading bars are off; `-v` turns them back on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, Task, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from gradgate.core.budget import BudgetTracker
from gradgate.optimizers.base import UNREADABLE

if TYPE_CHECKING:  # the CLI imports this module at start-up (quiet_libraries): no scipy, torch or litellm here
    from gradgate.core.discovery import Target
    from gradgate.gate.changes import ChangeSet, PromptChange
    from gradgate.gate.report import PromptVerdict
    from gradgate.models.session import Session
    from gradgate.optimizers.results import OptimizeResult
    from gradgate.scoring.scorer import ItemResult

T = TypeVar("T")
LOG_INTERVAL_S = 60.0  # plain log lines: at least one a minute
Probe = Callable[[], int]  # how much of a stage is done, read at every refresh
Detail = Callable[[], str]  # a stage's extra status ("12 candidates, best dev 0.833")

# Set at the default verbosity, before the libraries are imported (they read them once, at import).
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars and transformers' "Loading weights"
    "TQDM_DISABLE": "1",  # plain tqdm bars: GGUF conversion, "Writing model shards"
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' own logger: "`past_key_values` ... deprecated" and the like
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
_quieted: dict[str, str] = {}  # what quiet_libraries set, so -v in the same process can undo exactly that


def quiet_libraries(verbose: int) -> None:
    """Silence third-party warnings and progress bars (verbose 0), or let them through (-v and up).

    Libraries already imported are told directly; the rest read the environment when they are imported.
    With -v, Python warnings go through gradgate's log handler, so they are redacted like every log line.
    """
    if verbose > 0:
        for key, value in list(_quieted.items()):
            if os.environ.get(key) == value:
                del os.environ[key]
            del _quieted[key]
        warnings.simplefilter("default")
        logging.captureWarnings(True)
    else:
        for key, value in QUIET_ENV.items():
            if key not in os.environ:
                os.environ[key] = _quieted[key] = value
        warnings.simplefilter("ignore")
    _tell_loaded_libraries(quiet=verbose == 0)


def _tell_loaded_libraries(*, quiet: bool) -> None:
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf

        (hf.set_verbosity_error if quiet else hf.set_verbosity_warning)()
        (hf.disable_progress_bar if quiet else hf.enable_progress_bar)()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (disable_progress_bars if quiet else enable_progress_bars)()


# -- the protocol and its three reporters --------------------------------------------------------------


class Progress(Protocol):
    def watch(self, budget: BudgetTracker) -> None: ...  # every status shows its calls and what is left
    def stage(self, stage: Stage) -> None: ...  # a unit of work starts (a prompt, a prompt × method)
    def advance(self, amount: int = 1) -> None: ...  # the stage did `amount` more (stages without a probe)
    def finish(self, line: str | None = None) -> None: ...  # the stage ended; `line` (kept) says how


class NullProgress:
    """Reports nothing: the default of every job, and `GRADGATE_PROGRESS=off`."""

    def watch(self, budget: BudgetTracker) -> None: ...
    def stage(self, stage: Stage) -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def finish(self, line: str | None = None) -> None: ...


def fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def budget_text(budget: BudgetTracker | None) -> str:
    """Calls used and, for every limit set, what is left: "40 calls (360 left), $0.01 of $2.00, 29m10s left"."""
    if budget is None:
        return ""
    snap = budget.snapshot()
    limits = snap["limits"]
    calls = int(snap["calls"])
    parts = [f"{calls} calls" + (f" ({max(0, limits['max_calls'] - calls)} left)" if limits.get("max_calls") is not None else "")]
    if limits.get("max_tokens") is not None:
        parts.append(f"{snap['tokens']} of {limits['max_tokens']} tokens")
    if limits.get("max_usd") is not None:
        parts.append(f"${snap['cost_usd']:.2f} of ${limits['max_usd']:.2f}")
    elif snap["cost_usd"]:
        parts.append(f"${snap['cost_usd']:.4f}")
    if limits.get("max_seconds") is not None:
        parts.append(f"{fmt_seconds(limits['max_seconds'] - snap['seconds'])} left")
    return ", ".join(parts)


def _safe(read: Callable[[], T], default: T) -> T:
    try:
        return read()
    except Exception:  # probes read files and counters: they must never break the run they watch
        return default


@dataclass
class Stage:
    """One unit of work: `probe` reads how much is done (else `advance` counts), `detail` adds a status."""

    label: str
    total: int | None = None
    unit: str = "items"
    probe: Probe | None = None
    detail: Detail | None = None
    summary: Callable[[], str] | None = None  # the line kept when the stage ends without one
    started: float = field(default=0.0, init=False)
    advanced: int = field(default=0, init=False)
    ended: float | None = field(default=None, init=False)
    final: tuple[int, str] | None = field(default=None, init=False)  # (done, detail) frozen when it ends

    def done(self) -> int:
        if self.final is not None:
            return self.final[0]
        return _safe(self.probe, self.advanced) if self.probe else self.advanced

    def extra(self) -> str:
        if self.final is not None:
            return self.final[1]
        return _safe(self.detail, "") if self.detail else ""

    def closing(self, line: str | None) -> str:
        return line or (_safe(self.summary, f"{self.label}: done") if self.summary else f"{self.label}: done")

    def count(self) -> str:
        return f"{self.done()}/{self.total} {self.unit}" if self.total is not None else f"{self.done()} {self.unit}"


@dataclass
class _Reporter:
    """State shared by the terminal and the log reporters."""

    clock: Callable[[], float] = time.monotonic
    budget: BudgetTracker | None = None
    current: Stage | None = None
    started: float = field(init=False)
    lock: Any = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def watch(self, budget: BudgetTracker) -> None:
        self.budget = budget

    def _begin(self, stage: Stage) -> None:
        with self.lock:
            if self.current is not None:
                self.finish(None)
            stage.started = self.clock()
            self.current = stage

    def advance(self, amount: int = 1) -> None:
        with self.lock:
            if self.current is not None:
                self.current.advanced += amount

    def _end_stage(self) -> Stage | None:
        with self.lock:
            stage, self.current = self.current, None
            if stage is not None:
                stage.final = (stage.done(), stage.extra())
                stage.ended = self.clock()
            return stage

    def status(self, stage: Stage | None) -> str:
        bits = [stage.count(), stage.extra()] if stage is not None else []
        return " · ".join(b for b in [*bits, budget_text(self.budget)] if b)

    def finish(self, line: str | None = None) -> None:  # overridden
        self._end_stage()


class LogProgress(_Reporter):
    """Plain lines for logs: when a stage starts and ends, and every `interval` seconds in between."""

    def __init__(self, stream: IO[str], *, interval: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.stream = stream
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="gradgate-progress", daemon=True)

    def __enter__(self) -> LogProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.finish(None)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.write(self.status_line())

    def write(self, line: str) -> None:
        with self.lock:
            try:
                self.stream.write(f"gradgate: {line}\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed stream (the job is ending): nothing to report to
                pass

    def status_line(self) -> str:
        with self.lock:
            stage = self.current
            where = f"{stage.label}, {fmt_seconds(self.clock() - stage.started)}" if stage else "working"
            status = self.status(stage)
            return f"[{fmt_seconds(self.clock() - self.started)}] {where}" + (f": {status}" if status else "")

    def stage(self, stage: Stage) -> None:
        with self.lock:
            self._begin(stage)
            self.write(f"{stage.label}: started" + (f" ({stage.total} {stage.unit})" if stage.total is not None else ""))

    def finish(self, line: str | None = None) -> None:
        with self.lock:
            stage = self._end_stage()
            if stage is None:
                return
            took = fmt_seconds((stage.ended or stage.started) - stage.started)
            self.write(f"{stage.closing(line)} ({took}; {self.status(stage)})")


class _StageColumn(ProgressColumn):
    """Count, detail, budget and time of the stage a row shows; read live at every refresh."""

    def __init__(self, reporter: TerminalProgress) -> None:
        super().__init__()
        self.reporter = reporter

    def render(self, task: Task) -> Text:
        stage = task.fields.get("stage")
        if not isinstance(stage, Stage):
            return Text("")
        took = fmt_seconds((stage.ended or self.reporter.clock()) - stage.started)
        return Text(f"{self.reporter.status(stage)} · {took}", style="cyan")


class _StageBar(BarColumn):
    """The bar follows the stage's probe (or its advances); it pulses while the total is unknown."""

    def render(self, task: Task) -> Any:
        stage = task.fields.get("stage")
        if isinstance(stage, Stage):
            task.completed = float(stage.done())
        return super().render(task)


class TerminalProgress(_Reporter):
    """A live rich display of the running stage; each finished stage leaves one line above it."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.bars = RichProgress(
            TextColumn("{task.description}"),
            _StageBar(bar_width=30),
            _StageColumn(self),
            console=console,
            transient=True,
        )
        self._task: Any = None

    def __enter__(self) -> TerminalProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish(None)
        self.bars.stop()

    def stage(self, stage: Stage) -> None:
        with self.lock:
            self._begin(stage)
            self._task = self.bars.add_task(stage.label, total=stage.total, stage=stage)

    def finish(self, line: str | None = None) -> None:
        with self.lock:
            stage = self._end_stage()
            if self._task is not None:
                self.bars.remove_task(self._task)
                self._task = None
            if stage is not None:
                took = fmt_seconds((stage.ended or stage.started) - stage.started)
                self.bars.console.print(Text(f"{stage.closing(line)} ({took})"), highlight=False)


@contextmanager
def open_progress(console: Console, *, interval: float = LOG_INTERVAL_S) -> Iterator[Progress]:
    """The reporter for this console: live bars on a terminal, plain lines elsewhere.

    `GRADGATE_PROGRESS`: `off` (or 0) reports nothing, `log` forces plain lines, `rich` (or 1) forces the bars.
    """
    setting = os.environ.get("GRADGATE_PROGRESS", "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        yield NullProgress()
    elif setting in ("1", "rich", "on", "true") or (console.is_terminal and setting != "log"):
        with TerminalProgress(console) as terminal:
            yield terminal
    else:
        with LogProgress(console.file, interval=interval) as log:
            yield log


# -- what the jobs report ------------------------------------------------------------------------------


def task_requests(budget: BudgetTracker) -> int:
    """Requests to the task model so far, answered by the model or by the response cache."""
    task = budget.snapshot()["by_role"].get("task", {})
    return int(task.get("calls", 0)) + int(task.get("cached_calls", 0))


def request_bound(change: PromptChange, repeats: int) -> int:
    """Task requests a prompt's check makes at most: base and head on every paired item (`repeats` each).
    Fewer when the sequential test stops early or base scores come from the gate's score cache."""
    head = change.head.suite.items if change.head else ()
    if change.status == "new" or change.base is None:
        return len(head) * repeats
    base_ids = {i.id for i in change.base.suite.items}
    return 2 * repeats * sum(1 for i in head if i.id in base_ids)


def verdict_line(p: PromptVerdict) -> str:
    from gradgate.gate.report import ICONS

    scores = f"base {p.base_mean:.3f} → head {p.head_mean:.3f}" if p.base_mean is not None and p.head_mean is not None else ""
    if p.verdict == "new" and p.head_mean is not None:
        scores = f"head {p.head_mean:.3f}"
    bits = [scores, f"{p.items_scored}/{p.items_total} items", f"{p.calls} calls", p.note or ""]
    return f"{p.prompt_id}: {ICONS[p.verdict]} {p.verdict} (" + ", ".join(b for b in bits if b) + ")"


def _requests_since(budget: BudgetTracker, start: int) -> Probe:
    return lambda: task_requests(budget) - start


async def gate_with_progress(session: Session, changes: ChangeSet, done: list[PromptVerdict], progress: Progress) -> None:
    """`gate_changes`, one prompt at a time, so progress can say which prompt runs and what it decided."""
    from gradgate.gate.check import gate_changes, score_cache_for

    progress.watch(session.budget)
    repeats, cache = session.config.gate.repeats, score_cache_for(session)  # one cache: a damaged one is told once
    for change in changes.with_status("changed", "new"):
        start = task_requests(session.budget)
        probe = _requests_since(session.budget, start)
        progress.stage(Stage(f"check {change.prompt_id}", request_bound(change, repeats), "requests", probe))
        before = len(done)
        try:
            await gate_changes(session, replace(changes, changes=(change,)), done, cache)
        finally:
            progress.finish(verdict_line(done[-1]) if len(done) > before else f"{change.prompt_id}: not decided")


def trajectories_detail(directory: Path) -> Detail:
    """Each method's candidates and best dev score so far, from the trajectory.json files a run rewrites."""
    seen: dict[Path, tuple[int, str]] = {}

    def detail() -> str:
        for path in sorted(directory.glob("*/trajectory.json")):
            mtime = path.stat().st_mtime_ns
            try:  # a half-written or damaged file: the line waits for the next write
                if path not in seen or seen[path][0] != mtime:
                    candidates = json.loads(path.read_text(encoding="utf-8")).get("candidates", [])
                    scores = [float(c["dev_score"]) for c in candidates if c.get("dev_score") is not None]
                    best = f", best dev {max(scores):.3f}" if scores else ""
                    seen[path] = (mtime, f"{path.parent.name}: {len(scores)} candidates{best}")
            except UNREADABLE:
                continue
        return "; ".join(text for _, text in seen.values())

    return detail


def run_line(r: OptimizeResult) -> str:
    scored = sum(1 for c in r.candidates if c.dev_score is not None)
    best = f"best {r.best.id} dev {r.best.dev_score:.3f}" if r.best.dev_score is not None else f"best {r.best.id}"
    test = ""
    if r.test_original is not None and r.test_best is not None:
        test = f", test {r.test_original.mean:.3f} → {r.test_best.mean:.3f}"
    verdict = "proposed" if r.improved else "not proposed"
    return f"{r.prompt_id}/{r.method}: {scored} candidates, {best}{test}, {r.usage.calls} calls: {verdict}"


def optimize_stage(session: Session, target: Target, out_dir: Path, reserve_calls: int, results: list[OptimizeResult]) -> Stage:
    """One prompt's optimization, watched from outside: its share of the calls as the bar, each method's
    candidates and best dev score from the trajectories, and the runs it appends to `results` when it ends."""
    budget, before = session.budget, len(results)
    start, limit = budget.calls, budget.limits.max_calls
    share = max(0, limit - start - reserve_calls) if limit is not None else None

    def summary() -> str:
        runs = results[before:]
        return "; ".join(run_line(r) for r in runs) if runs else f"{target.prompt.id}: no result (see the report)"

    detail = trajectories_detail(out_dir / target.prompt.id)
    return Stage(f"optimize {target.prompt.id}", share, "calls", lambda: budget.calls - start, detail, summary)


def eval_callbacks(progress: Progress) -> tuple[Callable[[str, int], None], Callable[[ItemResult], None]]:
    """`run_eval`'s on_start and on_item, reporting a stage per prompt with its items scored and passed."""
    current: list[dict[str, int]] = [{}]

    def on_start(prompt_id: str, total: int) -> None:
        seen = {"scored": 0, "passed": 0}

        def summary() -> str:
            return f"{prompt_id}: {seen['scored']}/{total} items scored, {seen['passed']} passed"

        progress.stage(Stage(f"eval {prompt_id}", total, "items", summary=summary))  # ends the previous prompt's
        current[0] = seen

    def on_item(result: ItemResult) -> None:
        current[0]["scored"] += result.error is None
        current[0]["passed"] += result.error is None and result.passed
        progress.advance()

    return on_start, on_item


def print_optimize_table(results: Sequence[OptimizeResult], console: Console) -> None:
    """The optimize summary as a terminal table (report.md keeps the full Markdown)."""
    table = Table(title="gradgate optimize")
    for column in ("prompt", "method", "best", "dev orig → best", "test orig → best", "Δ test", "p", "calls", "proposed"):
        table.add_column(column, justify="right" if column in ("p", "calls", "Δ test") else "left")

    def pair(a: Any, b: Any) -> str:
        return f"{a.mean:.3f} → {b.mean:.3f}" if a is not None and b is not None else "—"

    for r in results:
        diff = r.difference
        interval = f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]" if diff is not None else "—"
        p_value = f"{r.p_value:.3g}" if r.p_value is not None else "—"
        proposed = "[green]yes[/]" if r.improved else "no"
        dev, test = pair(r.dev_original, r.dev_best), pair(r.test_original, r.test_best)
        table.add_row(r.prompt_id, r.method, r.best.id, dev, test, interval, p_value, str(r.usage.calls), proposed)
    console.print(table)
    for r in (r for r in results if r.label_prior):  # model-derived option text: printed without markup
        console.print(f"{r.prompt_id} / {r.method}: {r.label_prior}", highlight=False, markup=False, emoji=False)
