"""Progress on every long command: what eval, check and optimize report while they run, on a terminal and in logs."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from gradgate.app.eval_job import run_eval
from gradgate.app.progress import LogProgress, Stage, TerminalProgress, eval_callbacks, open_progress, print_optimize_table
from gradgate.core.budget import BudgetTracker
from gradgate.core.config import BudgetConfig
from tests.test_gate import check, gh_env, make_repo
from tests.test_shards import session_for


def spend(budget: BudgetTracker, calls: int) -> None:
    for _ in range(calls):
        budget.settle(budget.reserve(0, 0.0), "task", prompt_tokens=1, completion_tokens=1, cost_usd=0.0)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_log_lines_come_at_least_every_interval_even_when_nothing_advances() -> None:
    budget = BudgetTracker(BudgetConfig(max_calls=50, max_seconds=600))
    out = io.StringIO()
    with LogProgress(out, interval=0.05) as progress:
        progress.watch(budget)
        progress.stage(Stage("check slow", total=8, unit="requests", probe=lambda: budget.calls))
        spend(budget, 3)
        time.sleep(0.4)  # one long model call: nothing advances, the log still says where the run is
        progress.finish("slow: decided")
    said = lines(out)
    assert said[0] == "gradgate: check slow: started (8 requests)"
    ticks = [line for line in said if line.startswith("gradgate: [")]
    assert len(ticks) >= 3
    assert re.search(r"check slow, \ds: 3/8 requests · 3 calls \(47 left\), 9m\d\ds left", ticks[-1]), ticks[-1]
    assert re.fullmatch(r"gradgate: slow: decided \(\ds; 3/8 requests · 3 calls \(47 left\), 9m\d\ds left\)", said[-1])


def test_the_terminal_shows_the_running_stage_and_keeps_a_line_per_finished_one() -> None:
    budget = BudgetTracker(BudgetConfig(max_calls=40))
    console = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    with TerminalProgress(console) as progress:
        progress.watch(budget)
        progress.stage(
            Stage("optimize qa", total=30, unit="calls", probe=lambda: budget.calls, detail=lambda: "gradsum: 4 candidates")
        )
        spend(budget, 12)
        progress.bars.refresh()
        live = console.file.getvalue()  # type: ignore[attr-defined]
        progress.finish("qa/gradsum: proposed")
    assert "optimize qa" in live and "12/30 calls · gradsum: 4 candidates · 12 calls (28 left)" in live
    assert "━" in live  # the bar
    assert re.search(r"qa/gradsum: proposed \(\ds\)", console.file.getvalue())  # type: ignore[attr-defined]


def test_open_progress_picks_by_terminal_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = Console(file=io.StringIO(), force_terminal=False)
    with open_progress(plain) as progress:
        assert isinstance(progress, LogProgress)
    with open_progress(Console(file=io.StringIO(), force_terminal=True)) as progress:
        assert isinstance(progress, TerminalProgress)
    monkeypatch.setenv("GRADGATE_PROGRESS", "off")
    with open_progress(plain) as progress:
        progress.stage(Stage("x"))
        progress.finish()
    assert plain.file.getvalue() == ""  # type: ignore[attr-defined]


def test_eval_reports_each_prompt_with_items_scored(examples_copy: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    with LogProgress(out, interval=3600) as progress:
        on_start, on_item = eval_callbacks(progress)
        asyncio.run(run_eval(session_for(examples_copy), out_dir=tmp_path / "out", on_start=on_start, on_item=on_item))
    said = lines(out)
    assert "gradgate: eval math: started (12 items)" in said
    assert any(line.startswith("gradgate: math: 12/12 items scored, 12 passed (") for line in said)
    assert any(line.startswith("gradgate: release-note: 8/8 items scored, 8 passed (") for line in said)


def test_check_reports_each_prompt_its_requests_and_verdict(tmp_path: Path) -> None:
    out = io.StringIO()
    with LogProgress(out, interval=3600) as progress:
        outcome = check(make_repo(tmp_path / "repo"), tmp_path / "out", gh_env(tmp_path), progress=progress)
    said = "\n".join(lines(out))
    assert outcome.verdicts["worse"] == "regressed"
    # 16 paired items, base and head: at most 32 task requests; the sequential test stopped after 10 pairs.
    assert "gradgate: check worse: started (32 requests)" in said
    assert re.search(r"worse: ❌ regressed \(base 1\.000 → head 0\.000, 10/16 items, 20 calls\) \(\ds; 20/32 requests", said)
    assert "reworded: ➖ unchanged" in said and "better: ✅ improved" in said


def test_optimize_reports_candidates_best_dev_score_and_budget(tmp_path: Path) -> None:
    from gradgate.app.optimize_job import run_optimize_job
    from tests.test_gradsum import GOOD, Script, make_repo, open_session, sequence_editor

    session = open_session(
        make_repo(tmp_path / "repo"),
        Script(sequence_editor(GOOD)),
        budget={"max_calls": 500},
        optimize={"gradsum": {"iterations": 1}},
    )
    out = io.StringIO()
    with LogProgress(out, interval=0.01) as progress:
        outcome = asyncio.run(
            run_optimize_job(
                session,
                methods=["gradsum"],
                out_dir=tmp_path / "out",
                seed=0,
                write=False,
                open_pr=False,
                env={},
                progress=progress,
            )
        )
    said = lines(out)
    assert "gradgate: optimize qa: started (500 calls)" in said
    [result] = outcome.results
    scored = sum(1 for c in result.candidates if c.dev_score is not None)
    end = f"gradgate: qa/gradsum: {scored} candidates, best {result.best.id} dev 1.000, test 0.000 → 1.000, "
    end += f"{result.usage.calls} calls: proposed"
    assert any(line.startswith(end) for line in said), said
    assert any(f"gradsum: {scored} candidates, best dev 1.000 · {result.usage.calls} calls (" in line for line in said)


def test_the_optimize_summary_is_a_table_on_a_terminal(tmp_path: Path) -> None:
    from gradgate.app.optimize_job import run_optimize_job
    from tests.test_gradsum import GOOD, Script, make_repo, open_session, sequence_editor

    session = open_session(make_repo(tmp_path / "repo"), Script(sequence_editor(GOOD)), optimize={"gradsum": {"iterations": 1}})
    outcome = asyncio.run(
        run_optimize_job(session, methods=["gradsum"], out_dir=tmp_path / "out", seed=0, write=False, open_pr=False, env={})
    )
    console = Console(file=io.StringIO(), force_terminal=True, width=140, color_system=None)
    print_optimize_table(outcome.results, console)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "┃ prompt" in shown and "│ qa " in shown and "0.000 → 1.000" in shown and "yes" in shown
    assert "|---|" not in shown and "|---|" in (tmp_path / "out" / "report.md").read_text()  # Markdown stays in report.md
