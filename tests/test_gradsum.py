"""GRAD-SUM logic with a scripted model double: gradients, summary, rejection, beam, resume.

The scripted task model answers "What is N+1?" correctly only when the prompt says so:
a prompt containing GOOD answers every item, HALF answers items with an even N, anything else
answers 0. The optimizer and editor replies are scripted per test.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gradgate.core.config import ModelSpec, parse_config
from gradgate.core.discovery import discover
from gradgate.core.method_settings import GradSumSettings
from gradgate.errors import ConfigError, ModelError
from gradgate.models.scripted import ScriptedBackend, last_user_text
from gradgate.models.session import Session
from gradgate.optimizers.gradsum.method import GradSum
from gradgate.optimizers.gradsum.prompts import (
    EDIT_SYSTEM,
    GRADIENT_SYSTEM,
    SUMMARY_SYSTEM,
    TEMPLATES,
    build_messages,
)
from gradgate.optimizers.hygiene import parse_prompt_reply
from gradgate.optimizers.results import OptimizeResult
from gradgate.optimizers.runner import run_optimization

ORIGINAL = "Answer the question.\n\nQuestion: {{question}}\n"
GOOD = "<prompt>GOOD: answer with the number only.\n\nQuestion: {{question}}</prompt>"
HALF = "<prompt>HALF: answer the question.\n\nQuestion: {{question}}</prompt>"
LOST = "<prompt>GOOD: answer with the number only.</prompt>"  # lost {{question}}

Editor = Callable[[list[dict[str, str]]], str]


def make_repo(root: Path, n_items: int = 24, body: str = ORIGINAL) -> Path:
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    (root / "evals").mkdir(exist_ok=True)
    (root / "prompts" / "qa.md").write_text("---\nid: qa\ndescription: Add one to a number.\nsuite: evals/qa.yaml\n---\n" + body)
    items = "\n".join(f'  - {{id: q{i}, vars: {{question: "What is {i}+1?"}}, expected: "{i + 1}"}}' for i in range(n_items))
    (root / "evals" / "qa.yaml").write_text(f"description: Add one.\nmetrics: [normalized]\nitems:\n{items}\n")
    return root


def task_answer(prompt: str) -> str:
    match = re.search(r"What is (\d+)\+1\?", prompt)
    n = int(match.group(1)) if match else 0
    if "GOOD" in prompt or ("HALF" in prompt and n % 2 == 0):
        return str(n + 1)
    return "0"


def default_optimizer(messages: list[dict[str, str]]) -> str:
    system = messages[0]["content"]
    if system == GRADIENT_SYSTEM:
        item = re.search(r"What is (\d+)\+1\?", last_user_text(messages))
        number = item.group(1) if item else "?"
        return f"Tell the model to compute item {number} and answer with the number only."
    if system == SUMMARY_SYSTEM:
        return "SUMMARY: the prompt should ask for the number only."
    raise AssertionError(f"unexpected optimizer request: {system[:40]}")


class Script:
    """Routes each request by model name; records what every role was asked."""

    def __init__(self, editor: Editor, optimizer: Callable[[list[dict[str, str]]], str] = default_optimizer) -> None:
        self.editor = editor
        self.optimizer = optimizer
        self.asked: dict[str, list[list[dict[str, str]]]] = {
            "task": [],
            "optimizer": [],
            "editor": [],
            "judge": [],
        }

    def __call__(self, spec: ModelSpec, messages: list[dict[str, str]]) -> str:
        role = spec.model.split("/")[1]
        self.asked[role].append(messages)
        if role == "task":
            return task_answer(last_user_text(messages))
        if role == "optimizer":
            return self.optimizer(messages)
        if role == "editor":
            assert messages[0]["content"] == EDIT_SYSTEM
            return self.editor(messages)
        raise AssertionError(role)

    def count(self, role: str, system: str | None = None) -> int:
        return sum(1 for m in self.asked[role] if system is None or m[0]["content"] == system)


def config_for(*, budget: dict[str, Any] | None = None, optimize: dict[str, Any] | None = None) -> Any:
    return parse_config(
        {
            "models": {
                "task": "fake/task",
                "judge": "fake/judge",
                "optimizer": "fake/optimizer",
                "editor": "fake/editor",
                "concurrency": 4,
                "max_retries": 0,
            },
            "budget": budget or {},
            "optimize": {"alpha": 0.1, **(optimize or {})},
        },
        "test",
    )


def open_session(repo: Path, script: Script, **kw: Any) -> Session:
    return Session.open(
        repo,
        config_for(**kw),
        backend=ScriptedBackend(script),
        use_cache=False,
        roles=("task", "judge", "optimizer", "editor"),
    )


def optimize(
    repo: Path, script: Script, out: Path, settings: dict[str, Any], *, seed: int = 0, **kw: Any
) -> tuple[OptimizeResult, Session]:
    session = open_session(repo, script, **kw)
    target = discover(repo, session.config)[0]
    paper = {"mutations": 0, "halving": False, **settings}  # the paper's GRAD-SUM; mutations and halving: own tests
    result = asyncio.run(run_optimization(session, target, "gradsum", out_dir=out, seed=seed, settings=paper))
    return result, session


def dev_split(repo: Path, seed: int = 0) -> tuple[Any, ...]:
    from gradgate.core.suites import split_items

    target = discover(repo, config_for())[0]
    return split_items(target.suite.items, seed=seed, train=0.5, dev=0.25).dev


def sequence_editor(*replies: str) -> Editor:
    """Reply by the candidate's sample index, cycling."""

    def editor(messages: list[dict[str, str]]) -> str:
        editor.calls += 1  # type: ignore[attr-defined]
        return replies[(editor.calls - 1) % len(replies)]  # type: ignore[attr-defined]

    editor.calls = 0  # type: ignore[attr-defined]
    return editor


