"""The auto-tuning pull request: real git (a local bare remote) and the spec-checking fake GitHub."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradgate.errors import ConfigError, GitError, GitHubError, PathOutsideRepoError
from gradgate.github import tuning_pr as publish_module
from gradgate.github.client import GitHubClient
from gradgate.github.tuning_pr import COMMITTER_EMAIL, TRAILER_KEY, publish_tuning_pr
from tests import fake_github as fake_module
from tests.fake_github import FakeGitHub
from tests.gitutil import git, isolated_git  # noqa: F401 - isolated_git is an autouse fixture

fake_github = fake_module.fake_github  # the fixture

BRANCH = "gradgate/tune-prompts"


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    """(working clone with main pushed, bare remote)."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "--quiet", "-b", "main")
    (work / "prompts").mkdir()
    (work / "prompts" / "qa.txt").write_text("Answer the question.\n")
    (work / "README.md").write_text("demo\n")
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "initial")
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "--quiet", "-u", "origin", "main")
    return work, remote


def remote_branch_sha(remote: Path, branch: str = BRANCH) -> str | None:
    out = git(remote, "ls-remote", "--heads", str(remote), f"refs/heads/{branch}")
    return out.split()[0] if out else None


def client_for(fake: FakeGitHub, remote: Path) -> GitHubClient:
    fake.branch_exists = lambda ref: remote_branch_sha(remote, ref) is not None
    return GitHubClient("ghs_token", api_url=fake.api_url, repository=fake.repository, sleep=lambda s: None)


def publish(work: Path, client: GitHubClient | None, **kw: object) -> object:
    args: dict[str, object] = {
        "changed_files": [Path("prompts/qa.txt")],
        "branch": BRANCH,
        "title": "gradgate: tune prompts",
        "body": "score 0.61 -> 0.70",
        "client": client,
        "commit_message": "Tune prompts/qa.txt",
        **kw,
    }
    return publish_tuning_pr(work, **args)  # type: ignore[arg-type]


