"""Eval results: the versioned `results.json` (pydantic models, schema shipped), a Markdown report
and a terminal table. One summary object, several renderers."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from gradgate import __version__
from gradgate.core.config import GateConfig
from gradgate.core.files import atomic_write_text
from gradgate.core.stats import detectable_drop, detectable_line, is_binary, mean_interval, unpaired_sd
from gradgate.scoring.calibration import JudgeCalibration
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
    reasoning: str | None = Field(
        None, description="The task model's reasoning before the option it ranked first (`scoring.reasoning_tokens`)."
    )
    score: float = Field(description="Weighted mean of the item's metric scores, in [0, 1].")
    passed: bool
    metrics: list[MetricOut]
    judge_explanation: str | None = None
    error: str | None = Field(None, description="Why the item was not scored (e.g. the budget ran out).")
    unjudged: bool = Field(
        False, description="The judge gave no verdict line, even after a retry: the item counts in no mean or rate."
    )


class PowerOut(BaseModel):
    detectable_drop: float | None = Field(description="Smallest drop of the mean score `gradgate check` can flag on this suite.")
    exact: bool = Field(description="Exact (binary scores, McNemar) or a normal approximation.")
    basis: str
    line: str


class AnswerSkewOut(BaseModel):
    answer: str = Field(description="The option the task model ranked first most often.")
    chosen: int = Field(description="Scored items it was chosen for.")
    expected: int = Field(description="Scored items whose expected answer it is.")
    n: int
    line: str


class JudgeAgreementOut(BaseModel):
    n: int = Field(description="Labeled judge examples judged.")
    agree: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    kappa: float | None = Field(description="Cohen's kappa (None when undefined: one class only).")
    kappa_low: float | None
    kappa_high: float | None
    min_agreement: float
    trusted: bool = Field(description="accuracy >= min_agreement (else check's verdicts on this suite are inconclusive).")
    disagreements: list[str] = Field(description="Ids of the examples the judge got wrong.")
    not_needed: int = Field(0, description="Examples not judged: the disagreements had already settled 'not trusted'.")
    summary: str


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
    power: PowerOut | None = None
    judge_agreement: JudgeAgreementOut | None = None
    answer_skew: AnswerSkewOut | None = Field(
        None, description="Ranked options only: one option chosen far more often than the suite expects it."
    )
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


def power_out(scores: list[float], gate: GateConfig) -> PowerOut:
    """What `gradgate check` can detect on this suite: exact for 0/1 scores, else approximate with √2 times the
    scores' standard deviation as the paired differences' (as if base and head were independent)."""
    binary = is_binary(scores) and gate.repeats == 1
    sd = unpaired_sd(scores) if len(scores) > 1 and not binary else 0.5
    found = detectable_drop(
        len(scores),
        alpha=gate.alpha,
        min_items=gate.min_items,
        batch_size=gate.batch_size,
        sequential=gate.sequential,
        max_drop=gate.max_drop,
        binary=binary,
        sd=sd,
    )
    basis = found.basis()
    return PowerOut(detectable_drop=found.drop, exact=binary, basis=basis, line=detectable_line(found.drop, binary, basis))


SKEW_SHARE = 0.8  # one option ranked first on at least this share of the scored items...
SKEW_EXCESS = 0.2  # ...and at least this much more often than the suite expects it
SKEW_MIN_ITEMS = 10


def answer_skew(evaluation: PromptEval, options: Sequence[str]) -> AnswerSkewOut | None:
    """When the task model ranks one option first on most items, far more often than the suite's expected answers
    say, its answers follow a label prior more than the input (a small model's usual failure on ranked options):
    a prompt change can then move the score by moving that prior alone. None when there is no such skew."""
    picked = [i for i in evaluation.scored if i.output in options]
    if not options or len(picked) < SKEW_MIN_ITEMS:
        return None
    answer, chosen = Counter(i.output for i in picked).most_common(1)[0]
    expected = sum(1 for i in picked if (i.expected or "").strip() == answer.strip())
    if chosen < SKEW_SHARE * len(picked) or (chosen - expected) < SKEW_EXCESS * len(picked):
        return None
    line = (
        f"the model answers {answer!r} on {chosen} of {len(picked)} items, the suite expects it on {expected}: its "
        "answers follow a label prior more than the input, and a prompt change can move this score by moving that "
        "prior alone"
    )
    return AnswerSkewOut(answer=answer, chosen=chosen, expected=expected, n=len(picked), line=line)


def agreement_out(c: JudgeCalibration) -> JudgeAgreementOut:
    return JudgeAgreementOut(
        n=c.n,
        agree=c.agree,
        accuracy=c.accuracy,
        accuracy_low=c.accuracy_low,
        accuracy_high=c.accuracy_high,
        kappa=c.kappa,
        kappa_low=c.kappa_low,
        kappa_high=c.kappa_high,
        min_agreement=c.min_agreement,
        trusted=c.trusted,
        disagreements=[e.id for e in c.examples if e.label != e.judged],
        not_needed=c.not_needed,
        summary=c.summary(),
    )


def prompt_out(
    evaluation: PromptEval,
    *,
    path: str,
    suite: str,
    gate: GateConfig | None = None,
    calibration: JudgeCalibration | None = None,
    options: Sequence[str] = (),
) -> PromptOut:
    """`options`: the suite's ranked answers (loglik scoring), read for `answer_skew`."""
    interval = mean_interval([i.score for i in evaluation.scored])
    return PromptOut(
        answer_skew=answer_skew(evaluation, options),
        power=power_out([i.score for i in evaluation.scored], gate) if gate is not None and evaluation.scored else None,
        judge_agreement=agreement_out(calibration) if calibration is not None else None,
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
                reasoning=i.reasoning,
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
        if p.power is not None:
            lines.append(f"- `{p.id}`: {p.power.line}")
        if p.judge_agreement is not None:
            mark = "" if p.judge_agreement.trusted else "⚠️ below min_agreement: check's verdicts on it are inconclusive; "
            lines.append(f"- `{p.id}`: {mark}{p.judge_agreement.summary}")
        if p.answer_skew is not None:
            lines.append(f"- `{p.id}`: {p.answer_skew.line}")
    if any(p.power or p.judge_agreement or p.answer_skew for p in results.prompts):
        lines.append("")
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
    for p in results.prompts:
        if p.power is not None:
            console.print(f"{p.id}: {p.power.line}", highlight=False)
        if p.judge_agreement is not None:
            console.print(
                f"{p.id}: {'' if p.judge_agreement.trusted else 'WARNING '}{p.judge_agreement.summary}", highlight=False
            )
        if p.answer_skew is not None:
            console.print(f"{p.id}: {p.answer_skew.line}", highlight=False, markup=False)
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