# -- prompts module -----------------------------------------------------------------------------------


def test_every_template_formats_with_its_declared_fields() -> None:
    for name, (template, declared) in TEMPLATES.items():
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        assert used == set(declared), name
        text = template.format(**{f: f"<{f}>" for f in declared})
        assert all(f"<{f}>" in text for f in declared)
    messages = build_messages("edit", task_description="t", prompt="p {{x}}", feedback="f", variables="{{x}}")
    assert messages[0]["content"] == EDIT_SYSTEM and "p {{x}}" in messages[1]["content"]
    gradient = build_messages(
        "gradient",
        task_description="t",
        prompt="p",
        criteria="c",
        input="i",
        output="o",
        expected_section="",
        explanation="e",
    )[1]["content"]
    assert "{{name}}" in gradient  # the doubled braces survive formatting as a literal placeholder
    with pytest.raises(KeyError):
        build_messages("summary", task_description="t")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<prompt>A {{q}}</prompt>", ["A {{q}}"]),
        ("Sure!\n<PROMPT>\nA {{q}}\n</Prompt> and <prompt>B {{q}}</prompt>", ["A {{q}}", "B {{q}}"]),
        ("<prompt>A {{q}} and no closing tag", ["A {{q}} and no closing tag"]),
        ("Here is the improved prompt:\nA {{q}}", ["A {{q}}"]),
        ("<prompt>```text\nA {{q}}\n```</prompt>", ["A {{q}}"]),
        ("<prompt>   </prompt>", []),
        ("", []),
    ],
)
def test_parse_prompt_reply_tolerates_small_model_replies(reply: str, expected: list[str]) -> None:
    assert parse_prompt_reply(reply) == expected


def test_settings_defaults_follow_the_paper_and_bad_values_are_config_errors() -> None:
    s = GradSumSettings()
    assert (s.beam_width, s.iterations, s.train_batch, s.summarize) == (3, 10, 30, True)
    assert GradSum({"beam_width": 2, "summarize": False}).config.beam_width == 2
    for bad in ({"beam_width": 0}, {"summarize": "yes"}, {"beam": 3}, {"iterations": 1.5}):
        with pytest.raises(ConfigError):
            GradSum(bad)


# -- the search ---------------------------------------------------------------------------------------

ONE = {"iterations": 1, "beam_width": 1, "candidates_per_prompt": 1}


