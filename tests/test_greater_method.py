"""GReaTer behind the shared optimizer interface: settings, refusals, and one real run through the runner."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gradgate.core.config import load_config
from gradgate.core.discovery import discover
from gradgate.errors import ConfigError
from gradgate.models.scripted import ScriptedBackend
from gradgate.models.session import Session
from gradgate.optimizers.greater.method import Greater, _greater_config
from gradgate.optimizers.registry import method_class

BOOL_ROWS = [
    ("True and False", "False"),
    ("not False", "True"),
    ("True or False", "True"),
    ("False or False", "False"),
    ("not True and True", "False"),
    ("True and True", "True"),
    ("False and True", "False"),
    ("not False or False", "True"),
    ("True or True", "True"),
    ("not True", "False"),
    ("False or True", "True"),
    ("not True or False", "False"),
]


def bool_repo(
    root: Path, greater: str = "{steps: 1, max_items: 4, max_new_tokens: 12, num_intersections: 2, intersection_size: 2}"
) -> Path:
    (root / "prompts").mkdir(parents=True)
    (root / "evals").mkdir()
    (root / "prompts" / "bool.md").write_text("---\nid: bool\n---\nEvaluate the boolean expression.\nExpression: {{expr}}\n")
    rows = "".join(json.dumps({"id": f"e{i}", "expr": e, "expected": a}) + "\n" for i, (e, a) in enumerate(BOOL_ROWS))
    (root / "evals" / "bool.jsonl").write_text(rows)
    (root / "gradgate.yaml").write_text(f"metrics: [normalized]\nmodels: {{concurrency: 8}}\noptimize:\n  greater: {greater}\n")
    return root


def test_greater_is_registered_and_needs_gold_answers() -> None:
    assert method_class("greater") is Greater and Greater.needs_expected


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown GReaTer setting"):
        _greater_config({"topk": 3}, seed=0)
    assert _greater_config({"top_k": 3}, seed=5).seed == 5


def test_an_api_task_model_is_refused_with_a_hint(tmp_path: Path) -> None:
    from gradgate.optimizers.runner import run_optimization

    repo = bool_repo(tmp_path)
    config, _ = load_config(repo)
    config = config.model_copy(
        update={
            "models": config.models.model_copy(
                update={"task": config.models.task.model_copy(update={"model": "openai/gpt-4o-mini"})}
            )
        }
    )
    session = Session.open(repo, config, backend=ScriptedBackend(lambda s, m: "True"))
    [target] = discover(repo, config)
    with pytest.raises(ConfigError, match=r"optimize\.greater\.model"):
        asyncio.run(run_optimization(session, target, "greater", out_dir=tmp_path / "out", seed=0))


@pytest.mark.slow
def test_one_real_greater_run_through_the_runner(tmp_path: Path) -> None:
    from gradgate.optimizers.runner import run_optimization

    repo = bool_repo(tmp_path / "repo")
    config, _ = load_config(repo)
    session = Session.open(repo, config)
    [target] = discover(repo, config)
    result = asyncio.run(run_optimization(session, target, "greater", out_dir=tmp_path / "out", seed=0))
    trajectory = json.loads(next((tmp_path / "out").rglob("trajectory.json")).read_text())
    assert trajectory["method"] == "greater" and trajectory["candidates"][0]["origin"] == "initial"
    assert len(trajectory["gradients"]) == 1  # one GReaTer step, with its candidate gradients
    assert "position 0" in trajectory["gradients"][0]["summary"]
    assert session.budget.usage["optimizer"].calls > 0  # forward/backward passes are charged to the budget
    assert result.best.text.count("{{expr}}") == 1
