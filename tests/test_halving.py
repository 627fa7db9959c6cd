"""Successive halving: rung sizes, promotion of the best, and its call accounting against the budget."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from gradgate.core.discovery import discover
from gradgate.core.method_settings import HalvingSettings, option
from gradgate.errors import ConfigError
from gradgate.models.scripted import last_user_text
from gradgate.optimizers.base import OptimizeContext, RunState, Trajectory
from gradgate.optimizers.halving import Proposal, evaluate_pool, plan_calls, rungs
from gradgate.optimizers.runner import check_split
from gradgate.scoring.scorer import Scorer
from tests.test_gradsum import Script, make_repo, open_session


def test_rungs_and_planned_calls() -> None:
    settings = HalvingSettings(min_items=4, eta=3)
    assert rungs(20, settings) == [4, 12, 20] and rungs(3, settings) == [3] and rungs(12, settings) == [4, 12]
    # 12 candidates: 12·4 + 4·8 + 2·8 = 96 item scorings instead of 240
    assert plan_calls(12, 20, settings) == 96 and plan_calls(12, 20, None) == 240
    assert plan_calls(1, 20, settings) == 20 and plan_calls(12, 20, settings, per_item=3) == 288
    assert option(HalvingSettings, True, "x") == HalvingSettings() and option(HalvingSettings, False, "x") is None
    with pytest.raises(ConfigError):
        option(HalvingSettings, {"eta": 1}, "x")


def quality_task(messages: list[dict[str, str]]) -> str:
    """A prompt with "LEVEL k" answers item N correctly when N mod 10 < k."""
    text = last_user_text(messages)
    level = re.search(r"LEVEL (\d+)", text)
    n = int(re.findall(r"What is (\d+)\+1\?", text)[-1])
    return str(n + 1) if level and n % 10 < int(level.group(1)) else "0"


class TaskOnly(Script):
    def __call__(self, spec: Any, messages: list[dict[str, str]]) -> str:
        self.asked["task"].append(messages)
        return quality_task(messages)


def context(tmp_path: Path, max_calls: int | None = None) -> tuple[OptimizeContext, TaskOnly, Any]:
    repo = make_repo(tmp_path / "repo", n_items=80)  # 40/20/20
    script = TaskOnly(lambda m: "")
    session = open_session(repo, script, budget={"max_calls": max_calls} if max_calls else None)
    target = discover(repo, session.config)[0]
    ctx = OptimizeContext(
        target=target,
        scorer=Scorer(session.gateway, session.config, target),
        gateway=session.gateway,
        budget=session.budget,
        splits=check_split(session, target, 0),
        seed=0,
        settings={},
        trajectory=Trajectory(path=None, method="t", prompt_id="qa"),
        state=RunState(path=None, fingerprint="f"),
    )
    return ctx, script, session


def proposals(levels: list[int]) -> list[Proposal]:
    return [Proposal(f"LEVEL {k}: answer.\n\nQuestion: {{{{question}}}}\n", None, "edit", f"level {k}") for k in levels]


def test_the_best_is_promoted_to_all_of_dev_and_the_calls_are_as_planned(tmp_path: Path) -> None:
    ctx, script, session = context(tmp_path)
    levels = [3, 9, 1, 5, 0, 7, 2, 8, 4, 6, 10, 1]  # 11 distinct (the duplicate is scored once), one perfect
    finalists = asyncio.run(evaluate_pool(ctx, proposals(levels), step=1, halving=HalvingSettings(min_items=4, eta=3)))
    # 11·4 + 4·8 + 2·8 = 92 calls, where scoring all 11 on all of dev would take 220
    assert session.budget.calls == len(script.asked["task"]) == plan_calls(11, 20, HalvingSettings(min_items=4, eta=3)) == 92
    assert [c.note for c in finalists] == ["level 9", "level 10"]  # the survivors of the last rung, in pool order
    assert max(finalists, key=lambda c: c.dev_score or 0).note == "level 10" and ctx.trajectory.best().dev_score == 1.0
    dropped = [c for c in ctx.trajectory.candidates if c.dev_items is not None]
    assert len(dropped) == 9 and {c.dev_items for c in dropped} == {4, 12}
    assert all("halving: dropped" in (c.note or "") for c in dropped)
    assert ctx.trajectory.best().dev_items is None  # a partial score never wins


def test_the_pool_shrinks_to_what_the_budget_can_finish_and_never_exceeds_it(tmp_path: Path) -> None:
    ctx, _script, session = context(tmp_path, max_calls=40)
    finalists = asyncio.run(evaluate_pool(ctx, proposals([3, 9, 1, 5, 10]), step=1, halving=HalvingSettings(min_items=4, eta=3)))
    # 5 candidates would cost 5·4 + 2·8 + 1·8 = 44 > 40; 4 cost 4·4 + 2·8 + 1·8 = 40
    assert session.budget.calls == 40 == plan_calls(4, 20, HalvingSettings(min_items=4, eta=3))
    assert len(ctx.trajectory.candidates) == 4 and [c.note for c in finalists] == ["level 9"]


def test_without_halving_every_candidate_is_scored_on_all_of_dev(tmp_path: Path) -> None:
    ctx, _script, session = context(tmp_path)
    finalists = asyncio.run(evaluate_pool(ctx, proposals([3, 9, 3]), step=1, halving=None))
    assert session.budget.calls == 40 and len(finalists) == 2  # the duplicate is scored once
