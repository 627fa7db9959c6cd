"""The shared optimization runner: split, search, confirm on held-out test, write artifacts, open the PR.

    result = await run_optimization(session, target, "gradsum", out_dir=Path(".gradgate/optimize"), seed=0)
    outcome = await run_optimize_job(session, prompt_ids=("math",), methods=["gradsum"], out_dir=...,
                                     seed=0, write=False, open_pr=False, env=os.environ)

Every method runs the same way: the suite is split train/dev/test by a seeded hash; the original
prompt is scored on dev as candidate c0000; the optimizer searches (its own state and the
trajectory live in `out_dir/<prompt id>/<method>/`, so an interrupted run resumes); a search
stopped by the budget keeps its best so far. Enough budget is held back for the confirmation:
the original and the best candidate are scored on the test split, paired item by item.

The decision (documented in the report): a new prompt is proposed only when its mean test score
beats the original's by more than `optimize.margin` AND the difference has statistical support
at `optimize.alpha` — an exact McNemar test when every score is binary (pass/fail), otherwise the
lower bound of a paired bootstrap confidence interval (level 1 − alpha) of the difference must lie
above the margin. McNemar is two-sided, so using it for "better" is conservative.

Budget of a job: one hard budget for everything. Runs go one after another; each run may use the
calls that are left minus an equal share kept for every run still to come, and tokens, USD and
seconds as they come (a run also keeps back what its own confirmation is expected to need).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradgate.core.config import BudgetConfig
from gradgate.core.discovery import Target, discover
from gradgate.errors import BudgetExhausted, ConfigError, UsageError
from gradgate.scoring.scorer import PromptEval, Scorer
from gradgate.core.files import atomic_write_bytes, atomic_write_text
from gradgate.app.eval_job import Session
from gradgate.optimizers.base import Candidate, GradientNote, OptimizeContext, Optimizer, RunState, Trajectory
from gradgate.core.prompts import write_prompt_body
from gradgate.core.stats import Interval, is_binary, mcnemar_exact, mean_interval, paired_difference
from gradgate.core.suites import Item, split_items

log = logging.getLogger(__name__)

# Calls a confirmation may need beyond its estimate: retries count as calls.
CONFIRM_MARGIN = 0.1
CONFIRM_EXTRA_CALLS = 2
# Tokens/USD/seconds kept back for the confirmation, as a multiple of what scoring the original on
# dev cost per item (a generous factor: candidates can write longer outputs than the original).
CONFIRM_COST_FACTOR = 1.5


@dataclass(frozen=True)
class RunUsage:
    """What one run used of the job's budget."""

    calls: int
    tokens: int
    cost_usd: float
    seconds: float


@dataclass(frozen=True)
class OptimizeResult:
    """One prompt × method: what the search found and whether the test split confirms it."""

    method: str
    prompt_id: str
    prompt_path: str
    original: str
    best: Candidate
    improved: bool
    decision: str
    dev_original: Interval | None
    dev_best: Interval | None
    test_original: Interval | None
    test_best: Interval | None
    difference: Interval | None  # best − original on test, paired
    p_value: float | None
    test_used: str  # "mcnemar-exact", "paired-bootstrap" or "none"
    candidates: tuple[Candidate, ...]
    gradients: tuple[GradientNote, ...]
    usage: RunUsage
    budget: dict[str, Any]  # the job's budget snapshot when this run ended
    seed: int
    settings: dict[str, Any]
    stopped_reason: str | None
    split_sizes: tuple[int, int, int]
    trajectory_path: str | None = None

    @property
    def best_is_original(self) -> bool:
        return self.best.text == self.original


@dataclass(frozen=True)
class OptimizeJobOutcome:
    exit_code: int
    results: tuple[OptimizeResult, ...]
    report_path: Path
    pr_number: int | None
    pr_url: str | None
    markdown: str
    message: str  # what happened to the prompts and the pull request, in one paragraph
    written: tuple[str, ...] = ()  # prompt files changed by --write
    failures: tuple[str, ...] = field(default_factory=tuple)


