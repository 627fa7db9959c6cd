"""`gradgate eval`: discover → score → report, on a `Session` (gradgate.models.session).

What was scored is always written: when the budget runs out, or the model fails for good midway
(unreachable after retries), `results.json` and `report.md` still hold every finished item, the run is
marked incomplete (`complete: false`, `error`), and the outcome's exit code says why (3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradgate.app.eval_report import write_results
from gradgate.app.html_report import eval_html, write_html
from gradgate.app.junit import eval_junit, write_junit
from gradgate.app.shards import Shard, ShardManifest, select_targets, write_manifest
from gradgate.core.discovery import Target, discover
from gradgate.core.interrupts import interrupted_error
from gradgate.core.secrets import redact
from gradgate.errors import EXIT_INFRA, EXIT_OK, GradgateError
from gradgate.models.session import Session
from gradgate.scoring.calibration import calibrate_judge, validate_examples
from gradgate.scoring.results import EvalResults, build_results, prompt_out
from gradgate.scoring.scorer import ItemResult, PromptEval, Scorer

log = logging.getLogger(__name__)

ProgressStart = Callable[[str, int], None]
ProgressAdvance = Callable[[ItemResult], None]


@dataclass(frozen=True)
class EvalOutcome:
    results: EvalResults
    results_path: Path
    report_path: Path
    error: GradgateError | None = None  # why the run stopped early (the budget's stop is per prompt instead)

    @property
    def complete(self) -> bool:
        return self.results.complete

    @property
    def exit_code(self) -> int:
        if self.complete:
            return EXIT_OK
        return self.error.exit_code if self.error is not None else EXIT_INFRA


async def run_eval(
    session: Session,
    *,
    prompt_ids: tuple[str, ...] = (),
    out_dir: Path,
    targets: list[Target] | None = None,
    on_start: ProgressStart | None = None,
    on_item: ProgressAdvance | None = None,
    shard: Shard | None = None,
    junit: Path | None = None,
) -> EvalOutcome:
    """Score every prompt (with `shard`: that share of them, plus shard.json for `gradgate merge`) and write the
    reports: results.json, report.md, report.html, and JUnit XML to `junit`."""
    targets = targets if targets is not None else discover(session.repo, session.config, prompt_ids)
    every = [t.prompt.id for t in targets]
    targets = select_targets(targets, shard) if shard else targets
    scorers = [Scorer(session.gateway, session.config, t) for t in targets]  # validates every suite before any call
    for scorer in scorers:
        validate_examples(scorer)  # labeled judge examples too
    outs = []
    error: GradgateError | None = None
    for target, scorer in zip(targets, scorers, strict=True):
        done: dict[str, ItemResult] = {}
        if error is None:
            if on_start:
                on_start(target.prompt.id, len(target.suite.items))

            def record(result: ItemResult, done: dict[str, ItemResult] = done) -> None:
                done[result.item_id] = result
                if on_item:
                    on_item(result)

            try:
                evaluation = await scorer.score(target.prompt, target.suite.items, on_item=record)
            except GradgateError as exc:  # the model failed for good: keep what was scored, stop here
                error = exc
            except asyncio.CancelledError:  # SIGINT/SIGTERM (core.interrupts): the same, then exit 130/143
                error = interrupted_error()
        if error is not None:
            evaluation = _partial(target, done, f"not scored: {redact(error.message)}")
        calibration = None
        if error is None:
            try:
                calibration = await calibrate_judge(scorer)  # the judge on the suite's labeled examples, if any
            except GradgateError as exc:
                error = exc
            except asyncio.CancelledError:
                error = interrupted_error()
        outs.append(
            prompt_out(
                evaluation,
                path=target.prompt.rel_path,
                suite=target.suite.rel_path,
                gate=session.config.gate,
                calibration=calibration,
                options=target.suite.spec.scoring.ranked_options,
            )
        )
    results = build_results(
        outs,
        models=session.models(),
        budget=session.budget.snapshot(),
        error=redact(str(error)) if error is not None else None,
    )
    results_path, report_path = write_eval_reports(results, out_dir, junit=junit)
    if shard is not None:
        write_manifest(out_dir, ShardManifest.of("eval", shard, [t.prompt.id for t in targets], every))
    return EvalOutcome(results=results, results_path=results_path, report_path=report_path, error=error)


def write_eval_reports(results: EvalResults, out_dir: Path, *, junit: Path | None = None) -> tuple[Path, Path]:
    """results.json, report.md and report.html in `out_dir`, and JUnit XML to `junit` when given."""
    paths = write_results(results, out_dir)
    write_html(out_dir / "report.html", eval_html(results))
    if junit is not None:
        write_junit(junit, eval_junit(results))
    return paths


def _partial(target: Target, done: dict[str, ItemResult], reason: str) -> PromptEval:
    """The items scored before the run stopped; every other item carries `reason` as its error."""
    items = tuple(
        done.get(item.id)
        or ItemResult(item_id=item.id, vars=item.vars, expected=item.expected, output="", score=0.0, passed=False, error=reason)
        for item in target.suite.items
    )
    return PromptEval(prompt_id=target.prompt.id, prompt_hash=target.prompt.content_hash(), items=items, stopped_reason=reason)