def test_one_gradient_per_failing_item_then_one_summary_feeds_the_editor(tmp_path: Path) -> None:
    script = Script(sequence_editor(GOOD))
    result, _ = optimize(
        make_repo(tmp_path / "repo"),
        script,
        tmp_path / "out",
        {**ONE, "max_gradient_items": 5, "train_batch": 8},
    )
    # The original fails every train item: 8 in the batch, gradients for the first 5, one summary.
    assert script.count("optimizer", GRADIENT_SYSTEM) == 5
    assert script.count("optimizer", SUMMARY_SYSTEM) == 1
    assert script.count("editor") == 1
    edit_request = script.asked["editor"][0][1]["content"]
    assert "SUMMARY: the prompt should ask for the number only." in edit_request
    assert "compute item" not in edit_request  # the editor sees the summary, not the per-item advice
    assert "{{question}}" in edit_request
    [note] = result.gradients
    assert note.summary.startswith("SUMMARY") and len(note.per_item) == 5 and note.parent == "c0000"
    assert note.children == (result.best.id,)
    assert result.best.text.startswith("GOOD") and result.best.text.endswith("\n")  # trailing newline kept
    assert result.best.dev_score == 1.0 and result.candidates[0].dev_score == 0.0


def test_without_summarization_per_item_gradients_go_to_the_editor(tmp_path: Path) -> None:
    script = Script(sequence_editor(GOOD))
    result, _ = optimize(
        make_repo(tmp_path / "repo"),
        script,
        tmp_path / "out",
        {**ONE, "summarize": False, "max_gradient_items": 3},
    )
    assert script.count("optimizer", SUMMARY_SYSTEM) == 0
    assert script.count("optimizer", GRADIENT_SYSTEM) == 3
    edit_request = script.asked["editor"][0][1]["content"]
    assert edit_request.count("compute item") == 3
    assert result.gradients[0].summary == "(summarization off)"


def test_a_parents_edits_are_sent_together(tmp_path: Path) -> None:
    """All of a parent's edit requests are in flight at once, so a local editor samples them as one batch."""

    class Overlapping(ScriptedBackend):
        in_flight = 0
        most_at_once = 0

        async def complete(self, spec: ModelSpec, messages: list[dict[str, str]], **kw: Any) -> Any:
            if spec.model != "fake/editor":
                return await super().complete(spec, messages, **kw)
            type(self).in_flight += 1
            type(self).most_at_once = max(type(self).most_at_once, type(self).in_flight)
            await asyncio.sleep(0.01)  # a model's reply takes a while; the other requests arrive meanwhile
            type(self).in_flight -= 1
            return await super().complete(spec, messages, **kw)

    script = Script(sequence_editor(GOOD, "<prompt>SECOND: {{question}}</prompt>", "<prompt>THIRD: {{question}}</prompt>"))
    repo = make_repo(tmp_path / "repo")
    session = Session.open(
        repo, config_for(), backend=Overlapping(script), use_cache=False, roles=("task", "judge", "optimizer", "editor")
    )
    target = discover(repo, session.config)[0]
    settings = {"mutations": 0, "halving": False, **ONE, "candidates_per_prompt": 3}
    result = asyncio.run(run_optimization(session, target, "gradsum", out_dir=tmp_path / "out", seed=0, settings=settings))
    assert script.count("editor") == 3
    assert Overlapping.most_at_once == 3
    # Gathered in order: the candidates keep the order of their samples.
    assert [c.text.split(":")[0] for c in result.candidates[1:4]] == ["GOOD", "SECOND", "THIRD"]


def test_a_candidate_that_loses_a_template_variable_is_rejected_without_a_call(tmp_path: Path) -> None:
    script = Script(sequence_editor(LOST))
    result, _ = optimize(make_repo(tmp_path / "repo"), script, tmp_path / "out", ONE)
    rejected = [c for c in result.candidates if c.rejected]
    assert len(rejected) == 1 and "question" in (rejected[0].rejected or "")
    assert not any("answer with the number only" in last_user_text(m) for m in script.asked["task"])
    assert result.best.id == "c0000" and not result.improved
    assert "nothing to propose" in result.decision


