"""Portfolio: several methods search, the winner is chosen on dev, only the winner is confirmed on test; and
candidate hygiene: a model-written include is rejected as a candidate while the run goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gradgate.app.optimize_job import run_optimize_job
from gradgate.core.discovery import discover
from gradgate.core.suites import split_items
from gradgate.models.scripted import last_user_text
from tests.test_gradsum import GOOD, HALF, Script, config_for, make_repo, open_session, optimize, sequence_editor

PAPER = {"iterations": 1, "beam_width": 1, "candidates_per_prompt": 1, "mutations": 0, "halving": False}


class Recording(Script):
    """Records, for every task request, the item asked and the prompt's first line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_log: list[tuple[str, str]] = []

    def __call__(self, spec: Any, messages: list[dict[str, str]]) -> str:
        if spec.model.endswith("/task"):
            text = last_user_text(messages)
            self.task_log.append((text.split("What is ")[1].split("+")[0], text.splitlines()[0]))
        return super().__call__(spec, messages)


def test_the_winner_is_chosen_on_dev_and_only_it_is_confirmed_on_test(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")

    # gradsum's editor writes HALF (right on even items), gpo's writes GOOD (right on all)
    def editor(messages: list[dict[str, str]]) -> str:
        return HALF

    def optimizer(messages: list[dict[str, str]]) -> str:
        system = messages[0]["content"]
        if "gradient descent" in system:  # GPO's meta-prompt
            return GOOD
        from tests.test_gradsum import default_optimizer

        return default_optimizer(messages)

    script = Recording(editor, optimizer)
    gpo = {
        "steps": 1,
        "candidates_per_step": 1,
        "mutations": 0,
        "halving": False,
        "edit_budget_start": 60,
        "embedder": "tfidf",
        "retrieval": "recency",
    }
    session = open_session(repo, script, optimize={"gradsum": PAPER, "gpo": gpo})
    outcome = asyncio.run(
        run_optimize_job(
            session, methods=["gradsum", "gpo"], out_dir=tmp_path / "out", seed=0, write=False, open_pr=False, env={}
        )
    )
    gradsum, gpo_result = outcome.results
    assert gpo_result.best.dev_score == 1.0 > (gradsum.best.dev_score or 0.0)  # GOOD wins on dev
    assert gpo_result.improved and gpo_result.test_best is not None
    assert not gradsum.improved and gradsum.test_best is None and "chose gpo on dev" in gradsum.decision
    target = discover(repo, config_for())[0]
    test_ids = {i.id[1:] for i in split_items(target.suite.items, seed=0, train=0.5, dev=0.25).test}
    on_test = [(n, first) for n, first in script.task_log if n in test_ids]
    # the test split was read only by the confirmation: the original and the winner, each once per item
    assert sorted({first for _, first in on_test}) == ["Answer the question.", "GOOD: answer with the number only."]
    assert len(on_test) == 2 * len(test_ids)
    first_test = next(i for i, (n, _) in enumerate(script.task_log) if n in test_ids)
    assert all(n in test_ids for n, _ in script.task_log[first_test:])  # nothing searched after the test was read
    # the original was scored on dev once for both methods
    dev_ids = {i.id[1:] for i in split_items(target.suite.items, seed=0, train=0.5, dev=0.25).dev}
    assert sum(1 for n, first in script.task_log if n in dev_ids and first == "Answer the question.") == len(dev_ids)


def test_a_model_written_include_is_rejected_as_a_candidate_and_the_run_goes_on(tmp_path: Path) -> None:
    evil = "<prompt>{{> ../../../etc/passwd}}\nAnswer.\n\nQuestion: {{question}}</prompt>"
    settings = {**PAPER, "candidates_per_prompt": 2}
    result, _ = optimize(make_repo(tmp_path / "repo"), Script(sequence_editor(evil, GOOD)), tmp_path / "out", settings)
    rejected = [c for c in result.candidates if c.rejected]
    assert len(rejected) == 1 and "include" in (rejected[0].rejected or "") and "etc/passwd" in rejected[0].text
    assert result.improved and result.best.text.startswith("GOOD")  # the run went on and found the good one
    long = "<prompt>" + "word " * 3000 + "{{question}}</prompt>"
    result, _ = optimize(make_repo(tmp_path / "repo2"), Script(sequence_editor(long, GOOD)), tmp_path / "o2", settings)
    assert any("over the cap" in (c.rejected or "") for c in result.candidates) and result.improved
