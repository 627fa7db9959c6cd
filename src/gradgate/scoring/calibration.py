"""Does the judge agree with a person? The judge scored on a suite's labeled examples.

    calibration = await calibrate_judge(scorer, prompt)   # None when the suite has no labeled examples
    if calibration and not calibration.trusted: ...         # verdicts that rest on this judge are inconclusive

A suite may carry `judge_examples:`, each an output with the verdict (pass/fail) or score (1-10) a person gave
it. The judge of the suite (its criteria, scale and method, exactly as items are judged) judges each one; the
input it sees is the example's `input:` verbatim, or the prompt rendered with the variables of the example's
`item:` or `vars:`. Agreement is on pass/fail (a score passes at `judge.pass_threshold`; an example the judge
gives no verdict for counts as a disagreement): accuracy with its
Wilson interval and Cohen's kappa with a bootstrap interval (`gradgate.core.stats.agreement`). Below
`judge.min_agreement` (accuracy) the judge is not trusted.

The examples are judged in waves of `models.concurrency`, in file order; once the disagreements alone put
`min_agreement` out of reach (even if every example left agreed), the rest are not judged: the judge is not
trusted either way, and an untrusted judge's suite is not scored (`gradgate.gate.check`), so those calls
would buy nothing. Waves keep the result deterministic: the same examples are judged on every run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gradgate.core.prompts import Prompt
from gradgate.core.stats import agreement
from gradgate.core.suites import JudgeExample, Suite
from gradgate.errors import BudgetExhausted, ConfigError
from gradgate.scoring.judge import UNJUDGED, judge_output, scale_score
from gradgate.scoring.scorer import Scorer


@dataclass(frozen=True)
class ExampleVerdict:
    id: str
    label: bool  # the person's pass/fail
    judged: bool  # the judge's pass/fail (with no verdict: the opposite of the label, a disagreement)
    raw: str  # the judge's verdict as given ("unjudged": no verdict line, even after a retry)


@dataclass(frozen=True)
class JudgeCalibration:
    n: int
    agree: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    kappa: float | None
    kappa_low: float | None
    kappa_high: float | None
    min_agreement: float
    examples: tuple[ExampleVerdict, ...] = ()
    incomplete: str | None = None  # why some examples were not judged (the budget ran out)
    not_needed: int = 0  # examples left unjudged: the disagreements had already settled "not trusted"

    @property
    def disagree(self) -> int:
        return self.n - self.agree

    @property
    def unjudged(self) -> int:
        return sum(1 for e in self.examples if e.raw == UNJUDGED)

    @property
    def trusted(self) -> bool:
        return self.incomplete is None and not self.not_needed and self.accuracy >= self.min_agreement

    def summary(self) -> str:
        text = (
            f"the judge agrees with {self.agree} of {self.n} labeled examples (accuracy {self.accuracy:.2f} "
            f"[{self.accuracy_low:.2f}, {self.accuracy_high:.2f}]"
        )
        if self.kappa is not None and self.kappa_low is not None and self.kappa_high is not None:
            text += f", Cohen's κ {self.kappa:.2f} [{self.kappa_low:.2f}, {self.kappa_high:.2f}]"
        text += f"; min_agreement {self.min_agreement:g})"
        if self.unjudged:
            text += f"; {self.unjudged} got no verdict from the judge (counted as disagreements)"
        if self.not_needed:
            text += (
                f"; {self.not_needed} more not judged: even agreeing on all of them, it could not reach "
                f"min_agreement {self.min_agreement:g}"
            )
        if self.incomplete:
            text += f"; incomplete: {self.incomplete}"
        return text

    def verdict_note(self) -> str:
        """What an untrusted judge does to a verdict, in the report's words."""
        return f"inconclusive: the judge disagrees with {self.disagree} of {self.n} labeled examples"


@dataclass(frozen=True)
class _Prepared:
    id: str
    input_text: str
    expected: str | None
    output: str
    label: bool


def _label(example: JudgeExample, pass_threshold: float) -> bool:
    if example.verdict is not None:
        return example.verdict == "pass"
    assert example.score is not None  # the model validator wants one of them
    return scale_score(example.score) >= pass_threshold


