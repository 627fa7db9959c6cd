"""The command line: bad input gives a clear message and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import script_sessions


def gradgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """In-process (fast); `test_the_console_script_runs` covers the real entry point."""
    from click.testing import CliRunner

    from gradgate.cli import main

    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_the_console_script_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gradgate", "eval", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert_clean_failure(result, 2, "no prompt files")


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_schema_prints_valid_json() -> None:
    result = gradgate("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "gradgate.yaml"


@pytest.mark.parametrize(
    ("files", "args", "needles"),
    [
        ({"gradgate.yaml": "models: [1, 2\n"}, [], ["gradgate.yaml", "not valid YAML"]),
        ({"gradgate.yaml": "budjet: {}\n"}, [], ["budjet", "hint"]),
        ({"prompts/a.md": "Hi {{name}}", "evals/a.yaml": "items: [{vars: {other: 1}}]"}, [], ["name", "have no value"]),
        ({"prompts/a.md": "Hi {{name}}", "evals/a.yaml": "metrics: [bleu]\nitems: [{vars: {name: x}}]"}, [], ["unknown metric"]),
        ({"prompts/a.md": "Hi {{name}}", "evals/a.jsonl": "{oops\n"}, [], ["evals/a.jsonl", "line 1"]),
        ({"prompts/a.md": "---\nsuite: ../../etc/passwd\n---\nHi"}, [], ["outside the repository"]),
        (
            {"prompts/a.md": "Hi {{name}}", "evals/a.yaml": "items: [{vars: {name: x}, expected: x}]"},
            ["--model", "nonexistent-provider-model"],
            ["unknown model"],
        ),
        (
            {"prompts/a.md": "Hi {{name}}", "evals/a.yaml": "items: [{vars: {name: x}, expected: x}]"},
            ["--model", "local/not-embedded"],
            ["unknown embedded model", "local/smollm2-135m-instruct"],
        ),
        ({}, ["--config", "missing.yaml"], ["does not exist"]),
        ({}, [], ["no prompt files"]),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path: Path, files: dict[str, str], args: list[str], needles: list[str]) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = gradgate("eval", "--repo", str(tmp_path), "--out", str(tmp_path / "out"), *args)
    assert_clean_failure(result, 2, *needles)


def test_api_keys_never_reach_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that passes validation, with a scripted model whose every reply echoes the credentials: none of
    them may reach stdout, stderr, results.json, report.md or the response cache."""
    from gradgate.models.scripted import ScriptedBackend

    named = "canary-named-" + "7" * 20  # an unremarkable variable name: only gradgate.yaml says it is a key
    by_name = "canary-by-name-" + "3" * 20  # a *_TOKEN variable
    shaped = "ghp_" + "Zq4" * 12  # a GitHub token shape, from nowhere in particular
    canaries = (named, by_name, shaped)
    monkeypatch.setenv("GG_PROVIDER_CRED", named)
    monkeypatch.setenv("GG_DEPLOY_TOKEN", by_name)
    (tmp_path / "gradgate.yaml").write_text(
        "models:\n  task: {model: openai/gpt-4o-mini, api_key_env: GG_PROVIDER_CRED}\n  judge: openai/gpt-4o-mini\n"
    )
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "a.md").write_text("Hi {{name}}")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "a.yaml").write_text("items: [{vars: {name: Ada}, expected: hello}, {vars: {name: Bo}, expected: hi}]")
    backend = ScriptedBackend(lambda spec, messages: f"key {named}, token {by_name}, pat {shaped}")
    script_sessions(monkeypatch, backend)

    result = gradgate("-vv", "eval", "--repo", str(tmp_path), "--out", str(tmp_path / "out"))

    assert backend.calls, "the run must reach the model, or this test proves nothing"
    assert result.returncode == 0, result.stderr
    written = [p.read_text() for p in [*(tmp_path / "out").iterdir(), *(tmp_path / ".gradgate").rglob("*")] if p.is_file()]
    assert any("***" in text for text in written)
    for canary in canaries:
        assert canary not in result.stdout + result.stderr
        assert all(canary not in text for text in written), canary


def test_effective_config_applies_env_then_flags_then_budget_key_by_key() -> None:
    from gradgate.app.sessions import BudgetOverride, effective_config
    from gradgate.core.config import parse_config

    config = parse_config({"models": {"task": "a/one", "judge": "a/judge"}, "budget": {"max_calls": 9, "max_usd": 1.5}}, "x")
    env = {"GRADGATE_TASK_MODEL": "env/task", "GRADGATE_JUDGE_MODEL": "env/judge"}
    out = effective_config(config, env, {"task": "flag/task", "judge": None}, BudgetOverride(calls=4))
    assert out.models.for_role("task").model == "flag/task"  # the flag beats the environment
    assert out.models.for_role("judge").model == "env/judge"  # no flag: the environment beats the file
    assert (out.budget.max_calls, out.budget.max_usd) == (4, 1.5)  # only the limit given on the command line changes
    assert effective_config(config, {}, {}).budget == config.budget


def test_a_relative_config_is_read_from_the_repository_in_eval_as_in_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradgate.app.sessions import open_session

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ci.yaml").write_text("budget: {max_calls: 7}\n")
    monkeypatch.chdir(tmp_path)  # the current directory holds no ci.yaml
    session = open_session(repo, Path("ci.yaml"), env={}, models={})
    assert session.config.budget.max_calls == 7
