"""Score a prompt on suite items: render, generate (or rank options), apply metrics and the judge.

    scorer = Scorer(gateway, config, target)
    result = await scorer.score(target.prompt, target.suite.items)

The optimizers score candidate bodies with the same scorer (`prompt.with_body(text)`), so every
number in a report comes from one code path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gradgate.core.config import Config, JudgeConfig
from gradgate.core.discovery import Target
from gradgate.core.prompts import Prompt
from gradgate.core.suites import Item
from gradgate.errors import BudgetExhausted, ConfigError
from gradgate.models.gateway import Gateway
from gradgate.scoring.answers import answer_label, build_extraction_phrase
from gradgate.scoring.judge import judge_output
from gradgate.scoring.metrics import JUDGE, MetricResult, MetricSpec, parse_metrics, score_metric

log = logging.getLogger(__name__)

NEEDS_EXPECTED = {"exact", "normalized", "contains", "choice", "final_number"}


@dataclass(frozen=True)
class ItemResult:
    item_id: str
    vars: dict[str, Any]
    expected: str | None
    output: str
    score: float  # weighted mean of the metric scores, in [0, 1]
    passed: bool
    metrics: tuple[MetricResult, ...] = ()
    judge_explanation: str | None = None
    error: str | None = None  # set when the item could not be scored (budget ran out)
    unjudged: bool = False  # the judge gave no verdict line, even after a retry: left out of every mean
    reasoning: str | None = None  # the task model's reasoning before the ranked option (`scoring.reasoning_tokens`)


def calls_per_item(uses_judge: bool) -> int:
    """See `Scorer.calls_per_item`; for callers that know whether a judge is used but hold no scorer."""
    return 1 + (2 if uses_judge else 0)


@dataclass(frozen=True)
class Answer:
    output: str  # what the metrics score: the reply, or the chosen option as written in the suite
    reasoning: str | None = None


def best_option(options: Sequence[str], scores: Sequence[float]) -> str:
    """The option of highest log-likelihood (the first on a tie)."""
    return options[max(range(len(scores)), key=scores.__getitem__)]


@dataclass(frozen=True)
class PromptEval:
    prompt_id: str
    prompt_hash: str
    items: tuple[ItemResult, ...]
    stopped_reason: str | None = None

    @property
    def scored(self) -> tuple[ItemResult, ...]:
        """Items with a score to count: neither cut short nor unjudged."""
        return tuple(i for i in self.items if i.error is None and not i.unjudged)

    @property
    def unjudged(self) -> tuple[ItemResult, ...]:
        return tuple(i for i in self.items if i.error is None and i.unjudged)

    @property
    def complete(self) -> bool:
        return self.stopped_reason is None

    @property
    def mean_score(self) -> float:
        scored = self.scored
        return sum(i.score for i in scored) / len(scored) if scored else 0.0

    @property
    def pass_rate(self) -> float:
        scored = self.scored
        return sum(i.passed for i in scored) / len(scored) if scored else 0.0

    def scores_by_id(self) -> dict[str, float]:
        return {i.item_id: i.score for i in self.scored}


@dataclass
class Scorer:
    gateway: Gateway
    config: Config
    target: Target
    metrics: list[MetricSpec] = field(init=False)
    judge: JudgeConfig = field(init=False)
    reasoning_phrase: str | None = field(init=False, default=None)  # the answer phrase after the reasoning

    def __post_init__(self) -> None:
        suite = self.target.suite
        where = f"{suite.rel_path}:metrics"
        raw = suite.spec.metrics or self.config.metrics
        if not raw:
            raw = ["normalized"] if all(i.expected is not None for i in suite.items) else [JUDGE]
        self.metrics = parse_metrics(raw, where)
        judge = suite.spec.judge or self.config.judge
        if judge.task_description is None and suite.spec.description:
            judge = judge.model_copy(update={"task_description": suite.spec.description})
        self.judge = judge
        for index, item in enumerate(suite.items):
            specs = self.metrics + parse_metrics(list(item.assertions), f"{suite.rel_path}:items[{index}].assert")
            needs = [s.type for s in specs if s.type in NEEDS_EXPECTED and s.value is None]
            if needs and item.expected is None:
                raise ConfigError(
                    f"metric {needs[0]} needs an expected answer but the row has none",
                    where=f"{suite.rel_path}:items[{index}]",
                    hint="add `expected:` to the row",
                )
        if suite.spec.scoring.mode == "loglik" and not suite.spec.scoring.options:
            raise ConfigError("loglik scoring needs `scoring.options`", where=f"{suite.rel_path}:scoring")
        if suite.spec.scoring.ranks_after_reasoning:
            self.reasoning_phrase = self._reasoning_phrase()
        if suite.spec.scoring.mode == "loglik":
            self._check_answerable()
        for index, item in enumerate(suite.items):
            # Fail before any call if a row lacks a template variable.
            self.target.prompt.render(item.vars, where=f"{suite.rel_path}:items[{index}]")

    def _check_answerable(self) -> None:
        """A loglik answer is one of the options: an item no option gets credit for (from its deterministic metrics,
        the judge left aside) is a suite error, not a prompt's failure: it would score 0 whatever the prompt says."""
        suite = self.target.suite
        options = suite.spec.scoring.options
        for index, item in enumerate(suite.items):
            specs = [
                s
                for s in self.metrics + parse_metrics(list(item.assertions), f"{suite.rel_path}:items[{index}].assert")
                if s.type != JUDGE
            ]
            if specs and not any(score_metric(s, o, item.expected).score > 0 for s in specs for o in options):
                raise ConfigError(
                    f"no option of `scoring.options` {options!r} gets any credit from this row's metrics "
                    f"({', '.join(s.type for s in specs)}) against expected {item.expected!r}",
                    where=f"{suite.rel_path}:items[{index}]",
                    hint="make `expected` one of the options (as written), or add the missing option",
                )

    @property
    def uses_judge(self) -> bool:
        return any(s.type == JUDGE for s in self.metrics) or any(
            a.get("type") == JUDGE for i in self.target.suite.items for a in i.assertions
        )

    @property
    def calls_per_item(self) -> int:
        """Most calls one item's scoring makes: the task model's answer, and the judge asked twice (a reply with no
        verdict line is asked again). Budget planning counts with it."""
        return calls_per_item(self.uses_judge)

    @property
    def task_description(self) -> str:
        return self.target.suite.spec.description or self.target.prompt.description or ""

    def messages(self, prompt: Prompt, item: Item) -> list[dict[str, str]]:
        rendered = prompt.render(item.vars)
        messages = []
        if self.target.suite.spec.system:
            messages.append({"role": "system", "content": self.target.suite.spec.system})
        messages.append({"role": "user", "content": rendered})
        return messages

    def _reasoning_phrase(self) -> str:
        """The phrase GReaTer puts after the reasoning (the suite's `answer_phrase`, else one listing the option labels),
        checked with the options it is followed by."""
        suite = self.target.suite
        scoring = suite.spec.scoring
        labels = [answer_label(o) for o in scoring.options]
        if not all(labels) or len(set(labels)) != len(labels):
            raise ConfigError(
                f"with `scoring.reasoning_tokens` the options are ranked as distinct answer labels, got {labels!r}",
                where=f"{suite.rel_path}:scoring.options",
                hint='give distinct, non-blank options ("(A)" is answered as "A", as GReaTer reads it)',
            )
        answers = [i.expected for i in suite.items if i.expected is not None]
        phrase = build_extraction_phrase(
            answers, options=scoring.options, override=scoring.answer_phrase, where=f"{suite.rel_path}:scoring.answer_phrase"
        )
        return phrase.strip()

    async def generate(self, prompt: Prompt, item: Item, *, sample: int = 0) -> Answer:
        messages = self.messages(prompt, item)
        scoring = self.target.suite.spec.scoring
        if self.reasoning_phrase is not None:
            return await self._reason_then_rank(messages, self.reasoning_phrase, sample=sample)
        if scoring.mode == "loglik":
            # After the suite's answer phrase (GReaTer's extraction phrase): every option shares that prefix, so the
            # ranking is that of the options after the phrase.
            phrase = (scoring.answer_phrase or "").strip()
            ranked = [f"{phrase} {o}" for o in scoring.options] if phrase else scoring.options
            scores = await self.gateway.score_options("task", messages, ranked)
            return Answer(best_option(scoring.options, scores))
        reply = await self.gateway.complete("task", messages, max_tokens=self.target.suite.spec.max_tokens, sample=sample)
        return Answer(reply.text)

    async def _reason_then_rank(self, messages: list[dict[str, str]], phrase: str, *, sample: int) -> Answer:
        """GReaTer's training quantity on dev: the task model reasons (at its temperature, 0 = greedy by default),
        then the options are ranked as the answer after the reasoning and the phrase."""
        scoring = self.target.suite.spec.scoring
        reply = await self.gateway.complete("task", messages, max_tokens=scoring.reasoning_tokens, sample=sample)
        # The embedded runtime tokenizes each continuation on its own. The shared text ends in a non-space character
        # (reasoning, phrase and labels stripped) and one space opens each label, which starts a new pre-token in a
        # byte-level BPE tokenizer: the shared text gets the same ids before every option, so the options' scores
        # differ only in their label tokens. No answer prefix: the assistant turn is the reasoning, then the phrase
        # and the label, the sequence GReaTer trains on.
        reasoning = reply.text.strip()
        shared = f"{reasoning} {phrase}" if reasoning else phrase
        ranked = [f"{shared} {answer_label(o)}" for o in scoring.options]
        scores = await self.gateway.score_options("task", messages, ranked, answer_prefix="")
        return Answer(best_option(scoring.options, scores), reasoning)

    async def score_item(self, prompt: Prompt, item: Item, *, sample: int = 0) -> ItemResult:
        answer = await self.generate(prompt, item, sample=sample)
        result = await self.judge_item(prompt, item, answer.output, sample=sample)
        return result if answer.reasoning is None else replace(result, reasoning=answer.reasoning)

    async def judge_item(self, prompt: Prompt, item: Item, output: str, *, sample: int = 0) -> ItemResult:
        specs = self.metrics + parse_metrics(list(item.assertions), self.target.suite.rel_path)
        results: list[MetricResult] = []
        explanation = None
        unjudged = False
        for spec in specs:
            if spec.type == JUDGE:
                verdict = await judge_output(
                    self.gateway,
                    self.judge,
                    input_text=prompt.render(item.vars),
                    output=output,
                    expected=item.expected,
                    sample=sample,
                )
                explanation = verdict.explanation
                unjudged = unjudged or not verdict.parsed
                results.append(MetricResult(JUDGE, verdict.score, f"judge: {verdict.raw}"))
            else:
                results.append(score_metric(spec, output, item.expected))
        total_weight = sum(s.weight for s in specs) or 1.0
        score = sum(r.score * s.weight for r, s in zip(results, specs, strict=True)) / total_weight
        return ItemResult(
            item_id=item.id,
            vars=item.vars,
            expected=item.expected,
            output=output,
            score=score,
            passed=not unjudged and score >= self.judge.pass_threshold,
            metrics=tuple(results),
            judge_explanation=explanation,
            unjudged=unjudged,
        )

    async def score(
        self, prompt: Prompt, items: Sequence[Item], *, sample: int = 0, on_item: Callable[[ItemResult], None] | None = None
    ) -> PromptEval:
        """Score `items`; when the budget runs out, keep what was scored and say so."""

        async def one(item: Item) -> ItemResult:
            try:
                result = await self.score_item(prompt, item, sample=sample)
            except BudgetExhausted as exc:
                result = ItemResult(
                    item_id=item.id, vars=item.vars, expected=item.expected, output="", score=0.0, passed=False, error=exc.message
                )
            if on_item is not None:
                on_item(result)
            return result

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # One item failed for good (e.g. the model is unreachable): stop the others now rather than
            # leave them calling the model in the background.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        errors = [r.error for r in results if r.error]
        return PromptEval(
            prompt_id=prompt.id,
            prompt_hash=prompt.content_hash(),
            items=tuple(results),
            stopped_reason=errors[0] if errors else None,
        )
