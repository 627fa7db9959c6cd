"""The shared optimization run: split, search, confirm on held-out test.

    result = await run_optimization(session, target, "gradsum", out_dir=Path(".gradgate/optimize"), seed=0)

Every method runs the same way: the suite is split train/dev/test by a seeded hash; the original
prompt is scored on dev as candidate c0000; the optimizer searches (its own state and the
trajectory live in `out_dir/<prompt id>/<method>/`, so an interrupted run resumes); a search
stopped by the budget keeps its best so far. The budget runs in phases (`BudgetTracker.phase`):
the search cannot touch what later runs and the test confirmation (`optimizers.confirmation`) need.
A run is two halves, `search` and `confirm_search`: `run_optimization` does both for one method; a portfolio
(`optimizers.portfolio`) searches with several methods, picks the winner on dev and confirms only it.
A suite too small for the test split to ever support a decision is refused before any call (`check_split`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gradgate.core.budget import BudgetTracker, Holdback
from gradgate.core.discovery import Target
from gradgate.core.files import atomic_write_text, digest
from gradgate.core.suites import Splits, split_items
from gradgate.errors import BudgetExhausted, ConfigError
from gradgate.models.session import Session
from gradgate.optimizers import confirmation
from gradgate.optimizers.base import Candidate, OptimizeContext, Optimizer, RecordingScorer, RunState, Trajectory
from gradgate.optimizers.registry import method_class
from gradgate.optimizers.results import Confirmation, OptimizeResult, RunUsage, spread

log = logging.getLogger(__name__)


def settings_for(session: Session, method: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    """The method's settings as the user wrote them (explicit `settings`, else gradgate.yaml's `optimize.<method>`)."""
    if settings is not None:
        return dict(settings)
    configured = getattr(session.config.optimize, method, None)
    if isinstance(configured, BaseModel):
        return configured.model_dump(exclude_unset=True)
    return dict(configured or {})


def fingerprint(target: Target, method: str, seed: int, settings: dict[str, Any], session: Session) -> str:
    """Identifies a run: a state file with another fingerprint is stale and ignored."""
    payload = {
        "prompt": target.prompt.content_hash(),
        "suite": target.suite.content_hash(),
        "method": method,
        "seed": seed,
        "settings": settings,
        "split": session.config.optimize.split.model_dump(),
        "models": {r: session.config.models.for_role(r).model for r in ("task", "judge", "optimizer", "editor")},
    }
    return digest(payload)


def check_suite(target: Target, method: str, cls: type[Optimizer]) -> None:
    """Refuse a suite the method cannot use, before any call."""
    if cls.needs_expected and any(i.expected is None for i in target.suite.items):
        raise ConfigError(
            f"{method} needs an expected answer for every item of {target.prompt.id}'s suite",
            where=target.suite.rel_path,
            hint="add `expected:` to every row, or choose gradsum or gpo",
        )


def check_split(session: Session, target: Target, seed: int) -> Splits:
    """The train/dev/test split, or ConfigError (exit 2, before any call) when its test part is too small for
    any result to pass the decision rule at `optimize.alpha` and `optimize.margin`."""
    opt = session.config.optimize
    split = opt.split
    splits = split_items(target.suite.items, seed=seed, train=split.train, dev=split.dev)
    n = len(target.suite.items)
    sizes = f"{len(splits.train)}/{len(splits.dev)}/{len(splits.test)}"
    need_test = confirmation.min_test_items(opt.alpha, opt.margin)
    if need_test is None:
        raise ConfigError(
            f"optimize.margin {opt.margin:g} can never be beaten: scores lie in [0, 1]",
            where="gradgate.yaml:optimize.margin",
            hint="use a margin below 1, e.g. 0.0 or 0.05",
        )
    if not splits.train or not splits.dev or len(splits.test) < need_test:
        need_items = confirmation.items_needed(need_test, train=split.train, dev=split.dev)
        raise ConfigError(
            f"{target.prompt.id}'s suite is too small to decide anything: {n} items split {sizes} (train/dev/test) "
            f"leave {len(splits.test)} test item(s), and even if the new prompt won on every one of them, "
            f"alpha {opt.alpha:g} needs at least {need_test} (exact McNemar p = 2 × 0.5^n < alpha)",
            where=target.suite.rel_path,
            hint=f"add items: at least {need_items} for this split (test share {1 - split.train - split.dev:.2f}), "
            "better 100 or more to tell a gain of a few points from noise; or raise optimize.alpha",
        )
    return splits


@dataclass
class _Run:
    """One prompt × method while it runs: its context and its recording scorer."""

    ctx: OptimizeContext
    scorer: RecordingScorer


def _start(
    session: Session, target: Target, method: str, seed: int, settings: dict[str, Any], run_dir: Path, shared: dict[str, Any]
) -> _Run:
    """Context, scorer and trajectory of a run, resumed when `state.json` carries the run's fingerprint.
    `shared`: per-item scores another run of this job already has (the original on dev, in a portfolio)."""
    splits = check_split(session, target, seed)
    scorer = RecordingScorer(session.gateway, session.config, target, path=run_dir / "scores.json")
    state = RunState.load(run_dir / "state.json", fingerprint(target, method, seed, settings, session))
    trajectory_path = run_dir / "trajectory.json"
    if state.resumed:
        scorer.load()
        trajectory = Trajectory.load(trajectory_path, method, target.prompt.id)
        log.info("%s/%s: resuming from %s (%d candidates so far)", target.prompt.id, method, run_dir, len(trajectory.candidates))
    else:
        trajectory = Trajectory(path=trajectory_path, method=method, prompt_id=target.prompt.id)
        trajectory.save()
        state.save({})
        atomic_write_text(run_dir / "scores.json", "{}\n")  # scores of another run's models are stale
    scorer.seen = {**shared, **scorer.seen}
    ctx = OptimizeContext(
        target=target,
        scorer=scorer,
        gateway=session.gateway,
        budget=session.budget,
        splits=splits,
        seed=seed,
        settings=settings,
        trajectory=trajectory,
        state=state,
        repair=session.config.optimize.repair_placeholders,
    )
    return _Run(ctx=ctx, scorer=scorer)


async def _score_original(
    ctx: OptimizeContext, scorer: RecordingScorer, method: str, confirm_calls: int
) -> tuple[Candidate, Holdback]:
    """The original prompt on dev (candidate c0000), and what scoring it cost (nothing when the job had it)."""
    budget = ctx.budget
    before = _usage(budget)
    original = ctx.cached_candidate(ctx.original)
    known = scorer.seen.get(scorer.key(ctx.target.prompt.with_body(ctx.original).content_hash(), ctx.splits.dev))
    if original is None and known:
        original = ctx.record(ctx.original, step=0, parent=None, origin="initial", dev_score=sum(known) / len(known))
    if original is None:
        try:
            original = await ctx.evaluate(ctx.original, step=0, parent=None, origin="initial")
        except BudgetExhausted as exc:
            raise BudgetExhausted(
                f"{ctx.target.prompt.id}/{method}: the budget ran out before the original prompt "
                f"was scored on dev ({exc.message}; {confirm_calls} calls are kept for the test confirmation)"
            ) from None
    spent = Holdback(
        tokens=budget.tokens - before.tokens, usd=budget.cost_usd - before.cost_usd, seconds=budget.elapsed - before.seconds
    )
    return original, spent


async def _search(optimizer: Optimizer, ctx: OptimizeContext, method: str) -> str | None:
    """Run the method's search; a search the budget stops keeps its best so far (returns why it stopped)."""
    try:
        await optimizer.optimize(ctx)
    except BudgetExhausted as exc:
        log.info("%s/%s: search stopped by the budget (%s); keeping the best so far", ctx.target.prompt.id, method, exc.message)
        return exc.message
    return None


