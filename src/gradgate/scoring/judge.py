"""LLM-as-judge: user-written criteria, reasoning first, then a verdict on the final line.

The input, the output under judgment and the reference are fenced between markers that carry a nonce
(`gradgate.core.fence`), and the judge is told that anything inside is data, so an output cannot
instruct its own judge. The verdict is read from the reply's final non-empty line only, in the required
form (`VERDICT: PASS`, `SCORE: 7`): a judge that quotes a verdict from the output in its reasoning is
not misread. A reply without that line is retried once with a reminder that asks for the line alone (a
few tokens); if the second reply lacks it too, the item is *unjudged* (`Judgement.parsed` is False): the
scorer leaves it out of every mean and counts it, never guessing a verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gradgate.core.config import JudgeConfig
from gradgate.core.fence import fence, make_nonce
from gradgate.models.gateway import Gateway
from gradgate.scoring.judge_prompts import (
    CONTENT_FREE_TEXT,
    INPUT_LABEL,
    JUDGE_RETRY,
    JUDGE_RETRY_MAX_TOKENS,
    JUDGE_SYSTEM,
    JUDGE_TEMPLATE,
    LOGLIK_ENDING,
    NEUTRAL_NONCE,
    OUTPUT_LABEL,
    REASONING_REQUEST,
    REFERENCE_LABEL,
    REFERENCE_SECTION,
    TASK_SECTION,
    VERDICT_FORMATS,
    VERDICT_OPTIONS,
)

UNJUDGED = "unjudged"

# The whole final line, in the required form; bold/code marks and a closing full stop are tolerated.
_DECOR = r"[*_`\s]*"
_VERDICT_LINE = {
    "binary": re.compile(rf"{_DECOR}VERDICT{_DECOR}:{_DECOR}(PASS|FAIL){_DECOR}\.?{_DECOR}", re.IGNORECASE),
    "1-10": re.compile(rf"{_DECOR}SCORE{_DECOR}:{_DECOR}(\d{{1,2}})(?:\s*/\s*10)?{_DECOR}\.?{_DECOR}", re.IGNORECASE),
}


@dataclass(frozen=True)
class Judgement:
    score: float  # normalized to [0, 1]; 0.0 and meaningless when not parsed
    raw: str  # the judge's verdict as given: PASS/FAIL or 1-10, or "unjudged"
    explanation: str
    parsed: bool  # False: the judge gave no verdict line, even after a retry (the item is unjudged)


def build_judge_messages(
    *,
    criteria: str,
    scale: str,
    input_text: str,
    output: str,
    expected: str | None,
    task_description: str | None,
    nonce: str | None = None,
) -> list[dict[str, str]]:
    """The judge's request. The nonce defaults to one derived from the fenced texts (see gradgate.core.fence)."""
    nonce = nonce or make_nonce(input_text, output, expected)
    user = JUDGE_TEMPLATE.format(
        task_section=TASK_SECTION.format(task_description=task_description) if task_description else "",
        criteria=criteria.strip(),
        input=fence(INPUT_LABEL, input_text, nonce),
        reference_section=REFERENCE_SECTION.format(reference=fence(REFERENCE_LABEL, expected, nonce)) if expected else "",
        output=fence(OUTPUT_LABEL, output, nonce),
        verdict_format=VERDICT_FORMATS[scale],
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def final_line(reply: str) -> str:
    lines = [line for line in reply.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def scale_score(value: int) -> float:
    """A 1-10 judge score as a score in [0, 1] (1 → 0.0, 10 → 1.0)."""
    return (value - 1) / 9


def parse_verdict(reply: str, scale: str) -> tuple[float, str] | None:
    """(normalized score, verdict) from the reply's final non-empty line, or None when it is not a verdict."""
    match = _VERDICT_LINE[scale].fullmatch(final_line(reply))
    if match is None:
        return None
    if scale == "binary":
        verdict = match.group(1).upper()
        return (1.0 if verdict == "PASS" else 0.0), verdict
    value = int(match.group(1))
    return (scale_score(value), str(value)) if 1 <= value <= 10 else None


async def judge_output(
    gateway: Gateway,
    config: JudgeConfig,
    *,
    input_text: str,
    output: str,
    expected: str | None = None,
    sample: int = 0,
) -> Judgement:
    # The nonce comes from the content, so the request (and the cache key) is stable across runs.
    messages = build_judge_messages(
        criteria=config.criteria,
        scale=config.scale,
        input_text=input_text,
        output=output,
        expected=expected,
        task_description=config.task_description,
    )
    method = config.method
    if method == "auto":
        method = "loglik" if gateway.spec("judge").is_local else "reasoning"
    if method == "loglik":
        return await _judge_by_loglik(gateway, config, messages)
    reply = await gateway.complete("judge", messages, sample=sample)
    parsed = parse_verdict(reply.text, config.scale)
    text = reply.text
    if parsed is None:
        retry = [
            *messages,
            {"role": "assistant", "content": reply.text},
            {"role": "user", "content": JUDGE_RETRY.format(verdict_format=VERDICT_FORMATS[config.scale])},
        ]
        max_tokens = min(JUDGE_RETRY_MAX_TOKENS, gateway.spec("judge").max_tokens)
        second = await gateway.complete("judge", retry, sample=sample, max_tokens=max_tokens)
        text = f"{reply.text.strip()}\n\n(asked again for the verdict line)\n{second.text.strip()}"
        parsed = parse_verdict(second.text, config.scale)
    if parsed is None:
        return Judgement(
            score=0.0,
            raw=UNJUDGED,
            explanation=f"the judge's reply did not end with a verdict line, twice: {text.strip()[-500:]}",
            parsed=False,
        )
    score, raw = parsed
    return Judgement(score=score, raw=raw, explanation=text.strip(), parsed=True)


async def _judge_by_loglik(gateway: Gateway, config: JudgeConfig, messages: list[dict[str, str]]) -> Judgement:
    """Rank the possible verdicts by log-likelihood: robust for small models that cannot hold a format.

    Small models prefer some verdict whatever they read. Contextual calibration (Zhao et al., 2021) removes
    that prior: the same question about a content-free output ("N/A") gives the bias, which is subtracted.
    The content-free request is the same for every item with these criteria, so the cache makes it one call.
    """
    question = _loglik_question(messages[-1]["content"], config.scale)
    options = VERDICT_OPTIONS[config.scale]
    scores = await gateway.score_options("judge", [*messages[:-1], {"role": "user", "content": question}], options)
    neutral = build_judge_messages(
        criteria=config.criteria,
        scale=config.scale,
        input_text=CONTENT_FREE_TEXT,
        output=CONTENT_FREE_TEXT,
        expected=None,
        task_description=config.task_description,
        nonce=NEUTRAL_NONCE,
    )
    prior = await gateway.score_options(
        "judge", [*neutral[:-1], {"role": "user", "content": _loglik_question(neutral[-1]["content"], config.scale)}], options
    )
    calibrated = [s - p for s, p in zip(scores, prior, strict=True)]
    best = max(range(len(options)), key=calibrated.__getitem__)
    raw = options[best]
    score = (1.0 if raw == "PASS" else 0.0) if config.scale == "binary" else scale_score(int(raw))
    ranked = ", ".join(f"{o} {c:+.2f}" for o, c in sorted(zip(options, calibrated, strict=True), key=lambda x: -x[1])[:3])
    return Judgement(score=score, raw=raw, explanation=f"log-likelihood verdict {raw} (calibrated: {ranked})", parsed=True)


def _loglik_question(user: str, scale: str) -> str:
    cut = user.rfind(REASONING_REQUEST)
    return (user[:cut] if cut >= 0 else user).rstrip() + "\n\n" + LOGLIK_ENDING[scale]
