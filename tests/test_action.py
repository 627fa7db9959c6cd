"""The container action's input mapping: every input reaches the CLI, bad inputs are named, secrets masked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gradgate.errors import UsageError
from gradgate.github.action_entry import (
    INPUT_NAMES,
    ActionInputs,
    parse_action_inputs,
    read_input,
    to_cli_args,
    to_cli_env,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "ghs_s3cr3tT0kenValue"
API_KEY = "sk" + "-test-0123456789abcdef"  # fake; built from parts so no token-shaped literal is in the repository


def inputs_env(**values: str) -> dict[str, str]:
    """Environment as GitHub sets it: INPUT_ + upper-cased id, dashes kept."""
    return {"INPUT_" + name.replace("_", "-").upper(): value for name, value in values.items()}


def parse(**values: str) -> ActionInputs:
    return parse_action_inputs(inputs_env(**values))


def error_of(**values: str) -> str:
    with pytest.raises(UsageError) as info:
        parse(**values)
    return info.value.message


def test_action_yml_declares_exactly_the_parsed_inputs() -> None:
    meta = yaml.safe_load((REPO_ROOT / "action.yml").read_text())
    assert list(meta["inputs"]) == list(INPUT_NAMES)
    assert meta["runs"] == {"using": "docker", "image": "Dockerfile"}
    assert set(meta["outputs"]) >= {"verdict", "report-path", "pr-number", "pr-url"}
    assert meta["inputs"]["github-token"]["default"] == "${{ github.token }}"


def test_read_input_keeps_dashes_and_accepts_underscores() -> None:
    assert read_input({"INPUT_BASE-REF": " main "}, "base-ref") == "main"
    assert read_input({"INPUT_BASE_REF": "main"}, "base-ref") == "main"
    assert read_input({}, "base-ref") == ""


def test_check_mode_maps_every_check_input() -> None:
    inputs = parse(
        mode="check",
        config="ci/gradgate.yaml",
        working_directory="sub",
        prompts="a, b\nc",
        base_ref="origin/main",
        head_ref="HEAD",
        task_model="openai/gpt-4o-mini",
        judge_model="openai/judge",
        fail_on_regression="false",
        comment="FALSE",
        out="reports",
    )
    assert to_cli_args(inputs) == [
        "check",
        "--base",
        "origin/main",
        "--head",
        "HEAD",
        "--repo",
        "sub",
        "--config",
        "ci/gradgate.yaml",
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--prompt",
        "c",
        "--model",
        "openai/gpt-4o-mini",
        "--judge-model",
        "openai/judge",
        "--no-fail-on-regression",
        "--no-comment",
        "--out",
        "reports",
    ]


def test_optimize_mode_maps_every_optimize_input() -> None:
    inputs = parse(
        mode="optimize",
        methods="gradsum,GPO greater,gpo",
        budget_calls="50",
        budget_tokens="20000",
        budget_usd="1.5",
        budget_seconds="600",
        seed="0",
        task_model="t",
        judge_model="j",
        optimizer_model="o",
        write="true",
        open_pr="true",
        prompts="example",
    )
    assert to_cli_args(inputs) == [
        "optimize",
        "--prompt",
        "example",
        "--model",
        "t",
        "--judge-model",
        "j",
        "--method",
        "gradsum",
        "--method",
        "gpo",
        "--method",
        "greater",
        "--optimizer-model",
        "o",
        "--budget-calls",
        "50",
        "--budget-tokens",
        "20000",
        "--budget-usd",
        "1.5",
        "--budget-seconds",
        "600",
        "--seed",
        "0",
        "--write",
        "--open-pr",
    ]


def test_defaults() -> None:
    check = parse(mode="", base_ref="main")
    assert check.mode == "check"
    assert to_cli_args(check) == ["check", "--base", "main"]
    optimize = parse(mode="optimize")
    assert to_cli_args(optimize) == ["optimize", "--method", "gradsum"]
    assert (optimize.fail_on_regression, optimize.comment, optimize.write, optimize.open_pr) == (
        True,
        True,
        False,
        False,
    )


def test_base_ref_falls_back_to_the_pull_request_event() -> None:
    event = {"pull_request": {"base": {"sha": "a" * 40, "ref": "main"}}}
    inputs = parse_action_inputs(inputs_env(mode="check"), event)
    assert inputs.base_ref == "a" * 40
    assert "base-ref" in error_of(mode="check")


def test_environment_for_the_cli() -> None:
    inputs = parse(
        mode="optimize",
        api_base="http://127.0.0.1:8000/v1",
        github_token=TOKEN,
        env=f"# provider keys\nOPENAI_API_KEY={API_KEY}\n\nEXTRA = a=b\n",
    )
    assert to_cli_env(inputs) == {
        "OPENAI_API_KEY": API_KEY,
        "EXTRA": "a=b",
        "GRADGATE_API_BASE": "http://127.0.0.1:8000/v1",
        "GITHUB_TOKEN": TOKEN,
    }
    assert TOKEN not in repr(inputs) and API_KEY not in repr(inputs)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"mode": "chek"}, 'mode must be "check" or "optimize"'),
        ({"mode": "check", "base_ref": "--upload-pack=x"}, "base-ref must be a git branch"),
        ({"mode": "check", "base_ref": "main..dev"}, "base-ref must be a git branch"),
        ({"mode": "check", "base_ref": "main", "head_ref": "a b"}, "head-ref must be a git branch"),
        ({"mode": "optimize", "methods": "gradsum,textgrad"}, "methods must list methods from"),
        ({"mode": "optimize", "budget_calls": "ten"}, "budget-calls must be a whole number >= 1"),
        ({"mode": "optimize", "budget_calls": "0"}, "budget-calls must be a whole number >= 1"),
        ({"mode": "optimize", "budget_tokens": "1.5"}, "budget-tokens must be a whole number"),
        ({"mode": "optimize", "budget_usd": "-1"}, "budget-usd must be a number > 0"),
        ({"mode": "optimize", "budget_usd": "nan"}, "budget-usd must be a number > 0"),
        ({"mode": "optimize", "budget_seconds": "inf"}, "budget-seconds must be a number > 0"),
        ({"mode": "optimize", "seed": "-3"}, "seed must be a whole number from 0 to 4294967295"),
        ({"mode": "optimize", "seed": str(2**40)}, "seed must be a whole number from 0 to 4294967295"),
        ({"mode": "check", "base_ref": "main", "fail_on_regression": "yes"}, 'fail-on-regression must be "true" or "false"'),
        ({"mode": "check", "base_ref": "main", "comment": "1"}, 'comment must be "true" or "false"'),
        ({"mode": "optimize", "open_pr": "on"}, 'open-pr must be "true" or "false"'),
        ({"mode": "optimize", "write": "no"}, 'write must be "true" or "false"'),
        ({"mode": "optimize", "api_base": "127.0.0.1:8000"}, "api-base must be an http(s) URL"),
        ({"mode": "optimize", "api_base": "http://:8000"}, "api-base must be an http(s) URL with a host"),
        ({"mode": "optimize", "api_base": "http://127.0.0.1:99999/v1"}, "api-base must be an http(s) URL"),
        ({"mode": "optimize", "api_base": "ftp://127.0.0.1/v1"}, "api-base must be an http(s) URL"),
        ({"mode": "optimize", "prompts": "ok,--evil"}, "prompts must list prompt ids"),
        ({"mode": "optimize", "config": "--help"}, "config must not start with '-'"),
        ({"mode": "optimize", "task_model": "-x"}, "task-model must not start with '-'"),
        ({"mode": "optimize", "env": "NOT A PAIR"}, "env line 1 must look like KEY=VALUE"),
    ],
)
def test_bad_inputs_name_the_input_and_a_valid_value(values: dict[str, str], expected: str) -> None:
    assert expected in error_of(**values)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost:11434/v1", "http://[::1]:8000"])
def test_a_loopback_api_base_is_accepted(url: str) -> None:
    assert to_cli_env(parse(mode="optimize", api_base=url))["GRADGATE_API_BASE"] == url


def test_every_bad_input_is_reported_at_once() -> None:
    message = error_of(mode="optimize", budget_calls="x", seed="y", open_pr="maybe")
    assert "budget-calls" in message and "seed" in message and "open-pr" in message


def test_env_errors_do_not_echo_the_line() -> None:
    message = error_of(mode="optimize", env=f"OPENAI API KEY {API_KEY}")
    assert API_KEY not in message


@pytest.mark.parametrize(
    "key",
    [
        "GITHUB_OUTPUT",
        "GITHUB_API_URL",
        "GITHUB_TOKEN",
        "github_step_summary",
        "RUNNER_TEMP",
        "INPUT_MODE",
        "ACTIONS_RUNTIME_TOKEN",
    ],
)
def test_env_may_not_set_the_runners_variables(key: str) -> None:
    message = error_of(mode="optimize", env=f"OPENAI_API_KEY={API_KEY}\n{key}=https://evil.example/{API_KEY}")
    assert f"env line 2 sets {key}," in message
    assert "GITHUB_" in message and "RUNNER_" in message and "github-token input" in message  # the hint
    assert API_KEY not in message


def test_env_may_set_lookalike_names() -> None:
    inputs = parse(mode="optimize", env="MY_GITHUB_URL=x\nGITHUBX=y\nOPENAI_API_KEY=z")
    assert to_cli_env(inputs) == {"MY_GITHUB_URL": "x", "GITHUBX": "y", "OPENAI_API_KEY": "z"}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace with a subdirectory, a link inside it pointing out, and one pointing in."""
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "ci").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "out-link").symlink_to(tmp_path / "elsewhere")
    (root / "sub" / "cfg-link").symlink_to(tmp_path / "elsewhere")
    (root / "inner-link").symlink_to(root / "ci")
    return root


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"working_directory": "../other"}, "working-directory"),
        ({"working_directory": "sub/../.."}, "working-directory"),
        ({"config": "/etc/gradgate.yaml"}, "config"),
        ({"config": "../gradgate.yaml"}, "config"),
        # From the working directory it stays inside, from the workspace (where the CLI runs) it does not.
        ({"working_directory": "sub", "config": "../gradgate.yaml"}, "config"),
        ({"config": "sub/cfg-link/gradgate.yaml"}, "config"),
        ({"working_directory": "sub", "config": "cfg-link/gradgate.yaml"}, "config"),
        ({"out": "reports/../../escape"}, "out"),
        ({"out": "out-link"}, "out"),
        ({"out": "out-link/reports"}, "out"),
        ({"out": "/tmp"}, "out"),
    ],
)
def test_path_inputs_must_stay_inside_the_workspace(workspace: Path, values: dict[str, str], name: str) -> None:
    env = {**inputs_env(mode="optimize", **values), "GITHUB_WORKSPACE": str(workspace)}
    with pytest.raises(UsageError) as info:
        parse_action_inputs(env)
    assert f"{name} must stay inside the workspace {workspace}" in info.value.message
    assert info.value.hint


