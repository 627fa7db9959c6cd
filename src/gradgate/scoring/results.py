"""Eval results: the versioned `results.json` (pydantic models, schema shipped), a Markdown report
and a terminal table. One summary object, several renderers."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from gradgate import __version__
from gradgate.core.files import atomic_write_text
from gradgate.core.stats import mean_interval
from gradgate.scoring.scorer import PromptEval

RESULTS_SCHEMA_VERSION = 1


class MetricOut(BaseModel):
    name: str
    score: float
    reason: str


class ItemOut(BaseModel):
    id: str
    vars: dict[str, Any]
    expected: str | None
    output: str
    score: float = Field(description="Weighted mean of the item's metric scores, in [0, 1].")
    passed: bool
    metrics: list[MetricOut]
    judge_explanation: str | None = None
    error: str | None = Field(None, description="Why the item was not scored (e.g. the budget ran out).")
    unjudged: bool = Field(
        False, description="The judge gave no verdict line, even after a retry: the item counts in no mean or rate."
    )


class PromptOut(BaseModel):
    id: str
    path: str
    suite: str
    prompt_sha256: str
    n_items: int
    n_scored: int = Field(description="Items counted in the mean: neither cut short nor unjudged.")
    n_unjudged: int = Field(0, description="Items the judge gave no verdict for (see items[].unjudged).")
    mean_score: float
    ci_low: float = Field(description="95% bootstrap interval of the mean score.")
    ci_high: float
    pass_rate: float
    complete: bool
    stopped_reason: str | None = None
    items: list[ItemOut]


class EvalResults(BaseModel):
    """`results.json` written by `gradgate eval`."""

    schema_version: int = RESULTS_SCHEMA_VERSION
    gradgate_version: str = __version__
    created_at: str
    models: dict[str, str]
    budget: dict[str, Any] = Field(description="Limits, and calls/tokens/USD/seconds used, per role.")
    complete: bool = Field(True, description="False when the run stopped early (budget, unreachable model): results are partial.")
    error: str | None = Field(None, description="Why the run stopped early, when it did.")
    prompts: list[PromptOut]


def prompt_out(evaluation: PromptEval, *, path: str, suite: str) -> PromptOut:
    interval = mean_interval([i.score for i in evaluation.scored])
    return PromptOut(
        id=evaluation.prompt_id,
        path=path,
        suite=suite,
        prompt_sha256=evaluation.prompt_hash,
        n_items=len(evaluation.items),
        n_scored=len(evaluation.scored),
        n_unjudged=len(evaluation.unjudged),
        mean_score=round(evaluation.mean_score, 6),
        ci_low=round(interval.low, 6),
        ci_high=round(interval.high, 6),
        pass_rate=round(evaluation.pass_rate, 6),
        complete=evaluation.complete,
        stopped_reason=evaluation.stopped_reason,
        items=[
            ItemOut(
                id=i.item_id,
                vars=i.vars,
                expected=i.expected,
                output=i.output,
                score=i.score,
                passed=i.passed,
                metrics=[MetricOut(name=m.name, score=m.score, reason=m.reason) for m in i.metrics],
                judge_explanation=i.judge_explanation,
                error=i.error,
                unjudged=i.unjudged,
            )
            for i in evaluation.items
        ],
    )


def build_results(
    prompts: list[PromptOut], *, models: dict[str, str], budget: dict[str, Any], error: str | None = None
) -> EvalResults:
    return EvalResults(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        models=models,
        budget=budget,
        complete=error is None and all(p.complete for p in prompts),
        error=error,
        prompts=prompts,
    )


def results_schema() -> dict[str, Any]:
    return EvalResults.model_json_schema()


def fmt_usd(value: float) -> str:
    return f"${value:.4f}" if value else "$0"


def render_markdown(results: EvalResults) -> str:
    budget = results.budget
    lines = [
        "# gradgate eval",
        "",
        *(
            ["> [!WARNING]", "> Incomplete run, the results are partial: " + results.error.replace("\n", "\n> "), ""]
            if results.error
            else []
        ),
        f"Models: {', '.join(f'{role} `{model}`' for role, model in results.models.items())}",
        "",
        "| prompt | suite | score (95% CI) | pass rate | items | complete |",
        "|---|---|---|---|---|---|",
    ]
    for p in results.prompts:
        lines.append(
            f"| `{p.id}` | `{p.suite}` | {p.mean_score:.3f} ({p.ci_low:.3f}–{p.ci_high:.3f}) | "
            f"{p.pass_rate:.0%} | {_items(p)} | {'yes' if p.complete else 'no: ' + (p.stopped_reason or '')} |"
        )
    lines += [
        "",
        f"Calls: {budget['calls']} (+{sum(r['cached_calls'] for r in budget['by_role'].values())} from cache), "
        f"tokens: {budget['tokens']}, cost: {fmt_usd(budget['cost_usd'])}, time: {budget['seconds']:.1f} s",
        "",
    ]
    for p in results.prompts:
        failing = [i for i in p.items if not i.passed and i.error is None and not i.unjudged][:5]
        if failing:
            lines += [f"## `{p.id}`: failing items (first {len(failing)})", ""]
            for item in failing:
                reasons = "; ".join(m.reason for m in item.metrics)
                output = item.output.strip().replace("\n", " ")[:200]
                lines.append(f"- `{item.id}`: {reasons} — output: {output!r}")
            lines.append("")
        unjudged = [i.id for i in p.items if i.unjudged and i.error is None]
        if unjudged:
            shown = ", ".join(f"`{i}`" for i in unjudged[:20]) + (", …" if len(unjudged) > 20 else "")
            lines += [f"## `{p.id}`: {len(unjudged)} unjudged item(s), left out of the score", "", shown, ""]
    return "\n".join(lines)


def print_table(results: EvalResults, console: Console) -> None:
    table = Table(title="gradgate eval")
    for column in ("prompt", "suite", "score", "95% CI", "pass", "items"):
        table.add_column(column, justify="right" if column in ("score", "pass", "items") else "left")
    for p in results.prompts:
        table.add_row(
            p.id,
            p.suite,
            f"{p.mean_score:.3f}",
            f"{p.ci_low:.3f}–{p.ci_high:.3f}",
            f"{p.pass_rate:.0%}",
            _items(p),
        )
    console.print(table)
    b = results.budget
    console.print(
        f"calls {b['calls']}, tokens {b['tokens']}, cost {fmt_usd(b['cost_usd'])}, {b['seconds']:.1f} s"
        + (f" — stopped: {b['stopped_reason']}" if b.get("stopped_reason") else "")
    )


def _items(p: PromptOut) -> str:
    return f"{p.n_scored}/{p.n_items}" + (f" ({p.n_unjudged} unjudged)" if p.n_unjudged else "")


def write_results(results: EvalResults, out_dir: Path) -> tuple[Path, Path]:
    results_path, report_path = out_dir / "results.json", out_dir / "report.md"
    atomic_write_text(results_path, json.dumps(results.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(report_path, render_markdown(results) + "\n")
    return results_path, report_path
