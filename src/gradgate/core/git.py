"""The one way gradgate runs git: no prompts, C locale, a timeout, credentials scrubbed from errors.

git = Git(repo)
sha = git.out("rev-parse", "HEAD")
done = git.run("archive", sha, binary=True, check=False)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradgate.core.secrets import redact
from gradgate.errors import GitError

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 300.0


class Git:
    """git in one working directory. `identity` (name, email) becomes author and committer."""

    def __init__(
        self,
        cwd: Path,
        *,
        identity: tuple[str, str] | None = None,
        timeout: float = GIT_TIMEOUT_S,
        hint: str = "check the repository, the remote and its credentials",
    ) -> None:
        self.cwd = cwd
        self.timeout = timeout
        self.hint = hint
        self.env: dict[str, str] = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",  # never hang on a credential prompt in CI
            "LC_ALL": "C",  # messages we match on are English
        }
        if identity is not None:
            name, email = identity
            self.env.update(GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email, GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email)

    def run(
        self,
        *args: str,
        check: bool = True,
        stdin: str | None = None,
        binary: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run `git ARGS`; with `check`, a non-zero exit raises GitError (credentials scrubbed)."""
        log.debug("git %s (in %s)", " ".join(args), self.cwd)
        try:
            proc = subprocess.run(
                ["git", "-c", "commit.gpgsign=false", *args],
                cwd=self.cwd,
                env={**self.env, **(env or {})},
                input=stdin,
                capture_output=True,
                text=not binary,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise GitError("git is not installed or not on PATH", hint="install git in the job's environment") from None
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} took longer than {self.timeout:.0f} s", hint=self.hint) from None
        if check and proc.returncode != 0:
            detail = proc.stderr or proc.stdout
            if isinstance(detail, bytes):
                detail = detail.decode("utf-8", "replace")
            raise GitError(redact(f"git {' '.join(args[:2])} failed: {detail.strip()}"), hint=self.hint)
        return proc

    def out(self, *args: str) -> str:
        """stdout of a git command that must succeed, stripped."""
        return str(self.run(*args).stdout).strip()


def tracked_files(repo: Path, path: Path) -> list[str] | None:
    """The files git tracks (its index: committed or staged) at or under `path`, relative to `repo`, in git's
    order; None when `repo` is in no git work tree (or git is not installed). GitError when git fails otherwise,
    e.g. refuses a repository another user owns: the answer is then unknown, not "none"."""
    if shutil.which("git") is None:
        log.debug("git is not installed: cannot list tracked files under %s", path)
        return None
    git = Git(repo, hint="check the repository, or mark it safe: git config --global --add safe.directory DIR")
    # Literal pathspecs: a directory named `*` or `:(glob)x` means itself, never a pattern.
    done = git.run("ls-files", "-z", "--", str(path), check=False, env={"GIT_LITERAL_PATHSPECS": "1"})
    if done.returncode != 0:
        detail = str(done.stderr).strip()
        if "not a git repository" in detail:
            return None
        raise GitError(redact(f"git ls-files failed: {detail[:500]}"), hint=git.hint)
    return [name for name in str(done.stdout).split("\0") if name]
