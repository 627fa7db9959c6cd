"""Where gradgate writes, and what it reads back, when the repository or the workflow is hostile.

Found by an audit of the command line and the action entry: a committed `gradgate-out` symlink, output and config
paths into `.git/`, a deeply nested event file, secrets in action input errors, a huge shard count, zero budgets,
"`:id:`" shown as an emoji, damaged resume files. Each case exits 2 (or is read as absent) before any model call.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gradgate.core.files import atomic_write_text
from tests.test_hostile_inputs import GIT_CANARY, GOOD_PROMPT, GOOD_SUITE, run_cli, scripted, write

__all__ = ["scripted"]  # the fixture, shared with test_hostile_inputs


def small_repo(root: Path) -> Path:
    write(root, "prompts/a.md", GOOD_PROMPT)
    write(root, "evals/a.yaml", GOOD_SUITE)
    write(root, ".git/config", GIT_CANARY)
    return root


@pytest.mark.parametrize("link_to", [".git", "../outside"])
def test_a_committed_out_symlink_cannot_send_reports_elsewhere(
    tmp_path: Path, scripted: list[Any], monkeypatch: pytest.MonkeyPatch, link_to: str
) -> None:
    repo = small_repo(tmp_path / "repo")
    (tmp_path / "outside").mkdir()
    (repo / "gradgate-out").symlink_to(link_to)
    monkeypatch.chdir(repo)  # the default --out is relative to the working directory, as in the action
    code, output = run_cli("eval", "--repo", str(repo))
    assert code == 2 and "--out" in output and "Traceback" not in output, output
    assert ".git" in output if link_to == ".git" else "symlink" in output
    assert scripted == []
    assert not (repo / ".git" / "results.json").exists() and not list((tmp_path / "outside").iterdir())


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--out", "{repo}/.git/gg"),
        ("--junit", "{repo}/.git/hooks/post-checkout"),
        ("--junit", "{repo}/prompts/a.md/x.xml"),  # a file on the way: found before scoring, not after
        ("--junit", "{repo}/prompts"),  # a directory
        ("--config", "{repo}/.git/config"),
    ],
)
def test_output_and_config_paths_are_checked_before_any_call(
    tmp_path: Path, scripted: list[Any], option: str, value: str
) -> None:
    repo = small_repo(tmp_path)
    extra = [] if option == "--out" else ["--out", str(tmp_path / "out")]
    code, output = run_cli("eval", "--repo", str(repo), *extra, option, value.format(repo=repo))
    assert code == 2, output
    assert "Traceback" not in output and "internal error" not in output and GIT_CANARY not in output
    assert scripted == []
    assert not (repo / ".git" / "gg").exists() and not (repo / ".git" / "hooks").exists()


def test_reports_may_still_go_outside_the_repository_when_named_so(tmp_path: Path, scripted: list[Any]) -> None:
    repo = small_repo(tmp_path / "repo")
    code, output = run_cli("eval", "--repo", str(repo), "--out", str(tmp_path / "reports"), "--junit", str(tmp_path / "j.xml"))
    assert code in (0, 1), output
    assert (tmp_path / "reports" / "results.json").is_file() and (tmp_path / "j.xml").is_file()


def test_init_refuses_git_and_symlinks_out(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    code, output = run_cli("init", str(repo / ".git"))
    assert code == 2 and ".git" in output, output
    (tmp_path / "elsewhere").mkdir()
    (repo / "prompts").symlink_to(tmp_path / "elsewhere")
    code, output = run_cli("init", str(repo))
    assert code == 2 and "outside" in output, output
    assert not list((tmp_path / "elsewhere").iterdir()) and not (repo / "gradgate.yaml").exists()


@pytest.mark.parametrize("shard", ["1/99999999999999999999999999", "1/257", "1/" + "9" * 5000])
def test_a_huge_shard_count_is_a_usage_error(tmp_path: Path, scripted: list[Any], shard: str) -> None:
    repo = small_repo(tmp_path)
    code, output = run_cli("eval", "--repo", str(repo), "--out", str(tmp_path / "out"), "--shard", shard)
    assert code == 2 and "--shard" in output and "internal error" not in output, output


@pytest.mark.parametrize(
    ("config", "args"),
    [
        ("budget: {max_calls: 0}", []),
        ("budget: {max_usd: 0}", []),
        ("optimize: {seed: 18446744073709551616}", []),
        ("", ["--budget-usd", "0"]),
        ("", ["--seed", "18446744073709551616"]),
        ("", ["--seed", "-1"]),
    ],
)
def test_zero_budgets_and_out_of_range_seeds_are_refused(
    tmp_path: Path, scripted: list[Any], config: str, args: list[str]
) -> None:
    repo = small_repo(tmp_path)
    if config:
        write(repo, "gradgate.yaml", config)
    code, output = run_cli("optimize", "--repo", str(repo), "--out", str(tmp_path / "out"), *args)
    assert code == 2 and "Traceback" not in output, output
    assert scripted == []


def test_a_key_named_like_an_emoji_code_is_shown_as_written(tmp_path: Path, scripted: list[Any]) -> None:
    repo = small_repo(tmp_path)
    write(repo, "prompts/a.md", "---\nid: 1.5\n---\nHi {{name}}")
    code, output = run_cli("eval", "--repo", str(repo), "--out", str(tmp_path / "out"))
    assert code == 2 and "prompts/a.md:id" in output, output  # rich would print ":id:" as an emoji


def test_atomic_writes_leave_an_existing_file_readable(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    path.write_text("old")
    path.chmod(0o600)
    atomic_write_text(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "new"
    script = tmp_path / "run.sh"
    script.write_text("old")
    script.chmod(0o700)
    atomic_write_text(script, "new")
    assert stat.S_IMODE(script.stat().st_mode) == 0o744  # the executable bit is kept


def _action(tmp_path: Path, **inputs: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))}
    env.update({"GITHUB_WORKSPACE": str(tmp_path), "GITHUB_ACTIONS": "true", **inputs})
    return subprocess.run(
        [sys.executable, "-m", "gradgate.github.action_entry"], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_action_masks_secrets_in_input_errors(tmp_path: Path) -> None:
    result = _action(tmp_path, INPUT_API_BASE="https://user:hunter2pass@host/v1 x", INPUT_MODE="eval")
    assert result.returncode == 2, result.stderr
    assert "hunter2pass" not in result.stdout + result.stderr and "api-base" in result.stdout + result.stderr
    key = "sk-" + "AUDITKEY987654321abc"
    result = _action(tmp_path, INPUT_TASK_MODEL="-" + key, INPUT_MODE="eval")
    assert result.returncode == 2 and key not in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_deeply_nested_event_file_is_read_as_no_event(tmp_path: Path) -> None:
    from gradgate.github.context import read_event

    event = tmp_path / "event.json"
    event.write_text("[" * 200_000)
    assert read_event(str(event)) == {}
    event.write_text('{"pull_request":' * 3000)
    assert read_event(str(event)) == {}


@pytest.mark.parametrize(
    "text",
    [b"\xff\xfe", b"[" * 100_000, b'{"version": 1, "method": "gradsum", "prompt_id": "a", "candidates": [{"x": 1}]}', b"[]"],
)
def test_damaged_resume_files_start_afresh(tmp_path: Path, text: bytes) -> None:
    from gradgate.optimizers.base import TRAJECTORY_VERSION, RunState, Trajectory

    path = tmp_path / "trajectory.json"
    path.write_bytes(text.replace(b'"version": 1', f'"version": {json.dumps(TRAJECTORY_VERSION)}'.encode()))
    assert Trajectory.load(path, "gradsum", "a").candidates == []
    state = tmp_path / "state.json"
    state.write_bytes(text)
    assert RunState.load(state, "fp").resumed is False


def test_a_candidate_with_broken_demonstration_markers_is_screened_out() -> None:
    from gradgate.optimizers.hygiene import screen

    original = "Answer.\n\n<!-- gradgate:demos -->\nInput: a\nAnswer: b\n<!-- /gradgate:demos -->\n\n{{input}}\n"
    assert screen(original, original.replace("Answer.", "Answer briefly.")) is None
    reason = screen(original, original + "<!-- gradgate:demos -->\n")
    assert reason is not None and reason.startswith("demonstrations markers")


@pytest.mark.parametrize(
    ("scoring", "needles"),
    [
        ("{mode: loglik, options: [x, x]}", ["evals/a.yaml", "options", "twice"]),
        ("{mode: loglik, options: ['', x]}", ["evals/a.yaml", "options", "blank"]),
        ("{mode: loglik, options: [y, z]}", ["evals/a.yaml:items[0]", "expected 'x'"]),  # no option can ever pass
    ],
)
def test_loglik_options_that_cannot_score_are_refused(
    tmp_path: Path, scripted: list[Any], scoring: str, needles: list[str]
) -> None:
    repo = small_repo(tmp_path)
    write(repo, "evals/a.yaml", f"scoring: {scoring}\n{GOOD_SUITE}")
    code, output = run_cli("eval", "--repo", str(repo), "--out", str(tmp_path / "out"))
    assert code == 2 and all(n in output for n in needles), output
    assert scripted == []


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("gradgate.yaml", "metrics: [exact]\nmetrics: [contains]\n", "gradgate.yaml"),
        ("prompts/a.md", "---\nsuite: evals/a.yaml\nsuite: evals/b.yaml\n---\nHi {{name}}", "prompts/a.md"),
        ("evals/a.yaml", "items: [{vars: {name: x, name: y}, expected: x}]", "evals/a.yaml"),
        ("evals/a.jsonl", '{"name": "x", "name": "y"}\n', "evals/a.jsonl"),
        ("evals/a.csv", "name,name\nx,y\n", "evals/a.csv"),
    ],
)
def test_a_key_written_twice_is_refused(tmp_path: Path, scripted: list[Any], name: str, text: str, needle: str) -> None:
    repo = small_repo(tmp_path)
    if name.startswith("evals/"):
        (repo / "evals" / "a.yaml").unlink()
    write(repo, name, text)
    code, output = run_cli("eval", "--repo", str(repo), "--out", str(tmp_path / "out"))
    assert code == 2 and needle in output and "twice" in output, output
    assert scripted == []


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"gradgate.yaml": "models: {task: nope/xyz}"}, "models.task: unknown model 'nope/xyz'"),
        ({"prompts/a.md": "---\nsuite: evals/missing.yaml\n---\nHi {{name}}"}, "prompts/a.md:suite"),
    ],
)
def test_errors_name_the_key_that_holds_the_bad_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], needle: str
) -> None:
    from gradgate.models.scripted import ScriptedBackend
    from tests.conftest import script_sessions

    backend = ScriptedBackend(lambda spec, messages: "x", unknown_models=("nope/xyz",))
    script_sessions(monkeypatch, backend)
    repo = small_repo(tmp_path)
    for name, text in files.items():
        write(repo, name, text)
    code, output = run_cli("eval", "--repo", str(repo), "--out", str(tmp_path / "out"))
    assert code == 2 and needle in output, output
    assert backend.calls == []


@pytest.mark.parametrize("inside", ["Input: {{name}}", "{{> part.md}}"])
def test_a_variable_or_include_inside_the_demonstrations_slot_is_refused(
    tmp_path: Path, scripted: list[Any], inside: str
) -> None:
    repo = small_repo(tmp_path)
    write(repo, "prompts/part.md", "shared text")
    body = (
        f"---\nid: a\n---\nAnswer.\n\n<!-- gradgate:demos -->\nExamples:\n{inside}\n<!-- /gradgate:demos -->\n\nHi {{{{name}}}}\n"
    )
    write(repo, "prompts/a.md", body)
    code, output = run_cli("eval", "--repo", str(repo), "--out", str(tmp_path / "out"), "--prompt", "a")
    assert code == 2 and "prompts/a.md:8" in output and "slot" in output, output
    assert scripted == []
