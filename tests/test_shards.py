"""`--shard K/N` and `gradgate merge`: three shards of the example repository, merged, give what one run gives.

The scripted model answers the examples from their suites: math and ticket-triage correctly unless the prompt
says SLOPPY or VAGUE, release notes in plain words unless the prompt says JARGON (then the judge fails them).
The check compares a base where ticket-triage is VAGUE with a head where math is SLOPPY and the release-note
prompt is reworded: one regression, one improvement, one unchanged prompt, one per shard.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradgate.app.eval_job import run_eval
from gradgate.app.merge_job import merge_budgets, run_merge
from gradgate.app.shards import Shard, assign, find_manifests
from gradgate.core.config import ModelSpec
from gradgate.errors import UsageError
from gradgate.models.scripted import ScriptedBackend, last_user_text
from gradgate.models.session import Session
from tests import fake_github as fake_module
from tests.conftest import EXAMPLE_REPO
from tests.fake_github import FakeGitHub
from tests.test_changes import commit, git
from tests.test_gate import check, outputs
from tests.test_gate_github import MARKER, ours, pr_env

fake_github = fake_module.fake_github  # the fixture
REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = {"model": "scripted/task", "judge_model": "scripted/judge"}


def _answers() -> dict[str, str]:
    """Every example item's distinctive input text -> its expected answer."""
    answers = {}
    for name, key in (("math", "question"), ("ticket-triage", "message")):
        suite = yaml.safe_load((EXAMPLE_REPO / "evals" / f"{name}.yaml").read_text())
        answers.update({item["vars"][key]: str(item["expected"]) for item in suite["items"]})
    return answers


ANSWERS = _answers()


def script(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
    text = last_user_text(messages)
    if spec.model == "scripted/judge":
        return "It is plain.\nVERDICT: FAIL" if "ZZJARGON" in text else "It is one plain sentence.\nVERDICT: PASS"
    if "Commit:" in text:  # the release-note prompt
        return "fix: ZZJARGON (#412)" if "JARGON" in text else "You can now switch to dark mode in the settings."
    answer = next((a for q, a in ANSWERS.items() if q in text), "?")
    if "SLOPPY" in text or "VAGUE" in text:
        return "The answer is 0" if answer[0].isdigit() else "(C)"
    return f"The answer is {answer}" if answer[0].isdigit() else answer


def session_for(repo: Path) -> Session:
    from gradgate.core.config import load_config, override_models

    config, _ = load_config(repo, None)
    config = override_models(config, task=MODELS["model"], judge=MODELS["judge_model"])
    return Session.open(repo, config, backend=ScriptedBackend(script), use_cache=False)


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def without_seconds(markdown: str) -> str:
    return re.sub(r"[\d.]+ s\. Exit code", "S s. Exit code", markdown)


# -- assignment ----------------------------------------------------------------------------------------


def test_assignment_is_longest_processing_time_first_and_deterministic() -> None:
    sizes = {"a": 10, "b": 7, "c": 5, "d": 5, "e": 3}
    # a→1 (10); b→2 (7); c→2 (12); d→1 (15); e→2 (15)
    assert assign(sizes, 2) == [["a", "d"], ["b", "c", "e"]]
    assert assign(dict(reversed(sizes.items())), 2) == assign(sizes, 2)  # the order of discovery does not matter
    assert assign({"x": 1, "y": 1}, 3) == [["x"], ["y"], []]  # more shards than prompts: some are empty
    # The examples: 12, 12 and 8 items, one prompt per shard.
    assert assign({"math": 12, "ticket-triage": 12, "release-note": 8}, 3) == [["math"], ["ticket-triage"], ["release-note"]]


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "x", "2-3", ""])
def test_a_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="K/N"):
        Shard.parse(text)
    assert Shard.parse(" 2/3 ") == Shard(2, 3) and str(Shard(2, 3)) == "2/3"