def _usage(budget: BudgetTracker) -> RunUsage:
    return RunUsage(budget.calls, budget.tokens, budget.cost_usd, budget.elapsed)


@dataclass
class SearchOutcome:
    """One method's search on one prompt, not yet confirmed on test."""

    method: str
    target: Target
    run: _Run
    settings: dict[str, Any]
    seed: int
    original: Candidate
    best: Candidate
    stopped_reason: str | None
    start: RunUsage
    spent_on_dev: Holdback  # what scoring the original on dev cost: the confirmation's cost estimate

    @property
    def ctx(self) -> OptimizeContext:
        return self.run.ctx


async def search(
    session: Session,
    target: Target,
    method: str,
    *,
    out_dir: Path,
    seed: int,
    settings: dict[str, Any] | None = None,
    reserve_calls: int = 0,
    confirm_calls: int | None = None,
    shared_scores: dict[str, Any] | None = None,
    spent_on_dev: Holdback | None = None,
) -> SearchOutcome:
    """Score the original on dev, then search, keeping back `reserve_calls` (later work) and the test
    confirmation's share (`confirm_calls`, default: what confirming this run needs). Never reads the test split."""
    cls = method_class(method)
    settings = settings_for(session, method, settings)
    check_suite(target, method, cls)
    optimizer = cls(settings)  # validates the settings before any call
    budget = session.budget
    start, stopped_before = _usage(budget), budget.stopped_reason
    run = _start(session, target, method, seed, settings, out_dir / target.prompt.id / method, shared_scores or {})
    ctx = run.ctx
    if confirm_calls is None:
        confirm_calls = confirmation.calls_needed(len(ctx.splits.test), run.scorer.uses_judge)
    with budget.phase(Holdback(calls=reserve_calls + confirm_calls)):
        original, spent = await _score_original(ctx, run.scorer, method, confirm_calls)
        spent = spent_on_dev or spent
        # The confirmation's tokens, USD and seconds, estimated from what scoring dev once cost.
        with budget.phase(confirmation.cost_holdback(spent, len(ctx.splits.dev), len(ctx.splits.test))):
            stopped_reason = await _search(optimizer, ctx, method)
    if stopped_reason is None and budget.stopped_reason != stopped_before:
        stopped_reason = budget.stopped_reason  # the optimizer caught it itself
    return SearchOutcome(
        method=method,
        target=target,
        run=run,
        settings=settings,
        seed=seed,
        original=original,
        best=ctx.trajectory.best(),
        stopped_reason=stopped_reason,
        start=start,
        spent_on_dev=spent,
    )


