"""`gradgate eval`: discover → score → report, on a `Session` (gradgate.models.session)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradgate.core.discovery import Target, discover
from gradgate.models.session import Session
from gradgate.scoring.results import EvalResults, build_results, prompt_out, write_results
from gradgate.scoring.scorer import ItemResult, Scorer

log = logging.getLogger(__name__)

ProgressStart = Callable[[str, int], None]
ProgressAdvance = Callable[[ItemResult], None]


@dataclass(frozen=True)
class EvalOutcome:
    results: EvalResults
    results_path: Path
    report_path: Path

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.results.prompts)


async def run_eval(
    session: Session,
    *,
    prompt_ids: tuple[str, ...] = (),
    out_dir: Path,
    targets: list[Target] | None = None,
    on_start: ProgressStart | None = None,
    on_item: ProgressAdvance | None = None,
) -> EvalOutcome:
    targets = targets if targets is not None else discover(session.repo, session.config, prompt_ids)
    scorers = [Scorer(session.gateway, session.config, t) for t in targets]  # validates every suite before any call
    outs = []
    for target, scorer in zip(targets, scorers, strict=True):
        if on_start:
            on_start(target.prompt.id, len(target.suite.items))
        evaluation = await scorer.score(target.prompt, target.suite.items, on_item=on_item)
        outs.append(prompt_out(evaluation, path=target.prompt.rel_path, suite=target.suite.rel_path))
    results = build_results(outs, models=session.models(), budget=session.budget.snapshot())
    results_path, report_path = write_results(results, out_dir)
    return EvalOutcome(results=results, results_path=results_path, report_path=report_path)