def prepare_examples(prompt: Prompt, suite: Suite, pass_threshold: float) -> list[_Prepared]:
    """The judge's input for every labeled example; ConfigError (before any call) for a bad reference."""
    items = {item.id: item for item in suite.items}
    prepared = []
    for index, example in enumerate(suite.spec.judge_examples):
        where = f"{suite.rel_path}:judge_examples[{index}]"
        expected = example.expected
        if example.input is not None:
            input_text = example.input
        else:
            variables: dict[str, Any] = dict(example.vars or {})
            if example.item is not None:
                item = items.get(example.item)
                if item is None:
                    raise ConfigError(f"item {example.item!r} is not in the suite", where=f"{where}.item")
                variables, expected = dict(item.vars), expected if expected is not None else item.expected
            input_text = prompt.render(variables, where=where)
        prepared.append(
            _Prepared(
                id=example.id or example.item or str(index),
                input_text=input_text,
                expected=expected,
                output=example.output,
                label=_label(example, pass_threshold),
            )
        )
    return prepared


def has_examples(scorer: Scorer) -> bool:
    return scorer.uses_judge and bool(scorer.target.suite.spec.judge_examples)


async def calibrate_judge(scorer: Scorer, prompt: Prompt | None = None) -> JudgeCalibration | None:
    """Judge the suite's labeled examples with the scorer's judge; None when there are none (or no judge).

    `prompt` renders the inputs (default: the scorer's own). Examples the budget cut short are left out and
    the calibration is marked incomplete (so it is not trusted); so are those not needed (module docstring)."""
    if not has_examples(scorer):
        return None
    judge = scorer.judge
    prepared = prepare_examples(prompt or scorer.target.prompt, scorer.target.suite, judge.pass_threshold)

    async def one(example: _Prepared) -> ExampleVerdict | str:
        try:
            verdict = await judge_output(
                scorer.gateway, judge, input_text=example.input_text, output=example.output, expected=example.expected
            )
        except BudgetExhausted as exc:
            return exc.message
        if not verdict.parsed:  # no verdict is no agreement
            return ExampleVerdict(example.id, example.label, not example.label, verdict.raw)
        return ExampleVerdict(example.id, example.label, verdict.score >= judge.pass_threshold, verdict.raw)

    results: list[ExampleVerdict | str] = []
    wave = scorer.gateway.models.concurrency
    for start in range(0, len(prepared), wave):
        results += await asyncio.gather(*(one(e) for e in prepared[start : start + wave]))
        disagree = sum(1 for r in results if isinstance(r, ExampleVerdict) and r.label != r.judged)
        if any(isinstance(r, str) for r in results) or cannot_reach(disagree, len(prepared), judge.min_agreement):
            break
    done = [r for r in results if isinstance(r, ExampleVerdict)]
    refused = [r for r in results if isinstance(r, str)]  # what the budget said
    left = len(prepared) - len(results)
    stats = agreement([int(r.label) for r in done], [int(r.judged) for r in done])
    return JudgeCalibration(
        n=stats.n,
        agree=stats.agree,
        accuracy=stats.accuracy,
        accuracy_low=stats.accuracy_low,
        accuracy_high=stats.accuracy_high,
        kappa=stats.kappa,
        kappa_low=stats.kappa_low,
        kappa_high=stats.kappa_high,
        min_agreement=judge.min_agreement,
        examples=tuple(done),
        incomplete=f"{len(refused) + left} of {len(prepared)} examples not judged: {refused[0]}" if refused else None,
        not_needed=0 if refused else left,
    )


def cannot_reach(disagree: int, total: int, min_agreement: float) -> bool:
    """True once `disagree` disagreements out of `total` examples keep the accuracy below min_agreement."""
    return (total - disagree) < min_agreement * total


def validate_examples(scorer: Scorer, prompt: Prompt | None = None) -> None:
    """Raise ConfigError for labeled examples that cannot be rendered (call before any model call)."""
    if has_examples(scorer):
        prepare_examples(prompt or scorer.target.prompt, scorer.target.suite, scorer.judge.pass_threshold)