async def confirm_search(session: Session, outcome: SearchOutcome, *, reserve_calls: int = 0) -> OptimizeResult:
    """Confirm the search's best on the held-out test split (keeping `reserve_calls` for later work)."""
    with session.budget.phase(Holdback(calls=reserve_calls)):
        decided = await confirmation.confirm(outcome.ctx, session.config, outcome.run.scorer, outcome.original, outcome.best)
    return to_result(session, outcome, decided)


def to_result(session: Session, outcome: SearchOutcome, decided: Confirmation) -> OptimizeResult:
    ctx, start, used = outcome.ctx, outcome.start, _usage(session.budget)
    return OptimizeResult(
        method=outcome.method,
        prompt_id=outcome.target.prompt.id,
        prompt_path=outcome.target.prompt.rel_path,
        original=ctx.original,
        best=outcome.best,
        candidates=tuple(ctx.trajectory.candidates),
        gradients=tuple(ctx.trajectory.gradients),
        usage=RunUsage(
            used.calls - start.calls,
            used.tokens - start.tokens,
            round(used.cost_usd - start.cost_usd, 6),
            round(used.seconds - start.seconds, 3),
        ),
        budget=session.budget.snapshot(),
        seed=outcome.seed,
        settings=outcome.settings,
        stopped_reason=outcome.stopped_reason,
        split_sizes=(len(ctx.splits.train), len(ctx.splits.dev), len(ctx.splits.test)),
        trajectory_path=str(ctx.trajectory.path) if ctx.trajectory.path else None,
        **spread(decided),
    )


async def run_optimization(
    session: Session,
    target: Target,
    method: str,
    *,
    out_dir: Path,
    seed: int,
    settings: dict[str, Any] | None = None,
    reserve_calls: int = 0,
) -> OptimizeResult:
    """Optimize one prompt with one method and confirm the result on the held-out test split.

    `reserve_calls`: calls of the job's budget this run must leave untouched (for later runs).
    Raises BudgetExhausted only when not even the original could be scored on dev.
    """
    outcome = await search(session, target, method, out_dir=out_dir, seed=seed, settings=settings, reserve_calls=reserve_calls)
    return await confirm_search(session, outcome, reserve_calls=reserve_calls)
