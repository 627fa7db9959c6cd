"""gradgate init: writes a parseable starter setup and never overwrites."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gradgate.errors import ConfigError
from gradgate.scaffold import TEMPLATES, init_repository, template_text

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED = [
    "gradgate.yaml",
    "prompts/example.md",
    "evals/example.yaml",
    ".github/workflows/gradgate-check.yml",
]


def _front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def test_init_writes_every_file(tmp_path: Path) -> None:
    scaffold = init_repository(tmp_path)
    written = scaffold.created
    assert [p.relative_to(tmp_path).as_posix() for p in written] == EXPECTED
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert scaffold.gitignore == f"created {tmp_path / '.gitignore'} (.gradgate/, gradgate-out/)"
    assert (tmp_path / ".gitignore").read_text().splitlines()[1:] == [".gradgate/", "gradgate-out/"]


def test_init_adds_only_the_missing_ignore_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules\n/.gradgate")  # one of the two, no final newline
    scaffold = init_repository(tmp_path)
    assert scaffold.gitignore == f"added gradgate-out/ to {tmp_path / '.gitignore'}"
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["node_modules", "/.gradgate"] and lines[3:] == ["gradgate-out/"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".gitignore").write_text(".gradgate/\ngradgate-out\n")
    assert init_repository(tmp_path / "other").gitignore is None  # nothing missing: left as it was
    assert (tmp_path / "other" / ".gitignore").read_text() == ".gradgate/\ngradgate-out\n"
    (tmp_path / "third" / ".gitignore").mkdir(parents=True)
    assert "add .gradgate/, gradgate-out/ to your ignore rules by hand" in (init_repository(tmp_path / "third").gitignore or "")


def test_a_symlinked_ignore_file_inside_the_repository_is_appended_to_through_the_link(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "ignore-rules").write_text("node_modules\n")
    (tmp_path / ".gitignore").symlink_to(Path("shared") / "ignore-rules")
    scaffold = init_repository(tmp_path)
    assert (tmp_path / ".gitignore").is_symlink()  # not replaced by a regular file
    assert (tmp_path / "shared" / "ignore-rules").read_text().splitlines()[::2] == ["node_modules", ".gradgate/"]
    assert scaffold.gitignore is not None and "ignore-rules" in scaffold.gitignore


def test_the_ignore_lines_keep_the_outputs_out_of_git(tmp_path: Path) -> None:
    import subprocess

    init_repository(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for output in (".gradgate/cache/ab/cd.json", "gradgate-out/report.md"):
        (tmp_path / output).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / output).write_text("{}")
    status = subprocess.run(
        ["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True
    )
    assert ".gitignore" in status.stdout and "prompts/example.md" in status.stdout
    assert ".gradgate" not in status.stdout and "gradgate-out" not in status.stdout


def test_generated_files_parse(tmp_path: Path) -> None:
    init_repository(tmp_path)
    config = yaml.safe_load((tmp_path / "gradgate.yaml").read_text())
    assert config["version"] == 1
    assert config["prompts"] == ["prompts/**/*.md"]
    assert set(config["models"]) == {"task", "judge", "optimizer"}
    assert config["gate"]["min_items"] == 10

    meta, body = _front_matter((tmp_path / "prompts/example.md").read_text())
    assert meta["id"] == "example"
    assert (tmp_path / meta["suite"]).is_file()
    assert "{{question}}" in body

    suite = yaml.safe_load((tmp_path / "evals/example.yaml").read_text())
    assert suite["metrics"] == ["final_number"]
    # Enough rows for the gate's min_items, each filling the prompt's variable and naming an answer.
    assert len(suite["items"]) >= config["gate"]["min_items"]
    for item in suite["items"]:
        assert set(item["vars"]) == {"question"}
        assert str(item["expected"]).isdigit()
        question = item["vars"]["question"]
        a, op, b = question.removeprefix("What is ").removesuffix("?").split()
        assert str(int(a) + int(b) if op == "+" else int(a) - int(b)) == item["expected"], question

    workflow = yaml.safe_load((tmp_path / ".github/workflows/gradgate-check.yml").read_text())
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals/example.yaml").write_text("mine\n")
    (tmp_path / "gradgate.yaml").write_text("also mine\n")
    with pytest.raises(ConfigError) as info:
        init_repository(tmp_path)
    message = str(info.value)
    assert "gradgate.yaml" in message and "evals/example.yaml" in message
    assert "prompts/example.md" not in message
    assert (tmp_path / "evals/example.yaml").read_text() == "mine\n"
    assert not (tmp_path / "prompts").exists()
    assert not (tmp_path / ".github").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evals", "example.yaml", "gradgate.yaml"]


def test_second_init_refuses(tmp_path: Path) -> None:
    init_repository(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError):
        init_repository(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_target_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("x")
    with pytest.raises(ConfigError):
        init_repository(target)


def test_creates_missing_target_directory(tmp_path: Path) -> None:
    written = init_repository(tmp_path / "new" / "repo").created
    assert len(written) == len(TEMPLATES)


def test_workflow_template_matches_the_published_example() -> None:
    example = REPO_ROOT / "examples" / "workflows" / "gradgate-check.yml"
    assert template_text("gradgate-check.yml") == example.read_text(encoding="utf-8")


def test_generated_setup_loads_with_gradgates_own_loaders(tmp_path: Path) -> None:
    from gradgate.core import config as config_mod
    from gradgate.core import discovery

    init_repository(tmp_path)
    config, path = config_mod.load_config(tmp_path)
    assert path == tmp_path / "gradgate.yaml"
    targets = discovery.discover(tmp_path, config)
    assert [t.prompt.id for t in targets] == ["example"]
    assert len(targets[0].suite.items) == 12


@pytest.mark.slow
def test_init_then_eval_with_a_real_model(tmp_path: Path, openai_server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The starter setup runs end to end: every item scored by the served SmolLM2 through litellm."""
    import json

    from click.testing import CliRunner

    from gradgate.cli import main

    monkeypatch.setenv("GRADGATE_API_BASE", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    repo = tmp_path / "repo"
    runner = CliRunner()
    init = runner.invoke(main, ["init", str(repo)])
    assert init.exit_code == 0, init.output
    model = "openai/" + openai_server.model
    result = runner.invoke(
        main,
        ["eval", "--repo", str(repo), "--model", model, "--judge-model", model, "--out", str(tmp_path / "out"), "--no-cache"],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    [prompt] = results["prompts"]
    assert (prompt["id"], prompt["n_items"], prompt["n_scored"]) == ("example", 12, 12)
    assert 0.0 <= prompt["mean_score"] <= 1.0