def test_path_inputs_inside_the_workspace_are_kept(workspace: Path) -> None:
    values = {"working_directory": "sub", "config": str(workspace / "ci" / "gradgate.yaml"), "out": "inner-link/reports"}
    inputs = parse_action_inputs(inputs_env(mode="optimize", **values), workspace=workspace)
    assert (inputs.working_directory, inputs.config, inputs.out) == ("sub", values["config"], "inner-link/reports")
    again = parse_action_inputs(inputs_env(mode="optimize", config="sub/../ci/g.yaml", out="."), workspace=workspace)
    assert (again.config, again.out) == ("sub/../ci/g.yaml", ".")


def test_inputs_meaningless_in_the_mode_are_reported() -> None:
    check = parse(mode="check", base_ref="main", budget_usd="2", open_pr="true")
    assert check.ignored == ("budget-usd", "open-pr")
    optimize = parse(mode="optimize", base_ref="main", fail_on_regression="false")
    assert optimize.ignored == ("fail-on-regression",)
    assert parse(mode="check", base_ref="main", open_pr="false").ignored == ()


def _run_entrypoint(env: dict[str, str], tmp_path: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INPUT_")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), base.get("PYTHONPATH", "")])
    base["HOME"] = str(tmp_path)  # git config --global lands here, not in the real home
    base.update({"HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "GITHUB_ACTIONS": "true"})
    return subprocess.run(
        [sys.executable, "-m", "gradgate.github.action_entry"],
        env={**base, **env},
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_entrypoint_masks_secrets_before_anything_else_and_exits_2_on_bad_input(tmp_path: Path) -> None:
    env = inputs_env(mode="optimize", github_token=TOKEN, env=f"OPENAI_API_KEY={API_KEY}", budget_usd="lots")
    proc = _run_entrypoint(env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == [f"::add-mask::{TOKEN}", f"::add-mask::{API_KEY}"]
    assert any(line.startswith("::error") and "budget-usd" in line for line in lines)
    rest = "\n".join(lines[2:]) + proc.stderr
    assert TOKEN not in rest and API_KEY not in rest
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"env": f"GITHUB_API_URL=https://evil.example\nOPENAI_API_KEY={API_KEY}"}, "env line 1 sets GITHUB_API_URL"),
        ({"out": "../escape"}, "out must stay inside the workspace"),
    ],
)
def test_entrypoint_refuses_runner_variables_and_escaping_paths(tmp_path: Path, values: dict[str, str], expected: str) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = {**inputs_env(mode="optimize", github_token=TOKEN, **values), "GITHUB_WORKSPACE": str(workspace)}
    proc = _run_entrypoint(env, tmp_path, cwd=workspace)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "hint" in proc.stderr.lower()
    assert "running: gradgate" not in proc.stderr
    rest = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("::add-mask::")) + proc.stderr
    assert TOKEN not in rest and API_KEY not in rest