def test_junk_from_the_editor_keeps_the_original(tmp_path: Path) -> None:
    script = Script(sequence_editor("", "I cannot help with that.", "<prompt></prompt>"))
    result, _ = optimize(
        make_repo(tmp_path / "repo"),
        script,
        tmp_path / "out",
        {"iterations": 2, "beam_width": 2, "candidates_per_prompt": 3},
    )
    assert result.best.id == "c0000" and not result.improved
    assert all(c.rejected for c in result.candidates[1:])  # prose without the placeholder is rejected


def test_the_beam_keeps_the_best_beam_width_prompts(tmp_path: Path) -> None:
    script = Script(sequence_editor(HALF, GOOD, LOST, "<prompt>NONE {{question}}</prompt>"))
    out = tmp_path / "out"
    result, _ = optimize(
        make_repo(tmp_path / "repo"),
        script,
        out,
        {"iterations": 1, "beam_width": 2, "candidates_per_prompt": 4},
    )
    state = json.loads((out / "qa" / "gradsum" / "state.json").read_text())["data"]
    by_id = {c.id: c for c in result.candidates}
    assert state["iteration"] == 1
    assert [by_id[i].text.split(":")[0] for i in state["beam"]] == ["GOOD", "HALF"]
    assert result.best.text.startswith("GOOD")
    # trajectory.json holds every candidate with scores and costs
    trajectory = json.loads((out / "qa" / "gradsum" / "trajectory.json").read_text())
    assert [c["id"] for c in trajectory["candidates"]] == [c.id for c in result.candidates]
    assert all(c["calls"] > 0 for c in trajectory["candidates"])


def test_an_interrupted_run_resumes_at_the_next_iteration_without_rescoring(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    out = tmp_path / "out"
    settings = {"iterations": 2, "beam_width": 1, "candidates_per_prompt": 1, "max_gradient_items": 2}

    def failing_editor(messages: list[dict[str, str]]) -> str:
        failing_editor.calls += 1  # type: ignore[attr-defined]
        if failing_editor.calls == 2:  # type: ignore[attr-defined]
            raise ModelError("the editor went away")
        return HALF

    failing_editor.calls = 0  # type: ignore[attr-defined]

    first = Script(failing_editor)
    with pytest.raises(ModelError):
        optimize(repo, first, out, settings)
    state = json.loads((out / "qa" / "gradsum" / "state.json").read_text())["data"]
    assert state["iteration"] == 1
    before = json.loads((out / "qa" / "gradsum" / "trajectory.json").read_text())
    assert [c["text"].split(":")[0] for c in before["candidates"]] == [
        "Answer the question.\n\nQuestion",
        "HALF",
    ]

    second = Script(sequence_editor(GOOD))
    result, _ = optimize(repo, second, out, settings)
    # Iteration 1 is not redone: one round of gradients (for HALF, the beam), no rescoring of c0000/c0001.
    assert second.count("optimizer", GRADIENT_SYSTEM) == 2 and second.count("editor") == 1
    assert [g.parent for g in result.gradients] == ["c0000", "c0001"]
    dev_questions = {f"What is {item.vars['question'].split()[2]}" for item in dev_split(repo)}
    rescored = [
        p
        for p in (last_user_text(m) for m in second.asked["task"])
        if not p.startswith("GOOD") and any(q in p for q in dev_questions)
    ]
    assert rescored == []
    assert [c.id for c in result.candidates] == ["c0000", "c0001", "c0002"]
    assert result.best.text.startswith("GOOD") and result.improved


def test_repair_placeholders_reattaches_the_lost_lines() -> None:
    from gradgate.optimizers.base import repair_placeholders

    original = "Answer carefully.\n\nQuestion: {{question}}\nContext: {{context}}\n"
    repaired, lines = repair_placeholders(original, "Think step by step. Use {{context}}.")
    assert lines == ["Question: {{question}}"]
    assert repaired == "Think step by step. Use {{context}}.\n\nQuestion: {{question}}\n"
    assert repair_placeholders(original, original) == (original, [])