def test_budgets_add_up_and_seconds_are_the_longest_shard() -> None:
    one = {
        "limits": {"max_calls": 10},
        "calls": 3,
        "tokens": 30,
        "cost_usd": 0.1,
        "seconds": 4.0,
        "by_role": {"task": {"calls": 3}},
    }
    two = {
        **one,
        "calls": 5,
        "seconds": 9.0,
        "stopped_reason": "10 calls used",
        "by_role": {"task": {"calls": 5}, "judge": {"calls": 1}},
    }
    merged = merge_budgets([one, two, {}])
    assert (merged["calls"], merged["tokens"], merged["seconds"], merged["stopped_reason"]) == (8, 60, 9.0, "10 calls used")
    assert merged["by_role"] == {"judge": {"calls": 1}, "task": {"calls": 8}}


# -- eval ------------------------------------------------------------------------------------------------


def test_eval_shards_merge_into_the_unsharded_results(examples_copy: Path, tmp_path: Path) -> None:
    whole = asyncio.run(run_eval(session_for(examples_copy), out_dir=tmp_path / "whole"))
    for k in (1, 2, 3):
        asyncio.run(run_eval(session_for(examples_copy), out_dir=tmp_path / "shards" / f"s{k}", shard=Shard(k, 3)))
        assert (tmp_path / "shards" / f"s{k}" / "report.html").is_file()
    merged = run_merge([tmp_path / "shards"], out_dir=tmp_path / "merged", env={}, junit=tmp_path / "merged" / "junit.xml")
    assert merged.kind == "eval" and merged.exit_code == 0 and merged.results is not None
    # The same prompts in the same order, item by item, and the same table.
    strip = {"budget", "created_at"}
    assert merged.results.model_dump(exclude=strip) == whole.results.model_dump(exclude=strip)
    assert table_rows((tmp_path / "merged" / "report.md").read_text()) == table_rows(whole.report_path.read_text())
    assert merged.results.budget["calls"] == whole.results.budget["calls"]
    assert (tmp_path / "merged" / "report.html").is_file() and (tmp_path / "merged" / "junit.xml").is_file()


def test_merge_names_a_missing_repeated_or_foreign_shard(examples_copy: Path, tmp_path: Path) -> None:
    for k in (1, 3):
        asyncio.run(run_eval(session_for(examples_copy), out_dir=tmp_path / f"s{k}", shard=Shard(k, 3)))
    with pytest.raises(UsageError, match="missing shard"):
        run_merge([tmp_path / "s1", tmp_path / "s3"], out_dir=tmp_path / "m", env={})
    with pytest.raises(UsageError, match="given twice"):
        run_merge([tmp_path / "s1", tmp_path / "s1", tmp_path / "s3"], out_dir=tmp_path / "m", env={})
    asyncio.run(run_eval(session_for(examples_copy), out_dir=tmp_path / "other", shard=Shard(2, 2)))
    with pytest.raises(UsageError, match="another run"):
        run_merge([tmp_path / "s1", tmp_path / "other"], out_dir=tmp_path / "m", env={})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no shard\.json"):
        run_merge([tmp_path / "empty"], out_dir=tmp_path / "m", env={})
    assert [m.index for _, m in find_manifests([tmp_path])] == [1, 2, 3]  # one level down, sorted by index


# -- check, against the fake GitHub ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples as a git repository: a base commit, then a head commit (see the module docstring)."""
    root = tmp_path_factory.mktemp("sharded") / "repo"
    shutil.copytree(EXAMPLE_REPO, root, ignore=shutil.ignore_patterns("workflows", ".gradgate"))
    (root / ".gitignore").write_text(".gradgate/\n")
    git(root, "init", "-q", "-b", "main")
    triage = root / "prompts" / "ticket-triage.md"
    original = triage.read_text()
    triage.write_text(original.replace("Classify the customer message", "VAGUE: Classify the customer message"))
    commit(root, "base")
    triage.write_text(original)
    math = root / "prompts" / "math.md"
    math.write_text(math.read_text().replace("Solve the word problem.", "SLOPPY: solve the word problem."))
    note = root / "prompts" / "release-note.md"
    note.write_text(note.read_text().replace("Rewrite this commit message", "Please rewrite this commit message"))
    commit(root, "head")
    return root