def test_entrypoint_refuses_an_api_base_without_a_host(tmp_path: Path) -> None:
    proc = _run_entrypoint(inputs_env(mode="optimize", github_token=TOKEN, api_base="http://:8000"), tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "api-base must be an http(s) URL with a host" in proc.stderr and "'http://:8000'" in proc.stderr
    assert any(
        line.startswith("::error title=gradgate action inputs::") and "api-base" in line for line in proc.stdout.splitlines()
    )
    assert "Traceback" not in proc.stderr and "running: gradgate" not in proc.stderr


def test_entrypoint_outside_actions_prints_no_secret(tmp_path: Path) -> None:
    env = {**inputs_env(mode="chek", github_token=TOKEN), "GITHUB_ACTIONS": ""}
    proc = _run_entrypoint(env, tmp_path)
    assert proc.returncode == 2
    assert "mode must be" in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert "::" not in proc.stdout


def test_entrypoint_marks_the_workspace_safe_and_runs_the_cli(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    git = ["git", "-C", str(workspace), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (workspace / "notes.txt").write_text("base\n")
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"base": {"sha": sha}}}))
    env = {
        **inputs_env(mode="check", github_token=TOKEN, config="missing.yaml"),
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_EVENT_PATH": str(event),
    }
    proc = _run_entrypoint(env, tmp_path, cwd=workspace)
    assert TOKEN not in "\n".join(proc.stdout.splitlines()[1:]) + proc.stderr
    safe = subprocess.run(
        ["git", "config", "--global", "--get-all", "safe.directory"],
        env={"HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert safe.stdout.split() == [str(workspace)]
    lines = (proc.stdout + proc.stderr).splitlines()
    output = "\n".join(line for line in lines if "running: gradgate" not in line)
    # The CLI itself ran and rejected the missing config file: a usage error, not a crash of the entrypoint.
    assert proc.returncode == 2, output
    assert "missing.yaml" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "values",
    [
        {
            "mode": "check",
            "config": "c.yaml",
            "working_directory": "sub",
            "prompts": "a,b",
            "base_ref": "main",
            "head_ref": "HEAD",
            "task_model": "t",
            "judge_model": "j",
            "fail_on_regression": "false",
            "comment": "false",
            "out": "o",
        },
        {
            "mode": "optimize",
            "methods": "gradsum,gpo,greater",
            "budget_calls": "5",
            "budget_tokens": "100",
            "budget_usd": "0.5",
            "budget_seconds": "60",
            "seed": "0",
            "optimizer_model": "o",
            "write": "true",
            "open_pr": "true",
            "prompts": "a",
            "task_model": "t",
            "judge_model": "j",
            "out": "o",
        },
    ],
)
def test_generated_command_lines_parse_with_the_real_cli(values: dict[str, str]) -> None:
    from gradgate import cli

    args = to_cli_args(parse(**values))
    command = cli.main.commands.get(args[0])
    assert command is not None, f"the action generates `{args[0]}`, which the CLI does not have"
    # make_context parses and validates every option without running the command.
    context = command.make_context(args[0], args[1:])
    assert context.params["out_dir"] == "o"
    assert context.params["prompt_ids"] == tuple(values["prompts"].split(","))