class _RecordingScorer(Scorer):
    """The session's scorer, remembering per-item scores (in `scores.json`, so a resumed run has
    them too) so the report's dev intervals need no second scoring."""

    def __init__(self, *args: Any, path: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = path
        self.seen: dict[str, list[float]] = {}

    @staticmethod
    def key(prompt_hash: str, items: Sequence[Item]) -> str:
        ids = hashlib.sha256("\x00".join(i.id for i in items).encode()).hexdigest()[:16]
        return f"{prompt_hash}:{ids}"

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.seen = {str(k): [float(x) for x in v] for k, v in data.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            log.warning("ignoring unreadable %s", self.path)

    async def score(self, prompt: Any, items: Sequence[Item], **kwargs: Any) -> PromptEval:
        evaluation = await super().score(prompt, items, **kwargs)
        if evaluation.complete and kwargs.get("sample", 0) == 0:
            self.seen[self.key(evaluation.prompt_hash, items)] = [i.score for i in evaluation.items]
            if self.path is not None:
                atomic_write_text(self.path, json.dumps(self.seen) + "\n")
        return evaluation


def method_class(method: str) -> type[Optimizer]:
    from gradgate.optimizers import registry

    methods = registry()
    if method not in methods:
        hint = f"known: {', '.join(sorted(methods))}"
        if method == "greater":
            hint = "GReaTer needs torch; install gradgate[greater]"
        raise UsageError(f"unknown optimization method {method!r}", hint=hint)
    return methods[method]


def settings_for(session: Session, method: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    if settings is not None:
        return dict(settings)
    return dict(getattr(session.config.optimize, method, None) or {})


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
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _interval(scores: Sequence[float] | PromptEval | None, *, confidence: float, resamples: int, seed: int) -> Interval | None:
    if isinstance(scores, PromptEval):
        scores = [i.score for i in scores.scored]
    if not scores:
        return None
    return mean_interval(scores, confidence=confidence, resamples=resamples, seed=seed)


def _tightened(limits: BudgetConfig, budget: Any, *, tokens: int, usd: float, seconds: float) -> BudgetConfig:
    """Limits for the search that leave room for the confirmation's tokens, USD and seconds."""
    update: dict[str, Any] = {}
    if limits.max_tokens is not None:
        update["max_tokens"] = max(budget.tokens, limits.max_tokens - tokens)
    if limits.max_usd is not None:
        update["max_usd"] = max(budget.cost_usd, limits.max_usd - usd)
    if limits.max_seconds is not None:
        update["max_seconds"] = max(budget.elapsed, limits.max_seconds - seconds)
    return limits.model_copy(update=update)


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
    cls = method_class(method)
    settings = settings_for(session, method, settings)
    config = session.config
    if cls.needs_expected and any(i.expected is None for i in target.suite.items):
        raise ConfigError(
            f"{method} needs an expected answer for every item",
            where=target.suite.rel_path,
            hint="add `expected:` to every row, or choose gradsum or gpo",
        )
    optimizer = cls(settings)  # validates the settings before any call
    budget = session.budget
    start = RunUsage(budget.calls, budget.tokens, budget.cost_usd, budget.elapsed)
    stopped_before = budget.stopped_reason
    split = config.optimize.split
    splits = split_items(target.suite.items, seed=seed, train=split.train, dev=split.dev)
    if not splits.dev or not splits.test:
        raise ConfigError(
            f"the suite has too few items to split into train, dev and test ({len(target.suite.items)})",
            where=target.suite.rel_path,
            hint="add items: at least 3, better 30 or more",
        )
    run_dir = out_dir / target.prompt.id / method
    scorer = _RecordingScorer(session.gateway, config, target, path=run_dir / "scores.json")
    state = RunState.load(run_dir / "state.json", fingerprint(target, method, seed, settings, session))
    if state.resumed:
        scorer.load()
    trajectory = (
        Trajectory.load(run_dir / "trajectory.json", method, target.prompt.id)
        if state.resumed
        else Trajectory(path=run_dir / "trajectory.json", method=method, prompt_id=target.prompt.id)
    )
    if state.resumed:
        log.info(
            "%s/%s: resuming from %s (%d candidates so far)",
            target.prompt.id,
            method,
            run_dir,
            len(trajectory.candidates),
        )
    else:
        trajectory.save()
        state.save({})
        atomic_write_text(run_dir / "scores.json", "{}\n")  # scores of another run's models are stale
    ctx = OptimizeContext(
        target=target,
        scorer=scorer,
        gateway=session.gateway,
        budget=budget,
        splits=splits,
        seed=seed,
        settings=settings,
        trajectory=trajectory,
        state=state,
        repair=session.config.optimize.repair_placeholders,
    )

    # Calls the confirmation needs: original and best on test; the judge may be asked twice per item.
    per_item = 1 + (2 if scorer.uses_judge else 0)
    confirm_calls = 2 * len(splits.test) * per_item
    confirm_calls += math.ceil(confirm_calls * CONFIRM_MARGIN) + CONFIRM_EXTRA_CALLS
    limits = budget.limits
    budget.hold_back(confirm_calls + reserve_calls)
    stopped_reason: str | None = None
    try:
        before = RunUsage(budget.calls, budget.tokens, budget.cost_usd, budget.elapsed)
        original = ctx.cached_candidate(ctx.original)
        if original is None:
            try:
                original = await ctx.evaluate(ctx.original, step=0, parent=None, origin="initial")
            except BudgetExhausted as exc:
                raise BudgetExhausted(
                    f"{target.prompt.id}/{method}: the budget ran out before the original prompt "
                    f"was scored on dev ({exc.message}; {confirm_calls} calls are kept for the test confirmation)",
                    hint=exc.hint,
                ) from None
        scale = CONFIRM_COST_FACTOR * 2 * len(splits.test) / max(1, len(splits.dev))
        budget.limits = _tightened(
            limits,
            budget,
            tokens=math.ceil((budget.tokens - before.tokens) * scale),
            usd=(budget.cost_usd - before.cost_usd) * scale,
            seconds=(budget.elapsed - before.seconds) * scale,
        )
        try:
            await optimizer.optimize(ctx)
        except BudgetExhausted as exc:
            stopped_reason = exc.message
            log.info(
                "%s/%s: search stopped by the budget (%s); keeping the best so far",
                target.prompt.id,
                method,
                exc.message,
            )
        if stopped_reason is None and budget.stopped_reason != stopped_before:
            stopped_reason = budget.stopped_reason  # the optimizer caught it itself
    finally:
        budget.limits = limits
        budget.hold_back(reserve_calls)
    best = trajectory.best()
    result = await _confirm(session, ctx, scorer, original, best, seed=seed)
    budget.hold_back(reserve_calls)
    used = RunUsage(
        budget.calls - start.calls,
        budget.tokens - start.tokens,
        round(budget.cost_usd - start.cost_usd, 6),
        round(budget.elapsed - start.seconds, 3),
    )
    return OptimizeResult(
        method=method,
        prompt_id=target.prompt.id,
        prompt_path=target.prompt.rel_path,
        original=ctx.original,
        best=best,
        candidates=tuple(trajectory.candidates),
        gradients=tuple(trajectory.gradients),
        usage=used,
        budget=budget.snapshot(),
        seed=seed,
        settings=settings,
        stopped_reason=stopped_reason,
        split_sizes=(len(splits.train), len(splits.dev), len(splits.test)),
        trajectory_path=str(trajectory.path) if trajectory.path else None,
        **result,
    )


async def _confirm(
    session: Session,
    ctx: OptimizeContext,
    scorer: _RecordingScorer,
    original: Candidate,
    best: Candidate,
    *,
    seed: int,
) -> dict[str, Any]:
    """Score original and best on test (paired) and decide; dev intervals come from the search."""
    opt, gate = session.config.optimize, session.config.gate
    stats_kw: dict[str, Any] = {
        "confidence": 1 - opt.alpha,
        "resamples": gate.bootstrap_resamples,
        "seed": seed,
    }
    prompt = ctx.target.prompt
    dev_ids = tuple(i.id for i in ctx.splits.dev)

    async def on(text: str, items: Sequence[Item], *, rescore: bool) -> list[float] | None:
        body = prompt.with_body(text)
        found = scorer.seen.get(scorer.key(body.content_hash(), items))
        if found is not None or not rescore:
            return found
        evaluation = await scorer.score(body, items)
        return [i.score for i in evaluation.items] if evaluation.complete else None

    same = best.text == original.text
    out: dict[str, Any] = {
        "dev_original": None,
        "dev_best": None,
        "test_original": None,
        "test_best": None,
        "difference": None,
        "p_value": None,
        "test_used": "none",
    }
    if same:
        out["decision"] = "no candidate scored above the original on dev; nothing to propose"
        out["improved"] = False
        out["dev_original"] = out["dev_best"] = _interval(
            await _safe(on(original.text, ctx.splits.dev, rescore=True)), **stats_kw
        )
        return out
    test_original = await _safe(scorer.score(prompt.with_body(original.text), ctx.splits.test))
    test_best = await _safe(scorer.score(prompt.with_body(best.text), ctx.splits.test))
    # Dev intervals: from the search when recorded, else rescored (free from the cache) if budget allows.
    out["dev_original"] = _interval(await _safe(on(original.text, ctx.splits.dev, rescore=True)), **stats_kw)
    out["dev_best"] = _interval(await _safe(on(best.text, ctx.splits.dev, rescore=True)), **stats_kw)
    if dev_ids and out["dev_best"] is None:
        log.info("dev interval of %s not available (budget)", best.id)
    out["test_original"] = _interval(test_original, **stats_kw)
    out["test_best"] = _interval(test_best, **stats_kw)
    if test_original is None or test_best is None or not test_original.complete or not test_best.complete:
        stops = [e.stopped_reason for e in (test_original, test_best) if e is not None and e.stopped_reason]
        reason = stops[0] if stops else "the budget refused the calls"
        out["decision"] = f"the test confirmation could not finish ({reason}); {best.id} is not proposed without it"
        out["improved"] = False
        return out
    base = test_original.scores_by_id()
    head = test_best.scores_by_id()
    ids = [i.id for i in ctx.splits.test if i.id in base and i.id in head]
    b, h = [base[i] for i in ids], [head[i] for i in ids]
    difference = paired_difference(b, h, **stats_kw)
    out["difference"] = difference
    if is_binary(b) and is_binary(h):
        p = mcnemar_exact(b, h)
        out["p_value"], out["test_used"] = p, "mcnemar-exact"
        supported, support_text = p < opt.alpha, f"exact McNemar p={p:.3g} (alpha {opt.alpha:g})"
    else:
        out["test_used"] = "paired-bootstrap"
        supported = difference.low > opt.margin
        support_text = (
            f"paired bootstrap {100 * (1 - opt.alpha):.0f}% interval [{difference.low:+.3f}, "
            f"{difference.high:+.3f}] vs margin {opt.margin:g}"
        )
    beats = difference.mean > opt.margin
    out["improved"] = beats and supported
    delta = f"test {difference.mean:+.3f} (best {_mean(h):.3f} vs original {_mean(b):.3f}, n={len(ids)})"
    if out["improved"]:
        out["decision"] = f"{best.id} beats the original: {delta}; {support_text}"
    elif not beats:
        out["decision"] = f"{best.id} does not beat the original by more than the margin {opt.margin:g}: {delta}"
    else:
        out["decision"] = f"{best.id} looks better but without statistical support: {delta}; {support_text}"
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


async def _safe(awaitable: Any) -> Any:
    """An evaluation, or None when the budget refuses it outright."""
    try:
        result = await awaitable
    except BudgetExhausted:
        return None
    return result


# -- the job ----------------------------------------------------------------------------------------


def branch_for(prompt_ids: Sequence[str]) -> str:
    """A stable branch per prompt set: gradgate/tune-<ids>, shortened with a hash when long."""
    joined = "-".join(sorted(set(prompt_ids))) or "prompts"
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", joined).strip("-") or "prompts"
    if len(name) > 60:
        digest = hashlib.sha256(joined.encode()).hexdigest()[:10]
        name = f"{name[:40].rstrip('-')}-{digest}"
    return f"gradgate/tune-{name}"


def pick_best(results: Sequence[OptimizeResult]) -> OptimizeResult | None:
    """The improved result with the largest test gain (ties: the earlier method)."""
    improved = [r for r in results if r.improved]
    if not improved:
        return None
    return max(improved, key=lambda r: (r.difference.mean if r.difference else 0.0, -results.index(r)))


async def run_optimize_job(
    session: Session,
    *,
    prompt_ids: Sequence[str] = (),
    methods: Sequence[str],
    out_dir: Path,
    seed: int,
    write: bool,
    open_pr: bool,
    env: Mapping[str, str],
    base_branch: str | None = None,
) -> OptimizeJobOutcome:
    """`gradgate optimize`: every prompt × method, one report, optional write-back and pull request."""
    from gradgate.github import actions
    from gradgate.optimizers import report as tune_report

    if not methods:
        raise UsageError("no optimization method given", hint="pass --method gradsum (repeatable)")
    methods = list(dict.fromkeys(methods))
    classes = {m: method_class(m) for m in methods}
    targets = discover(session.repo, session.config, tuple(prompt_ids))
    for target in targets:  # every configuration problem before the first call
        Scorer(session.gateway, session.config, target)
        for method, cls in classes.items():
            if cls.needs_expected and any(i.expected is None for i in target.suite.items):
                raise ConfigError(
                    f"{method} needs an expected answer for every item of {target.prompt.id}'s suite",
                    where=target.suite.rel_path,
                    hint="add `expected:` to every row, or choose gradsum or gpo",
                )
            cls(settings_for(session, method, None))
    session.gateway.validate(("task", "judge", "optimizer", "editor"))
    log.info(
        "optimize: %d prompt(s) × %s; budget %s; runs share it (each keeps an equal share of the calls "
        "left for the runs after it)",
        len(targets),
        ", ".join(methods),
        session.budget.describe(),
    )

    results: list[OptimizeResult] = []
    failures: list[str] = []
    runs = [(t, m) for t in targets for m in methods]
    for index, (target, method) in enumerate(runs):
        reserve = 0
        limit = session.budget.limits.max_calls
        if limit is not None:
            left = max(0, limit - session.budget.calls)
            after = len(runs) - index - 1
            reserve = left * after // (after + 1)
        try:
            results.append(await run_optimization(session, target, method, out_dir=out_dir, seed=seed, reserve_calls=reserve))
        except BudgetExhausted as exc:
            failures.append(f"{target.prompt.id}/{method}: {exc.message}")
            log.warning("%s", failures[-1])
    session.budget.release_held()

    chosen: dict[str, OptimizeResult] = {}
    for target in targets:
        best = pick_best([r for r in results if r.prompt_id == target.prompt.id])
        if best is not None:
            chosen[target.prompt.id] = best
    by_id = {t.prompt.id: t for t in targets}
    written: list[str] = []
    if write:
        for prompt_id, result in chosen.items():
            write_prompt_body(by_id[prompt_id].prompt, result.best.text)
            written.append(result.prompt_path)

    pr_number: int | None = None
    pr_url: str | None = None
    if not results:
        message = "no result: " + "; ".join(failures)
    elif not chosen:
        message = (
            "no prompt improved on the held-out test split, so nothing was written and no pull request "
            "was opened: " + "; ".join(f"{r.prompt_id}/{r.method}: {r.decision}" for r in results)
        )
    else:
        message = "improved: " + ", ".join(f"{pid} ({r.method})" for pid, r in chosen.items())
        if write:
            message += f"; wrote {', '.join(written)}"
        elif not open_pr:
            message += "; rerun with --write to apply it, or --open-pr to propose it in a pull request"

    stopped = [f"{r.prompt_id}/{r.method}" for r in results if r.stopped_reason]
    if stopped:
        message += f"; the budget ended the search of {', '.join(stopped)} early (the best candidate so far was used)"

    def artifacts(message: str, pr_number: int | None = None, pr_url: str | None = None) -> tuple[Path, str]:
        snapshot = session.budget.snapshot()
        markdown = tune_report.report_markdown(results, budget=snapshot, failures=failures, message=message)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "report.md", markdown)
        atomic_write_text(out_dir / "gradients.md", tune_report.gradients_markdown(results))
        data = tune_report.result_json(
            results, budget=snapshot, message=message, pr_number=pr_number, pr_url=pr_url, failures=failures
        )
        atomic_write_text(out_dir / "result.json", json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        return out_dir / "report.md", markdown

    # Written before the pull request too, so a refused push still leaves the report behind.
    report_path, markdown = artifacts(message)
    if open_pr and chosen:
        publish = _open_pr(session, targets, chosen, results, methods, env=env, write=write, base_branch=base_branch)
        pr_number, pr_url = publish.pr_number, publish.pr_url
        message += f"; {publish.message}"
        report_path, markdown = artifacts(message, pr_number, pr_url)
    elif open_pr:
        message += "; --open-pr: nothing better than the current prompts, so no pull request was opened or updated"
        report_path, markdown = artifacts(message)
    actions.set_output("pr-number", str(pr_number or ""), env=env)
    actions.set_output("pr-url", pr_url or "", env=env)
    actions.set_output("report-path", str(report_path), env=env)
    actions.write_step_summary(markdown, env=env)
    log.info("%s", message)
    return OptimizeJobOutcome(
        exit_code=0 if results else BudgetExhausted.exit_code,
        results=tuple(results),
        report_path=report_path,
        pr_number=pr_number,
        pr_url=pr_url,
        markdown=markdown,
        message=message,
        written=tuple(written),
        failures=tuple(failures),
    )


def _open_pr(
    session: Session,
    targets: Sequence[Target],
    chosen: Mapping[str, OptimizeResult],
    results: Sequence[OptimizeResult],
    methods: Sequence[str],
    *,
    env: Mapping[str, str],
    write: bool,
    base_branch: str | None,
) -> Any:
    from gradgate.github.client import github_context_from_env, truncate_body
    from gradgate.optimizers import report as tune_report
    from gradgate.github.tuning_pr import publish_tuning_pr

    by_id = {t.prompt.id: t for t in targets}
    changed = {pid: by_id[pid].prompt for pid in chosen}
    # publish copies files from the working tree: without --write they are changed for the commit only.
    saved = {pid: p.path.read_bytes() for pid, p in changed.items()} if not write else {}
    context = github_context_from_env(env)
    client = context.client() if context.token and context.repository else None
    try:
        if not write:
            for pid, result in chosen.items():
                write_prompt_body(changed[pid], result.best.text)
        ids = [t.prompt.id for t in targets]
        used_methods = ", ".join(sorted({r.method for r in chosen.values()}))
        body = truncate_body(
            tune_report.pr_body(list(chosen.values()), results, budget=session.budget.snapshot(), methods=methods)
        )
        return publish_tuning_pr(
            session.repo,
            changed_files=[Path(p.rel_path) for p in changed.values()],
            branch=branch_for(ids),
            title=f"gradgate: tune {', '.join(sorted(chosen))}",
            body=body,
            client=client,
            base_branch=base_branch,
            commit_message=f"Tune {', '.join(sorted(chosen))} with {used_methods}",
        )
    finally:
        for pid, raw in saved.items():
            atomic_write_bytes(changed[pid].path, raw)
        if client is not None:
            client.close()


def result_to_dict(result: OptimizeResult) -> dict[str, Any]:
    data = asdict(result)
    data["improved"] = result.improved
    return data
