"""Eval results: the versioned `results.json` (pydantic models, schema shipped) and how it is built from a
prompt's evaluation. Its renderers (Markdown report, terminal table, writing both files) are the eval
command's report: `gradgate.app.eval_report`."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from gradgate import __version__
from gradgate.core.config import GateConfig
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

    def says(self, who: str, items: str = "items") -> str:
        """The skew in words: "<who> answers 'No' on 103 of 105 <items> (the suite expects it on 52)"."""
        return f"{who} answers {self.answer!r} on {self.chosen} of {self.n} {items} (the suite expects it on {self.expected})"


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
    skew = AnswerSkewOut(answer=answer, chosen=chosen, expected=expected, n=len(picked), line="")
    line = skew.says("the model") + (
        ": its answers follow a label prior more than the input, and a prompt change can move this score by moving "
        "that prior alone"
    )
    return skew.model_copy(update={"line": line})


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
