"""`gradgate check`: did a change make any prompt worse? Base and head scored on the same items.

    outcome = run_check(repo=Path("."), base_ref="origin/main", head_ref=None, config_path=None,
                        prompt_ids=(), model=None, judge_model=None, out_dir=Path("out"), env=os.environ)
    sys.exit(outcome.exit_code)

Steps: find the prompts whose effective content changed (`gradgate.gate.changes`); score base and head
versions of each on the paired items (`gradgate.gate.check`); render one summary (`gradgate.gate.report`) to `report.md`,
`check.json`, the job summary, step outputs, error annotations and the sticky pull request comment;
then return the exit code. Everything user-visible is written before a failing code is returned.

Exit codes: 0 no regression (also: inconclusive, improved, new prompts), 1 a prompt regressed
(unless `fail_on_regression=False`), 2 usage or config error, 3 infrastructure failure (model
unreachable, budget exhausted before a decision, GitHub refused the comment). A regression that was
decided wins over a later infrastructure failure: it is the more useful signal.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradgate.app.html_report import check_html, write_html
from gradgate.app.junit import check_junit, write_junit
from gradgate.app.progress import NullProgress, Progress, gate_with_progress
from gradgate.app.sessions import effective_config
from gradgate.app.shards import Shard, ShardManifest, select_changes, work_ids, write_manifest
from gradgate.core.config import Config
from gradgate.core.files import atomic_write_text
from gradgate.core.interrupts import interrupted_error
from gradgate.core.secrets import redact
from gradgate.errors import EXIT_INFRA, EXIT_OK, EXIT_REGRESSION, GradgateError
from gradgate.gate.changes import ChangeSet, detect_changes
from gradgate.gate.report import (
    COMMENT_MARKER,
    CheckSummary,
    PromptVerdict,
    overall_verdict,
    render_markdown,
    step_outputs,
)
from gradgate.github import actions
from gradgate.github.context import github_context_from_env
from gradgate.models.gateway import Backend
from gradgate.models.session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckOutcome:
    exit_code: int
    overall: str
    verdicts: dict[str, str]  # prompt id -> verdict
    summary: CheckSummary
    markdown: str
    report_path: Path | None
    error: str | None = None  # what went wrong (exit 2 or 3), already in the report
    comment_url: str | None = None
    outputs: dict[str, str] | None = None


def _exit_code(prompts: Sequence[PromptVerdict], error: GradgateError | None, fail_on_regression: bool) -> int:
    regressed = any(p.verdict == "regressed" for p in prompts)
    if regressed and fail_on_regression:
        return EXIT_REGRESSION
    if error is not None:
        return error.exit_code
    if any(p.infra_failure for p in prompts):
        return EXIT_INFRA
    return EXIT_OK


def _emit(summary: CheckSummary, out_dir: Path, env: Mapping[str, str]) -> tuple[str, Path | None, dict[str, str]]:
    """report.md, check.json, job summary, step outputs, annotations (in that order)."""
    markdown = render_markdown(summary)
    report_path: Path | None = out_dir / "report.md"
    try:
        atomic_write_text(out_dir / "report.md", markdown)
        atomic_write_text(out_dir / "check.json", json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n")
        write_html(out_dir / "report.html", check_html(summary))
    except OSError as exc:
        log.error("could not write the report to %s: %s", out_dir, exc)
        report_path = None
    actions.write_step_summary(markdown, env=env)
    outputs = step_outputs(summary, str(report_path) if report_path else "")
    if actions.in_github_actions(env):
        for name, value in outputs.items():
            actions.set_output(name, value, env=env)
    for p in summary.prompts:
        if p.verdict == "regressed" and p.decision is not None:
            actions.annotate(
                "error",
                f"prompt {p.prompt_id} regressed: mean score {p.base_mean:.3f} → {p.head_mean:.3f} "
                f"(Δ {p.decision.mean_diff:+.3f}, interval {p.decision.low:+.3f} … {p.decision.high:+.3f})",
                file=p.path,
                line=p.line,
                title="gradgate: prompt regressed",
                env=env,
            )
    return markdown, report_path, outputs


def _comment(markdown: str, env: Mapping[str, str], github_options: Mapping[str, Any] | None) -> str | None:
    """Upsert the sticky comment when the run can; returns its URL. Raises GitHubError."""
    ctx = github_context_from_env(env)
    if ctx.pr_number is None:
        log.info("not a pull request run: no comment")
        return None
    if ctx.is_fork:
        log.warning("pull request from a fork: its token cannot comment; the verdict is in the job summary")
        return None
    if not ctx.can_comment:
        log.warning("no GitHub token (or GITHUB_REPOSITORY): no pull request comment; the verdict is in the summary")
        return None
    with ctx.client(**dict(github_options or {})) as client:
        ref = client.upsert_sticky_comment(ctx.pr_number, markdown, COMMENT_MARKER)
    return ref.url


def run_check(
    *,
    repo: Path,
    base_ref: str,
    head_ref: str | None,
    config_path: Path | None,
    prompt_ids: tuple[str, ...],
    model: str | None,
    judge_model: str | None,
    out_dir: Path,
    env: Mapping[str, str],
    comment: bool = True,
    fail_on_regression: bool = True,
    backend: Backend | None = None,
    github_options: Mapping[str, Any] | None = None,
    shard: Shard | None = None,
    junit: Path | None = None,
    progress: Progress | None = None,
) -> CheckOutcome:
    """The whole gate. Never raises a GradgateError: failures become the outcome's exit code and `error`,
    after the report, job summary, outputs and comment are written. `github_options` go to GitHubClient
    (tests pass a no-op `sleep`). With `shard`, only that share of the changed prompts is scored and a partial
    result is written for `gradgate merge` (see `_finish_shard`)."""
    repo = repo.resolve()
    done: list[PromptVerdict] = []
    changes: ChangeSet | None = None
    session: Session | None = None
    config: Config | None = None
    error: GradgateError | None = None
    every: list[str] = []  # with a shard: the changed and new prompts of all shards
    try:
        changes = detect_changes(repo, base_ref=base_ref, head_ref=head_ref, config_path=config_path, prompt_ids=prompt_ids)
        config = effective_config(changes.head.config, env, {"task": model, "judge": judge_model})
        every, changes = work_ids(changes), select_changes(changes, shard) if shard else changes
        work = changes.with_status("changed", "new")
        if work:
            session = Session.open(repo, config, backend=backend)
            asyncio.run(gate_with_progress(session, changes, done, progress or NullProgress()))
    except GradgateError as exc:
        error = exc
        log.error("%s", redact(str(exc)))
    except asyncio.CancelledError:  # SIGINT/SIGTERM during scoring (core.interrupts): report what was decided
        error = interrupted_error()
        log.error("%s", error.message)
    exit_code = _exit_code(done, error, fail_on_regression)
    gate = (config or Config.model_validate({})).gate
    summary = CheckSummary(
        base_label=changes.base.label if changes else base_ref,
        head_label=changes.head.label if changes else (head_ref or "working tree"),
        models={role: (config.models.for_role(role).model) for role in ("task", "judge")} if config else {},
        gate=gate.model_dump(),
        prompts=tuple(done),
        unchanged=tuple(c.prompt_id for c in changes.with_status("unchanged")) if changes else (),
        removed=tuple(c.prompt_id for c in changes.with_status("removed")) if changes else (),
        broken_base=dict(changes.base.broken) if changes else {},
        overall="error" if error is not None and not done else overall_verdict(done),
        exit_code=exit_code,
        error=redact(str(error)) if error is not None else None,
        budget=session.budget.snapshot() if session else {},
    )
    if shard is not None:
        mine = work_ids(changes) if changes else []
        manifest = ShardManifest.of("check", shard, mine, every, error_exit_code=error.exit_code if error else None)
        return _finish_shard(summary, out_dir, manifest)
    return publish(summary, out_dir, env, comment=comment, github_options=github_options, junit=junit)


def publish(
    summary: CheckSummary,
    out_dir: Path,
    env: Mapping[str, str],
    *,
    comment: bool = True,
    github_options: Mapping[str, Any] | None = None,
    junit: Path | None = None,
) -> CheckOutcome:
    """Everything a check shows, once: report.md/.html, check.json, JUnit, job summary, step outputs,
    annotations, then the sticky comment (`gradgate merge` publishes merged shards through here too)."""
    markdown, report_path, outputs = _emit(summary, out_dir, env)
    if junit is not None:
        try:
            write_junit(junit, check_junit(summary))
        except OSError as exc:
            log.error("could not write the JUnit report to %s: %s", junit, exc)
    exit_code = summary.exit_code
    comment_url = None
    message = summary.error
    if comment:
        try:
            comment_url = _comment(markdown, env, github_options)
        except GradgateError as exc:
            # The report is written; a regression keeps exit 1 so a comment failure cannot hide it.
            message = redact(str(exc))
            log.error("%s", message)
            exit_code = exit_code if exit_code == EXIT_REGRESSION else EXIT_INFRA
    return CheckOutcome(
        exit_code=exit_code,
        overall=summary.overall,
        verdicts={p.prompt_id: p.verdict for p in summary.prompts},
        summary=summary,
        markdown=markdown,
        report_path=report_path,
        error=message,
        comment_url=comment_url,
        outputs=outputs,
    )


def _finish_shard(summary: CheckSummary, out_dir: Path, manifest: ShardManifest) -> CheckOutcome:
    """A shard's partial result: report.md/.html, check.json and shard.json, but no comment, job summary,
    step outputs or annotations (`gradgate merge` writes those once). Exit 0 once written: the merge decides."""
    markdown, report_path, _ = _emit(summary, out_dir, {})  # no runner environment: nothing goes to GitHub
    try:
        write_manifest(out_dir, manifest)
    except OSError as exc:
        log.error("could not write the shard manifest to %s: %s", out_dir, exc)
        report_path = None
    return CheckOutcome(
        exit_code=EXIT_OK if report_path is not None else EXIT_INFRA,
        overall=summary.overall,
        verdicts={p.prompt_id: p.verdict for p in summary.prompts},
        summary=summary,
        markdown=markdown,
        report_path=report_path,
        error=summary.error,
    )
