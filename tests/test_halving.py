"""Successive halving: rung sizes, promotion of the best, and its call accounting against the budget."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from gradgate.core.discovery import discover
from gradgate.core.method_settings import HalvingSettings
from gradgate.models.scripted import last_user_text
from gradgate.optimizers.base import OptimizeContext, RecordingScorer, RunState, Trajectory
from gradgate.optimizers.halving import Proposal, evaluate_pool, plan_calls, rungs
from gradgate.optimizers.runner import check_split
from tests.test_gradsum import Script, make_repo, open_session


def test_rungs_and_planned_calls() -> None:
    settings = HalvingSettings(min_items=4, eta=3)
    assert rungs(20, settings) == [4, 12, 20] and rungs(3, settings) == [3] and rungs(12, settings) == [4, 12]
    # 12 candidates: 12·4 + 4·8 + 2·8 = 96 item scorings instead of 240
    assert plan_calls(12, 20, settings) == 96 and plan_calls(12, 20, None) == 240
    assert plan_calls(1, 20, settings) == 20 and plan_calls(12, 20, settings, per_item=3) == 288


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
        scorer=RecordingScorer(session.gateway, session.config, target),
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
    # rung 1 keeps ceil(11/3) = 4, and a fifth tied with the fourth on the 4 items: 11·4 + 5·8 + 2·8 = 100 calls,
    # where scoring all 11 on all of dev would take 220 (92 without the tie)
    assert session.budget.calls == len(script.asked["task"]) == 100
    assert plan_calls(11, 20, HalvingSettings(min_items=4, eta=3)) == 92
    rung1 = sorted((c.dev_score or 0.0 for c in ctx.trajectory.candidates if c.dev_items == 4), reverse=True)
    assert len(rung1) == 6 and rung1[0] < 0.75  # every one dropped at rung 1 scored below the promoted ones
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


def test_ties_at_the_cut_go_on_together_only_while_the_budget_can_finish_them(tmp_path: Path) -> None:
    settings = HalvingSettings(min_items=4, eta=3)
    # the first 4 dev items are 41, 79, 55, 5 (units 1, 9, 5, 5): levels 6 to 9 all answer 3 of them
    ctx, _script, session = context(tmp_path)
    asyncio.run(evaluate_pool(ctx, proposals([6, 7, 8]), step=1, halving=settings))
    promoted = [c for c in ctx.trajectory.candidates if c.dev_items != 4]
    assert len(promoted) == 3  # keep ceil(3/3) = 1, but all three tie at 3/4 on rung 1
    ctx, _script, session = context(tmp_path / "tight", max_calls=plan_calls(3, 20, settings))
    asyncio.run(evaluate_pool(ctx, proposals([6, 7, 8]), step=1, halving=settings))
    # the calls left finish only the planned one: the earliest of the tied goes on, the budget is never exceeded
    assert [c.note for c in ctx.trajectory.candidates if c.dev_items is None] == ["level 6"]
    assert session.budget.calls == plan_calls(3, 20, settings)
