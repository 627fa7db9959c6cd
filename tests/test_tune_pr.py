"""The auto-tuning pull request end to end: the optimize job, a local bare git remote and the
spec-checked fake GitHub server. One PR per prompt set, updated by a better rerun; nothing better
opens nothing; a person's commit on the branch stops gradgate."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gradgate.app.optimize_job import OptimizeJobOutcome, branch_for, run_optimize_job
from gradgate.errors import GitHubError, PathInGitDirError, PathOutsideRepoError
from gradgate.github.tuning_pr import publish_tuning_pr
from tests.fake_github import FakeGitHub
from tests.gitutil import git, isolated_git  # noqa: F401 - isolated_git is an autouse fixture
from tests.test_gradsum import GOOD, Script, make_repo, open_session, sequence_editor

GOOD_TOO = "<prompt>GOOD: reply with just the number.\n\nQuestion: {{question}}</prompt>"
BRANCH = branch_for(["qa"])
SETTINGS = {"gradsum": {"iterations": 1, "beam_width": 1, "candidates_per_prompt": 1}}


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
    work = make_repo(tmp_path / "work")
    git(work, "init", "--quiet", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "initial")
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "--quiet", "-u", "origin", "main")
    return work, remote


def remote_sha(remote: Path, branch: str = BRANCH) -> str | None:
    out = git(remote, "ls-remote", "--heads", str(remote), f"refs/heads/{branch}")
    return out.split()[0] if out else None


def tune(work: Path, editor_reply: str, out: Path, fake: FakeGitHub, remote: Path, **kw: Any) -> OptimizeJobOutcome:
    fake.branch_exists = lambda ref: remote_sha(remote, ref) is not None  # type: ignore[method-assign]
    env = {
        "GITHUB_TOKEN": "ghs_secret_token_123",
        "GITHUB_REPOSITORY": fake.repository,
        "GITHUB_API_URL": fake.api_url,
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(out.parent / "gh-out"),
    }
    session = open_session(work, Script(sequence_editor(editor_reply)), optimize=SETTINGS)
    return asyncio.run(
        run_optimize_job(session, methods=["gradsum"], out_dir=out, seed=0, write=False, open_pr=True, env=env, **kw)
    )


def test_one_pr_updated_by_a_better_rerun_and_nothing_opened_without_one(
    repos: tuple[Path, Path], fake_github: FakeGitHub, tmp_path: Path
) -> None:
    work, remote = repos
    prompt_file = work / "prompts" / "qa.md"
    original = prompt_file.read_text()

    first = tune(work, GOOD, tmp_path / "run1" / "out", fake_github, remote)
    assert first.pr_number == 1 and first.pr_url and "opened pull request #1" in first.message
    assert prompt_file.read_text() == original  # without --write the working tree is left as it was
    assert git(work, "status", "--porcelain") == ""
    on_branch = git(remote, "show", f"{BRANCH}:prompts/qa.md")
    assert on_branch.startswith("---\nid: qa\n") and "GOOD: answer with the number only." in on_branch
    [pull] = fake_github.pulls
    assert pull["head"]["ref"] == BRANCH and pull["base"]["ref"] == "main"
    body = pull["body"]
    assert "| qa | gradsum |" in body and "SUMMARY: the prompt should ask for the number only." in body
    assert "Methods: gradsum" in body and "Budget used" in body and "ghs_secret_token_123" not in body
    assert "pr-number=1" in (tmp_path / "run1" / "gh-out").read_text()

    second = tune(work, GOOD_TOO, tmp_path / "run2" / "out", fake_github, remote)
    assert second.pr_number == 1 and "updated pull request #1" in second.message
    assert len(fake_github.pulls) == 1
    assert "reply with just the number" in git(remote, "show", f"{BRANCH}:prompts/qa.md")
    tip = remote_sha(remote)

    third = tune(work, "I cannot improve this.", tmp_path / "run3" / "out", fake_github, remote)
    assert third.pr_number is None and not any(r.improved for r in third.results)
    assert "no pull request was opened" in third.message and "nothing to propose" in third.message
    assert len(fake_github.pulls) == 1 and remote_sha(remote) == tip
    assert "no pull request was opened" in (tmp_path / "run3" / "out" / "report.md").read_text()


def test_a_person_s_commit_on_the_branch_stops_the_rerun(
    repos: tuple[Path, Path], fake_github: FakeGitHub, tmp_path: Path
) -> None:
    work, remote = repos
    tune(work, GOOD, tmp_path / "run1" / "out", fake_github, remote)
    human = tmp_path / "human"
    git(tmp_path, "clone", "--quiet", "-b", BRANCH, str(remote), str(human))
    (human / "prompts" / "qa.md").write_text((human / "prompts" / "qa.md").read_text() + "\nA human tweak.\n")
    git(human, "commit", "--quiet", "-am", "my own tweak")
    git(human, "push", "--quiet", "origin", BRANCH)
    tip = remote_sha(remote)
    with pytest.raises(GitHubError, match="someone added commits"):
        tune(work, GOOD_TOO, tmp_path / "run2" / "out", fake_github, remote)
    assert remote_sha(remote) == tip and len(fake_github.pulls) == 1
    assert (work / "prompts" / "qa.md").read_text().count("GOOD") == 0  # the working tree is restored


def test_a_person_s_commit_with_control_characters_in_its_subject_is_named_not_a_crash(
    repos: tuple[Path, Path], fake_github: FakeGitHub, tmp_path: Path
) -> None:
    work, remote = repos
    tune(work, GOOD, tmp_path / "run1" / "out", fake_github, remote)
    human = tmp_path / "human"
    git(tmp_path, "clone", "--quiet", "-b", BRANCH, str(remote), str(human))
    (human / "prompts" / "qa.md").write_text((human / "prompts" / "qa.md").read_text() + "\nA human tweak.\n")
    git(human, "commit", "--quiet", "-am", "tweak \x1f\x1e\x07 by hand")
    git(human, "push", "--quiet", "origin", BRANCH)
    tip = remote_sha(remote)
    with pytest.raises(GitHubError, match=r"not force-pushing over them: [0-9a-f]{12} tweak"):
        tune(work, GOOD_TOO, tmp_path / "run2" / "out", fake_github, remote)
    assert remote_sha(remote) == tip and len(fake_github.pulls) == 1


def test_a_changed_file_under_any_git_dir_or_behind_a_symlink_leading_out_is_refused(
    repos: tuple[Path, Path], tmp_path: Path
) -> None:
    work, remote = repos
    branch = "gradgate/tune-paths"
    (work / "sub" / ".git").mkdir(parents=True)
    (work / "sub" / ".git" / "x").write_text("nested\n")
    outside = tmp_path / "outside.md"
    outside.write_text("outside\n")
    (work / "prompts" / "out.md").symlink_to(outside)
    (work / "prompts" / "gitdir").symlink_to(work / ".git")

    def publish(changed: list[Path], contents: dict[Path, bytes] | None = None) -> Any:
        return publish_tuning_pr(
            work,
            changed_files=changed,
            contents=contents,
            branch=branch,
            title="gradgate: tune prompts",
            body="body",
            client=None,
            commit_message="Tune prompts",
        )

    for bad in (Path("sub/.git/x"), Path(".GIT/config"), Path("prompts/gitdir/config"), work / ".Git" / "HEAD"):
        with pytest.raises(PathInGitDirError, match="changed file"):
            publish([bad])
    with pytest.raises(PathInGitDirError):
        publish([Path("prompts/qa.md")], {Path("sub/.git/x"): b"hostile\n"})
    for bad in (Path("prompts/out.md"), Path("../outside.md"), outside, Path(".")):
        with pytest.raises(PathOutsideRepoError):
            publish([bad])
    assert remote_sha(remote, branch) is None  # nothing was pushed

    prompt = work / "prompts" / "qa.md"
    prompt.write_text(prompt.read_text() + "\nA tuned line.\n")
    result = publish([Path("prompts/qa.md")])
    assert result.pushed and remote_sha(remote, branch) == result.commit_sha
    assert "A tuned line." in git(remote, "show", f"{branch}:prompts/qa.md")
