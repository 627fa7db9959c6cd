"""`gradgate optimize`: every prompt × method, one report, optional write-back and pull request.

    outcome = await run_optimize_job(session, prompt_ids=("math",), methods=["gradsum"], out_dir=...,
                                     seed=0, write=False, open_pr=False, env=os.environ)

Budget of a job: one hard budget for everything. Prompts go one after another; each may use the
calls that are left minus an equal share kept for every prompt still to come, and tokens, USD and
seconds as they come (a prompt also keeps back what its confirmation is expected to need).

Portfolio: with several methods, a prompt is searched by every method, and only the dev winner is
confirmed on test (`gradgate.optimizers.portfolio`).
The working tree is changed only with `--write`: the pull request is committed from the chosen
texts through a separate git worktree.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gradgate.app.html_report import optimize_html, write_html
from gradgate.app.progress import NullProgress, Progress, optimize_stage
from gradgate.core.discovery import Target, discover
from gradgate.core.files import atomic_write_text
from gradgate.core.interrupts import interrupt_pending, interrupted_error
from gradgate.core.prompts import prompt_file_bytes, write_prompt_body
from gradgate.errors import BudgetExhausted, UsageError
from gradgate.github import actions
from gradgate.github.client import truncate_body
from gradgate.github.context import github_context_from_env
from gradgate.github.tuning_pr import PublishResult, publish_tuning_pr
from gradgate.models.session import Session
from gradgate.optimizers import report as tune_report
from gradgate.optimizers.portfolio import later_share, run_portfolio
from gradgate.optimizers.registry import method_class
from gradgate.optimizers.results import OptimizeResult
from gradgate.optimizers.runner import check_split, check_suite, run_optimization, settings_for
from gradgate.scoring.scorer import Scorer

log = logging.getLogger(__name__)


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


def branch_for(prompt_ids: Sequence[str]) -> str:
    """A stable branch per prompt set: gradgate/tune-<ids>, shortened with a hash when long."""
    joined = "-".join(sorted(set(prompt_ids))) or "prompts"
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", joined).strip("-") or "prompts"
    if len(name) > 60:
        digest = hashlib.sha256(joined.encode()).hexdigest()[:10]
        name = f"{name[:40].rstrip('-')}-{digest}"
    return f"gradgate/tune-{name}"


def pick_best(results: Sequence[OptimizeResult]) -> OptimizeResult | None:
    """The improved result (a portfolio confirms only its dev winner, so there is at most one per prompt;
    should several be given, the largest test gain, ties: the earlier method)."""
    improved = [r for r in results if r.improved]
    if not improved:
        return None
    return max(improved, key=lambda r: (r.difference.mean if r.difference else 0.0, -results.index(r)))


def _preflight(session: Session, prompt_ids: Sequence[str], methods: Sequence[str], seed: int) -> list[Target]:
    """Every configuration problem, for every prompt and method, before the first call."""
    if not methods:
        raise UsageError("no optimization method given", hint="pass --method gradsum (repeatable)")
    classes = {m: method_class(m) for m in methods}
    targets = discover(session.repo, session.config, tuple(prompt_ids))
    for target in targets:
        Scorer(session.gateway, session.config, target)  # validates the suite's metrics
        check_split(session, target, seed)  # a suite too small to decide anything
        for method, cls in classes.items():
            check_suite(target, method, cls)
            cls(settings_for(session, method, None))  # validates the settings
    session.gateway.validate(("task", "judge", "optimizer", "editor"))
    return targets


async def _run_all(
    session: Session, targets: Sequence[Target], methods: Sequence[str], out_dir: Path, seed: int, progress: Progress
) -> tuple[list[OptimizeResult], list[str]]:
    """Every prompt in turn (one method: a run; several: a portfolio); each keeps an equal share of the calls
    left for the prompts after it."""
    results: list[OptimizeResult] = []
    failures: list[str] = []
    progress.watch(session.budget)
    try:
        for index, target in enumerate(targets):
            reserve = later_share(session, 0, len(targets) - index - 1)
            progress.stage(optimize_stage(session, target, out_dir, reserve, results))  # ends at the next stage
            if len(methods) > 1:
                portfolio = await run_portfolio(session, target, methods, out_dir=out_dir, seed=seed, reserve_calls=reserve)
                results += portfolio.results
                failures += portfolio.failures
                continue
            try:
                results.append(
                    await run_optimization(session, target, methods[0], out_dir=out_dir, seed=seed, reserve_calls=reserve)
                )
            except BudgetExhausted as exc:
                failures.append(f"{target.prompt.id}/{methods[0]}: {exc.message}; {exc.hint}")
                log.warning("%s", failures[-1])
    except asyncio.CancelledError:
        # SIGINT/SIGTERM (core.interrupts): keep the finished runs; each run's state file lets a rerun resume.
        failures.append(f"{interrupted_error().message}; rerun the same command to resume where it stopped")
        log.warning("%s", failures[-1])
    progress.finish()
    return results, failures


def _summary(
    results: Sequence[OptimizeResult],
    failures: Sequence[str],
    chosen: Mapping[str, OptimizeResult],
    written: Sequence[str],
    *,
    write: bool,
    open_pr: bool,
) -> str:
    if not results:
        return "no result: " + "; ".join(failures)
    if not chosen:
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
    return message


@dataclass
class _Artifacts:
    """report.md, gradients.md and result.json in `out_dir`, rewritten as the job learns more."""

    session: Session
    out_dir: Path
    results: Sequence[OptimizeResult]
    failures: Sequence[str]

    def write(self, message: str, pr_number: int | None = None, pr_url: str | None = None) -> tuple[Path, str]:
        snapshot = self.session.budget.snapshot()
        markdown = tune_report.report_markdown(self.results, budget=snapshot, failures=self.failures, message=message)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / "report.md", markdown)
        atomic_write_text(self.out_dir / "gradients.md", tune_report.gradients_markdown(self.results))
        html = optimize_html(self.results, budget=snapshot, failures=self.failures, message=message)
        write_html(self.out_dir / "report.html", html)
        data = tune_report.result_json(
            self.results, budget=snapshot, message=message, pr_number=pr_number, pr_url=pr_url, failures=self.failures
        )
        atomic_write_text(self.out_dir / "result.json", json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        return self.out_dir / "report.md", markdown


async def run_optimize_job(
    session: Session,
    *,
    prompt_ids: Sequence[str] = (),
    methods: Sequence[str],
    out_dir: Path,
    seed: int | None,
    write: bool,
    open_pr: bool,
    env: Mapping[str, str],
    base_branch: str | None = None,
    progress: Progress | None = None,
) -> OptimizeJobOutcome:
    """`gradgate optimize`: every prompt × method, one report, optional write-back and pull request. `seed`
    None: `optimize.seed` from the configuration."""
    methods = list(dict.fromkeys(methods))
    seed = session.config.optimize.seed if seed is None else seed
    targets = _preflight(session, prompt_ids, methods, seed)
    log.info(
        "optimize: %d prompt(s) × %s; budget %s; prompts share it (each keeps an equal share of the calls "
        "left for the prompts after it; several methods: the dev winner alone is confirmed on test)",
        len(targets),
        ", ".join(methods),
        session.budget.describe(),
    )
    results, failures = await _run_all(session, targets, methods, out_dir, seed, progress or NullProgress())
    chosen = {t.prompt.id: best for t in targets if (best := pick_best([r for r in results if r.prompt_id == t.prompt.id]))}
    by_id = {t.prompt.id: t for t in targets}
    written: list[str] = []
    if write:
        for prompt_id, result in chosen.items():
            write_prompt_body(by_id[prompt_id].prompt, result.best.text)
            written.append(result.prompt_path)
    message = _summary(results, failures, chosen, written, write=write, open_pr=open_pr)
    artifacts = _Artifacts(session, out_dir, results, failures)
    # Written before the pull request too, so a refused push still leaves the report behind.
    report_path, markdown = artifacts.write(message)
    pr_number: int | None = None
    pr_url: str | None = None
    if open_pr and chosen and not interrupt_pending():  # an interrupted run proposes nothing
        published = _open_pr(session, targets, chosen, results, methods, env=env, base_branch=base_branch)
        pr_number, pr_url = published.pr_number, published.pr_url
        message += f"; {published.message}"
        report_path, markdown = artifacts.write(message, pr_number, pr_url)
    elif open_pr:
        message += "; --open-pr: nothing better than the current prompts, so no pull request was opened or updated"
        report_path, markdown = artifacts.write(message)
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
    base_branch: str | None,
) -> PublishResult:
    """Commit the chosen prompts onto the tuning branch and open or update its pull request.
    The files' new bytes go straight to the commit: the user's working tree is never touched."""
    by_id = {t.prompt.id: t.prompt for t in targets}
    contents = {Path(by_id[pid].rel_path): prompt_file_bytes(by_id[pid], r.best.text) for pid, r in chosen.items()}
    context = github_context_from_env(env)
    client = context.client() if context.token and context.repository else None
    try:
        used_methods = ", ".join(sorted({r.method for r in chosen.values()}))
        body = truncate_body(
            tune_report.pr_body(list(chosen.values()), results, budget=session.budget.snapshot(), methods=methods)
        )
        return publish_tuning_pr(
            session.repo,
            changed_files=list(contents),
            contents=contents,
            branch=branch_for(list(by_id)),
            title=f"gradgate: tune {', '.join(sorted(chosen))}",
            body=body,
            client=client,
            base_branch=base_branch,
            commit_message=f"Tune {', '.join(sorted(chosen))} with {used_methods}",
        )
    finally:
        if client is not None:
            client.close()