def run_check_in(repo: Path, out: Path, env: dict[str, str], **kwargs: Any) -> Any:
    return check(repo, out, env, be=ScriptedBackend(script), github_options={"sleep": lambda s: None}, **MODELS, **kwargs)


def test_three_check_shards_merge_into_one_run(
    fake_github: FakeGitHub, examples_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "one").mkdir()
    one_env = pr_env(tmp_path / "one", fake_github.api_url, number=7)
    whole = run_check_in(shutil.copytree(examples_repo, tmp_path / "one" / "repo"), tmp_path / "one" / "out", one_env)
    assert whole.verdicts == {"math": "regressed", "release-note": "unchanged", "ticket-triage": "improved"}
    assert whole.exit_code == 1 and len(ours(fake_github, 7)) == 1
    capsys.readouterr()

    before = len(fake_github.requests)
    (tmp_path / "sharded").mkdir()
    env = pr_env(tmp_path / "sharded", fake_github.api_url, number=8)
    for k in (1, 2, 3):  # each shard on its own checkout, as a matrix job would be
        repo = shutil.copytree(examples_repo, tmp_path / "sharded" / f"repo{k}")
        part = run_check_in(repo, tmp_path / "artifacts" / f"gradgate-shard-{k}", env, shard=Shard(k, 3))
        assert part.exit_code == 0 and len(part.verdicts) == 1  # the merge decides the exit code
    assert len(fake_github.requests) == before  # no shard talks to GitHub
    assert Path(env["GITHUB_OUTPUT"]).read_text() == "" and Path(env["GITHUB_STEP_SUMMARY"]).read_text() == ""

    merged = run_merge([tmp_path / "artifacts"], out_dir=tmp_path / "merged", env=env, github_options={"sleep": lambda s: None})
    assert merged.kind == "check" and merged.check is not None
    assert merged.check.verdicts == whole.verdicts and list(merged.check.verdicts) == list(whole.verdicts)
    assert merged.exit_code == whole.exit_code == 1
    assert table_rows(merged.markdown) == table_rows(whole.markdown)
    assert without_seconds(merged.markdown) == without_seconds(whole.markdown)  # every line but the wall time
    assert {**outputs(env), "report-path": ""} == {**outputs(one_env), "report-path": ""}
    assert outputs(env)["report-path"] == str(tmp_path / "merged" / "report.md")
    assert capsys.readouterr().out.count("::error file=prompts/math.md") == 1  # the merge annotates once
    # One sticky comment on the sharded pull request, saying what the unsharded run said.
    [comment] = ours(fake_github, 8)
    [single] = ours(fake_github, 7)
    assert MARKER in comment["body"] and without_seconds(comment["body"]) == without_seconds(single["body"])
    assert without_seconds(Path(env["GITHUB_STEP_SUMMARY"]).read_text()) == without_seconds(whole.markdown)
    for name in ("report.md", "report.html", "check.json"):
        assert (tmp_path / "merged" / name).is_file()

    # Merging again (a rerun of the merge job) updates the one comment instead of adding a second.
    run_merge([tmp_path / "artifacts"], out_dir=tmp_path / "merged", env=env, comment=True)
    assert len(ours(fake_github, 8)) == 1


def test_cli_merge_and_a_bad_shard(tmp_path: Path, examples_copy: Path) -> None:
    from click.testing import CliRunner

    from gradgate.cli import main

    for k in (1, 2):
        asyncio.run(run_eval(session_for(examples_copy), out_dir=tmp_path / f"s{k}", shard=Shard(k, 2)))
    runner = CliRunner()
    result = runner.invoke(main, ["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "math" in result.stdout and (tmp_path / "m" / "results.json").is_file()
    bad = runner.invoke(
        main, ["check", "--repo", str(examples_copy), "--base", "HEAD", "--shard", "4/3", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "K/N" in bad.stderr