def test_first_run_opens_a_pr_and_leaves_the_working_tree_alone(repos: tuple[Path, Path], fake_github: FakeGitHub) -> None:
    work, remote = repos
    (work / "prompts" / "qa.txt").write_text("Answer the question step by step.\n")  # the optimizer's result
    (work / "README.md").write_text("a local edit\n")
    (work / "notes.txt").write_text("untracked\n")
    status_before = git(work, "status", "--porcelain")
    head_before = git(work, "rev-parse", "HEAD")

    result = publish(work, client_for(fake_github, remote), run_id="run-1")

    assert result.pushed and result.created and result.pr_number == 1  # type: ignore[attr-defined]
    assert result.commit_sha == remote_branch_sha(remote)  # type: ignore[attr-defined]
    assert git(remote, "show", f"{BRANCH}:prompts/qa.txt") == "Answer the question step by step."
    assert git(remote, "show", f"{BRANCH}:README.md") == "demo"  # only the changed files travel
    assert git(remote, "log", "-1", "--format=%ce|%(trailers:key=Gradgate-Run,valueonly)", BRANCH) == (f"{COMMITTER_EMAIL}|run-1")
    assert git(remote, "rev-parse", f"{BRANCH}~1") == git(remote, "rev-parse", "main")
    # The user's checkout: same branch, same HEAD, same uncommitted and untracked files, no worktree left.
    assert git(work, "status", "--porcelain") == status_before
    assert git(work, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(work, "rev-parse", "HEAD") == head_before
    assert (work / "README.md").read_text() == "a local edit\n"
    assert len(git(work, "worktree", "list").splitlines()) == 1
    pull = fake_github.pulls[0]
    assert (pull["head"]["ref"], pull["base"]["ref"], pull["title"]) == (
        BRANCH,
        "main",
        "gradgate: tune prompts",
    )


def test_second_run_updates_the_same_pr(repos: tuple[Path, Path], fake_github: FakeGitHub) -> None:
    work, remote = repos
    client = client_for(fake_github, remote)
    (work / "prompts" / "qa.txt").write_text("v1\n")
    first = publish(work, client, run_id="run-1")
    (work / "prompts" / "qa.txt").write_text("v2\n")
    second = publish(work, client, run_id="run-2", body="score 0.61 -> 0.75")
    assert first.created and not second.created  # type: ignore[attr-defined]
    assert first.pr_number == second.pr_number  # type: ignore[attr-defined]
    assert len(fake_github.pulls) == 1 and fake_github.pulls[0]["body"] == "score 0.61 -> 0.75"
    assert git(remote, "show", f"{BRANCH}:prompts/qa.txt") == "v2"
    assert git(remote, "rev-parse", f"{BRANCH}~1") == git(remote, "rev-parse", "main")  # rebuilt on base
    # A rerun with the same result keeps the branch as it is.
    third = publish(work, client, run_id="run-3")
    assert not third.pushed and third.commit_sha == second.commit_sha  # type: ignore[attr-defined]
    assert len(fake_github.pulls) == 1


def test_refuses_to_overwrite_a_human_commit(repos: tuple[Path, Path], fake_github: FakeGitHub, tmp_path: Path) -> None:
    work, remote = repos
    client = client_for(fake_github, remote)
    (work / "prompts" / "qa.txt").write_text("v1\n")
    publish(work, client, run_id="run-1")
    other = tmp_path / "other"
    git(tmp_path, "clone", "--quiet", "-b", BRANCH, str(remote), str(other))
    (other / "prompts" / "qa.txt").write_text("hand-tuned\n")
    git(other, "commit", "--quiet", "-am", "my own tweak")
    git(other, "push", "--quiet", "origin", BRANCH)
    human_sha = remote_branch_sha(remote)

    (work / "prompts" / "qa.txt").write_text("v2\n")
    with pytest.raises(GitHubError) as info:
        publish(work, client, run_id="run-2")
    assert f"someone added commits to {BRANCH}; not force-pushing over them" in info.value.message
    assert "my own tweak" in info.value.message
    assert info.value.hint is not None and "delete the branch" in info.value.hint
    assert remote_branch_sha(remote) == human_sha
    assert len(git(work, "worktree", "list").splitlines()) == 1


def test_amended_commit_with_the_trailer_still_counts_as_human(
    repos: tuple[Path, Path], fake_github: FakeGitHub, tmp_path: Path
) -> None:
    work, remote = repos
    client = client_for(fake_github, remote)
    (work / "prompts" / "qa.txt").write_text("v1\n")
    publish(work, client, run_id="run-1")
    other = tmp_path / "other"
    git(tmp_path, "clone", "--quiet", "-b", BRANCH, str(remote), str(other))
    (other / "prompts" / "qa.txt").write_text("amended\n")
    git(other, "commit", "--quiet", "-a", "--amend", "--no-edit")  # keeps the trailer, committer is Human
    assert TRAILER_KEY in git(other, "log", "-1", "--format=%B")
    git(other, "push", "--quiet", "--force", "origin", BRANCH)
    (work / "prompts" / "qa.txt").write_text("v2\n")
    with pytest.raises(GitHubError, match="not force-pushing"):
        publish(work, client, run_id="run-2")


def test_without_a_client_it_pushes_only(repos: tuple[Path, Path]) -> None:
    work, remote = repos
    (work / "prompts" / "qa.txt").write_text("v1\n")
    result = publish(work, None)
    assert result.pushed and result.pr_number is None and not result.created  # type: ignore[attr-defined]
    assert "no GitHub token" in result.message  # type: ignore[attr-defined]
    assert remote_branch_sha(remote) == result.commit_sha  # type: ignore[attr-defined]


def test_unpushed_local_commits_stay_out_of_the_pr(repos: tuple[Path, Path], fake_github: FakeGitHub) -> None:
    work, remote = repos
    (work / "README.md").write_text("local only\n")
    git(work, "commit", "--quiet", "-am", "not pushed")
    (work / "prompts" / "qa.txt").write_text("v1\n")
    publish(work, client_for(fake_github, remote))
    assert git(remote, "show", f"{BRANCH}:README.md") == "demo"


def test_nothing_to_publish_when_files_match_base(repos: tuple[Path, Path], fake_github: FakeGitHub) -> None:
    work, remote = repos
    result = publish(work, client_for(fake_github, remote))
    assert not result.pushed and result.commit_sha is None  # type: ignore[attr-defined]
    assert remote_branch_sha(remote) is None and fake_github.requests == []


def test_deleted_file_is_deleted_on_the_branch(repos: tuple[Path, Path]) -> None:
    work, remote = repos
    (work / "prompts" / "qa.txt").unlink()
    (work / "prompts" / "new.txt").write_text("new prompt\n")
    publish(work, None, changed_files=[Path("prompts/qa.txt"), work / "prompts" / "new.txt"])
    assert git(remote, "ls-tree", "-r", "--name-only", BRANCH).splitlines() == [
        "README.md",
        "prompts/new.txt",
    ]


def test_paths_and_branch_names_are_checked(repos: tuple[Path, Path], tmp_path: Path) -> None:
    work, _ = repos
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    (work / "prompts" / "link.txt").symlink_to(outside)
    for bad in (Path("../outside.txt"), outside, Path("prompts/link.txt"), Path(".git/config")):
        with pytest.raises(PathOutsideRepoError):
            publish(work, None, changed_files=[bad])
    for branch in ("bad..name", "-x", "with space", "main"):
        with pytest.raises(ConfigError):
            publish(work, None, branch=branch)


def test_not_a_git_repository(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="not inside a git repository"):
        publish(tmp_path, None)


def test_a_push_racing_with_ours_is_not_overwritten(
    repos: tuple[Path, Path], fake_github: FakeGitHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, remote = repos
    client = client_for(fake_github, remote)
    (work / "prompts" / "qa.txt").write_text("v1\n")
    publish(work, client, run_id="run-1")
    other = tmp_path / "other"
    git(tmp_path, "clone", "--quiet", "-b", BRANCH, str(remote), str(other))
    real_check = publish_module._foreign_commits

    def check_then_someone_pushes(*args: object) -> list[str]:
        found = real_check(*args)  # type: ignore[arg-type]
        (other / "prompts" / "qa.txt").write_text("sneaky\n")
        git(other, "commit", "--quiet", "-am", "pushed during the run")
        git(other, "push", "--quiet", "origin", BRANCH)
        return found

    monkeypatch.setattr(publish_module, "_foreign_commits", check_then_someone_pushes)
    raced = remote_branch_sha(remote)
    (work / "prompts" / "qa.txt").write_text("v2\n")
    with pytest.raises(GitHubError, match="while gradgate published"):
        publish(work, client, run_id="run-2")
    assert remote_branch_sha(remote) != raced
    assert git(remote, "log", "-1", "--format=%s", BRANCH) == "pushed during the run"
