"""Publish optimized prompts as an auto-tuning pull request, with real ``git`` and the GitHub REST API.

The branch is built in a temporary ``git worktree`` from the tip of the base branch, so the user's working
tree, index and current branch are never touched. gradgate marks its commits with the trailer
``Gradgate-Run: <id>`` and the committer ``gradgate <gradgate@users.noreply.github.com>``; if the remote
branch holds any commit (not already on the base branch) without both marks, a person has added work there
and gradgate refuses to overwrite it. Otherwise it pushes with ``--force-with-lease`` pinned to the remote
sha it saw, so a push that races with someone else fails instead of clobbering them.

Without a GitHub client (no token) gradgate still pushes the branch (git may have credentials of its own,
e.g. from actions/checkout) and reports that no pull request was opened; the result says which happened.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gradgate.core.files import resolve_inside
from gradgate.core.git import Git
from gradgate.core.secrets import redact
from gradgate.errors import ConfigError, GitError, GitHubError, PathOutsideRepoError
from gradgate.github.client import GitHubClient

logger = logging.getLogger(__name__)

COMMITTER_NAME = "gradgate"
COMMITTER_EMAIL = "gradgate@users.noreply.github.com"
TRAILER_KEY = "Gradgate-Run"


@dataclass(frozen=True)
class PublishResult:
    branch: str
    commit_sha: str | None
    pushed: bool
    pr_number: int | None
    pr_url: str | None
    created: bool  # a new pull request was opened (False: updated, or none)
    message: str


def _git(cwd: Path) -> Git:
    return Git(
        cwd,
        identity=(COMMITTER_NAME, COMMITTER_EMAIL),
        hint="check the remote, its credentials (contents: write) and the repository state",
    )


def _validate_branch(git: Git, branch: str) -> None:
    if not branch or branch.startswith("-") or git.run("check-ref-format", "--branch", branch, check=False).returncode:
        raise ConfigError(f"{branch!r} is not a valid git branch name", hint="use e.g. gradgate/tune-prompts")


def _inside(repo: Path, cwd: Path, changed: Sequence[Path]) -> list[str]:
    """Repository-relative POSIX paths of ``changed`` (relative to ``cwd``); none may leave the repository."""
    rels: list[str] = []
    for path in changed:
        full = path if path.is_absolute() else cwd / path
        # Symlinks are followed, so a link leading out of the repository or into any `.git` (any case) is refused.
        resolved = resolve_inside(
            repo,
            full,
            what="changed file",
            where=str(path),
            hint="publish only files of the work tree (no symlink leading out, nothing under .git)",
        )
        if resolved == repo:
            raise PathOutsideRepoError(f"{path} is not a file of the repository", where=str(path))
        rels.append(resolved.relative_to(repo).as_posix())
    return sorted(set(rels))


def _base_branch(git: Git, remote: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    current = git.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False).stdout.strip()
    if current:
        return current
    head = git.run("symbolic-ref", "--quiet", "--short", f"refs/remotes/{remote}/HEAD", check=False).stdout.strip()
    if head.startswith(f"{remote}/"):
        return head[len(remote) + 1 :]
    listed = git.run("ls-remote", "--symref", remote, "HEAD", check=False).stdout
    found = re.search(r"^ref: refs/heads/(\S+)\s+HEAD", listed, re.MULTILINE)
    if found:
        return found.group(1)
    raise GitHubError(
        "could not tell which branch the tuning pull request should target (detached HEAD)",
        hint="pass the base branch explicitly",
    )


def _remote_sha(git: Git, remote: str, branch: str) -> str | None:
    listed = git.out("ls-remote", "--heads", remote, f"refs/heads/{branch}")
    for line in listed.splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    return None


def _foreign_commits(git: Git, tip: str, base_sha: str) -> list[str]:
    """Commits on ``tip`` not on the base that gradgate did not make (no trailer or another committer)."""
    log = git.out(
        "log",
        "--format=%H%x1f%ce%x1f%(trailers:key=" + TRAILER_KEY + ",valueonly,separator=%x2c)%x1f%s%x1e",
        tip,
        f"^{base_sha}",
    )
    foreign = []
    for record in log.split("\x1e"):
        # The subject is last and split off at most three times: a person's subject may hold any control character.
        fields = record.lstrip("\n").split("\x1f", 3)
        if len(fields) < 4:
            continue
        sha, email, trailer, subject = fields
        subject = "".join(c if c.isprintable() else "?" for c in subject.strip())
        if not trailer.strip() or email != COMMITTER_EMAIL:
            foreign.append(f"{sha[:12]} {subject}")
    return foreign


def _toplevel(repo_dir: Path) -> Path:
    if not Path(repo_dir).is_dir():
        raise GitError(f"{repo_dir} is not a directory", hint="run gradgate in a git checkout")
    top = _git(Path(repo_dir)).run("rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise GitError(f"{repo_dir} is not inside a git repository", hint="run gradgate in a git checkout")
    return Path(top.stdout.strip()).resolve()


def _base_sha(git: Git, remote: str, base: str) -> str:
    """The base tip on the remote, so unpushed local commits never leak into the pull request (else local)."""
    fetched = git.run("fetch", "--no-tags", remote, f"+refs/heads/{base}:refs/remotes/{remote}/{base}", check=False)
    if fetched.returncode == 0:
        return git.out("rev-parse", f"refs/remotes/{remote}/{base}^{{commit}}")
    logger.warning("could not fetch %s from %s (%s); using the local branch", base, remote, redact(fetched.stderr.strip()))
    local = git.run("rev-parse", "--verify", "--quiet", f"refs/heads/{base}^{{commit}}", check=False)
    if local.returncode != 0:
        raise GitHubError(
            f"the base branch {base!r} exists neither on {remote} nor locally",
            hint="push the base branch or pass another base",
        )
    return str(local.stdout).strip()


def _branch_tip(git: Git, remote: str, branch: str, base_sha: str) -> str | None:
    """The tuning branch's tip on the remote (None when absent); refuses one a person has added commits to."""
    remote_sha = _remote_sha(git, remote, branch)
    if remote_sha is not None:
        git.run("fetch", "--no-tags", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}")
        foreign = _foreign_commits(git, remote_sha, base_sha)
        if foreign:
            raise GitHubError(
                f"someone added commits to {branch}; not force-pushing over them: " + ", ".join(foreign[:5]),
                hint=f"merge or close the tuning pull request, or delete the branch {branch}, then rerun",
            )
    return remote_sha


