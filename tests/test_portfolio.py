"""Portfolio: several methods search, the winner is chosen on dev, only the winner is confirmed on test; and
candidate hygiene: a model-written include is rejected as a candidate while the run goes on."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from gradgate.app.optimize_job import run_optimize_job
from gradgate.core.config import parse_config
from gradgate.core.demos import slot_content
from gradgate.core.discovery import discover
from gradgate.core.suites import split_items
from gradgate.models.scripted import last_user_text
from gradgate.models.session import Session
from gradgate.optimizers.demos.prompts import parse_demos
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


@pytest.mark.slow
def test_a_real_portfolio_on_the_embedded_model(tmp_path: Path) -> None:
    """demos and GRAD-SUM (mutations, halving, hygiene) on the embedded 135M model, as one portfolio: the run must
    finish within its budget, bootstrap only correct training answers, and confirm only the dev winner."""
    if os.environ.get("GRADGATE_SKIP_SLOW") == "1":
        pytest.skip("GRADGATE_SKIP_SLOW=1")
    repo = tmp_path / "repo"
    (repo / "prompts").mkdir(parents=True)
    (repo / "evals").mkdir()
    (repo / "prompts" / "logic.md").write_text(
        "---\nid: logic\n---\nEvaluate the expression.\n\nExpression: {{expr}}\n", encoding="utf-8"
    )
    values = [(a, b) for a in (True, False) for b in (True, False)]
    rows = [(f"{'not ' if i % 3 == 0 else ''}{a} {'and' if i % 2 else 'or'} {b}", i) for i, (a, b) in enumerate(values * 5)]
    items = "".join(f"  - {{id: e{i}, vars: {{expr: '{expr}'}}, expected: '{eval(expr)}'}}\n" for expr, i in rows)
    (repo / "evals" / "logic.yaml").write_text(
        'description: Evaluate a Boolean expression.\nmetrics: [exact]\nscoring: {mode: loglik, options: ["True", '
        '"False"]}\nitems:\n' + items,
        encoding="utf-8",
    )
    model = "local/smollm2-135m-instruct"
    config = parse_config(
        {
            "models": {"task": model, "judge": model, "optimizer": {"model": model, "max_tokens": 48}},
            "budget": {"max_calls": 90, "max_seconds": 300},
            "optimize": {
                "gradsum": {
                    "iterations": 1,
                    "beam_width": 1,
                    "candidates_per_prompt": 1,
                    "train_batch": 4,
                    "max_gradient_items": 2,
                    "gradient_max_tokens": 32,
                    "edit_max_tokens": 48,
                },
                "demos": {"max_demos": 2, "candidate_sets": 4, "bootstrap_items": 8},
            },
        },
        "test",
    )
    session = Session.open(repo, config, roles=("task", "judge", "optimizer", "editor"))
    outcome = asyncio.run(
        run_optimize_job(
            session, methods=["demos", "gradsum"], out_dir=tmp_path / "out", seed=0, write=False, open_pr=False, env={}
        )
    )
    assert outcome.exit_code == 0 and session.budget.calls <= 90
    demos, gradsum = outcome.results
    confirmed = [r for r in outcome.results if r.test_original is not None or "no candidate" in r.decision]
    assert len(confirmed) == 1  # only the dev winner reached the confirmation
    train = {i.id for i in split_items(discover(repo, config)[0].suite.items, seed=0, train=0.5, dev=0.25).train}
    expected = {i.id: i.expected for i in discover(repo, config)[0].suite.items}
    bootstrapped = [c for c in demos.candidates if c.origin == "demos"]
    assert bootstrapped
    for candidate in bootstrapped:
        shown = (candidate.note or "").split(";")[0].removeprefix("demos: ").split(", ")
        assert set(shown) <= train and "<!-- gradgate:demos -->" in candidate.text
        # only answers the model got right are shown, in the order the note lists their items
        answers = [answer for _, answer in parse_demos(slot_content(candidate.text))]
        assert answers == [expected[i] for i in shown]
    assert any(c.origin == "mutation" for c in gradsum.candidates)