def publish_tuning_pr(
    repo_dir: Path,
    *,
    changed_files: list[Path],
    contents: Mapping[Path, bytes] | None = None,
    branch: str,
    title: str,
    body: str,
    client: GitHubClient | None,
    base_branch: str | None = None,
    remote: str = "origin",
    commit_message: str,
    run_id: str | None = None,
) -> PublishResult:
    """Commit ``changed_files`` onto ``branch`` (from the base tip); push; open or update the PR.

    A file's bytes come from ``contents`` when it has them (the working tree is then never read or
    changed), else from the working tree."""
    repo = _toplevel(repo_dir)
    git = _git(repo)
    _validate_branch(git, branch)
    cwd = Path(repo_dir).resolve()
    given = {rel: data for path, data in (contents or {}).items() for rel in _inside(repo, cwd, [path])}
    rels = _inside(repo, cwd, changed_files)
    if not rels:
        return PublishResult(branch, None, False, None, None, False, "no changed files; nothing to publish")
    base = _base_branch(git, remote, base_branch)
    _validate_branch(git, base)
    if base == branch:
        raise ConfigError(f"the tuning branch {branch!r} is the base branch", hint="choose another branch name")
    base_sha = _base_sha(git, remote, base)
    remote_sha = _branch_tip(git, remote, branch, base_sha)
    trailer = f"{TRAILER_KEY}: {run_id or uuid.uuid4().hex[:12]}"
    message = f"{commit_message.rstrip()}\n\n{trailer}\n"
    commit_sha, pushed = _commit_and_push(git, repo, rels, given, base_sha, remote_sha, branch, remote, message)
    if commit_sha is None:
        return PublishResult(
            branch, None, False, None, None, False, f"the changed files are identical to {base}; nothing to publish"
        )
    what = f"pushed {branch} ({commit_sha[:12]})" if pushed else f"{branch} already up to date ({commit_sha[:12]})"
    if client is None:
        note = f"{what}; no GitHub token, so no pull request was opened or updated"
        return PublishResult(branch, commit_sha, pushed, None, None, False, note)
    pull = client.create_or_update_pull(head=branch, base=base, title=title, body=body)
    verb = "opened" if pull.created else "updated"
    note = f"{what}; {verb} pull request #{pull.number} {pull.url}".rstrip()
    return PublishResult(branch, commit_sha, pushed, pull.number, pull.url, pull.created, note)


def _commit_and_push(
    git: Git,
    repo: Path,
    rels: list[str],
    given: Mapping[str, bytes],
    base_sha: str,
    remote_sha: str | None,
    branch: str,
    remote: str,
    message: str,
) -> tuple[str | None, bool]:
    """(commit sha or None when nothing differs from base, whether it was pushed)."""
    tmp = Path(tempfile.mkdtemp(prefix="gradgate-publish-"))
    tree = tmp / "tree"
    git.run("worktree", "add", "--detach", str(tree), base_sha)
    try:
        wt = _git(tree)
        for rel in rels:
            source, target = repo / rel, tree / rel
            if rel in given:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(given[rel])
            elif source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                shutil.copymode(source, target)
            elif target.exists():  # deleted in the user's tree: delete on the branch too
                target.unlink()
        wt.run("add", "--all", "--", *rels)
        if wt.run("diff", "--cached", "--quiet", check=False).returncode == 0:
            return None, False
        new_tree = wt.out("write-tree")
        if (
            remote_sha is not None
            and git.out("rev-parse", f"{remote_sha}^{{tree}}") == new_tree
            and git.run("merge-base", "--is-ancestor", base_sha, remote_sha, check=False).returncode == 0
        ):
            return remote_sha, False  # a rerun with the same result: keep the branch as it is
        wt.run("commit", "--no-verify", "--quiet", "-F", "-", stdin=message)
        sha = wt.out("rev-parse", "HEAD")
        lease = f"--force-with-lease=refs/heads/{branch}:{remote_sha or ''}"
        pushed = wt.run("push", "--porcelain", lease, remote, f"{sha}:refs/heads/{branch}", check=False)
        if pushed.returncode != 0:
            # --porcelain reports the per-ref reason ("[rejected] (stale info)") on stdout
            detail = redact(f"{pushed.stdout.strip()} {pushed.stderr.strip()}".strip())
            if "stale info" in detail or "rejected" in detail:
                raise GitHubError(
                    f"{branch} changed on {remote} while gradgate published; not overwriting it: {detail}",
                    hint="rerun gradgate; if someone works on the branch, merge or close its pull request",
                )
            raise GitHubError(
                f"git push of {branch} to {remote} failed: {detail}",
                hint="the token needs `contents: write`; check the remote's credentials",
            )
        logger.info("pushed %s to %s/%s", sha[:12], remote, branch)
        return sha, True
    finally:
        git.run("worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        git.run("worktree", "prune", check=False)
