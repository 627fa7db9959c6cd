"""Which prompts changed between two git revisions, judged by what the model would really see.

    changes = detect_changes(repo, base_ref="origin/main", head_ref=None)
    for change in changes.changed: ...

A prompt's *effective content* is everything that can move its score: the prompt text with its
includes expanded, its description (the judge reads it), its suite (settings and rows), and the
config sections it uses (task and judge models, judge, default metrics, gate). Only prompts whose
effective content differs are re-scored; a prompt id present only in head is "new", one present
only in base is "removed".

Each revision is read with real git: `git archive REV` unpacked into a temporary directory, then
the ordinary discovery code runs on that directory. Everything needed later (texts, suite rows)
is loaded into memory, so the temporary directories are gone when this module returns. With no
head ref the working tree is the head (what a CI checkout of the pull request holds).
"""

from __future__ import annotations

import io
import logging
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gradgate.core.config import Config, config_location, load_config
from gradgate.core.discovery import Target, duplicate_id, find_prompt_files, suite_path_for
from gradgate.core.files import digest
from gradgate.core.git import Git
from gradgate.core.prompts import load_prompt
from gradgate.core.suites import load_suite
from gradgate.errors import ConfigError, GitError, GradgateError, UsageError

log = logging.getLogger(__name__)

Status = Literal["changed", "unchanged", "new", "removed"]
# Reading a ref (rev-parse, archive) is local and quick; a stuck one should fail the gate sooner than a push.
READ_TIMEOUT_S = 120.0
FETCH_HINT = (
    "check the ref name; in GitHub Actions fetch the history (actions/checkout with `fetch-depth: 0`) "
    "so the base commit exists locally"
)


@dataclass(frozen=True)
class Revision:
    """One side of the comparison: a commit, or the working tree."""

    label: str  # what the report shows: a short sha, or "working tree"
    sha: str | None  # full commit sha; None for the working tree
    config: Config
    targets: dict[str, Target]  # by prompt id, in discovery order
    hashes: dict[str, str]  # prompt id -> effective-content hash
    broken: dict[str, str]  # prompt id or path -> why it could not be loaded (base side only)


@dataclass(frozen=True)
class PromptChange:
    prompt_id: str
    status: Status
    base: Target | None
    head: Target | None
    base_hash: str | None
    head_hash: str | None
    reasons: tuple[str, ...] = ()  # what differs, for the report ("prompt text", "suite", "config: models")


@dataclass(frozen=True)
class ChangeSet:
    base: Revision
    head: Revision
    changes: tuple[PromptChange, ...]
    git_prefix: str  # the repository directory relative to the git top level ("" or "sub/dir/")

    def with_status(self, *statuses: Status) -> tuple[PromptChange, ...]:
        return tuple(c for c in self.changes if c.status in statuses)

    @property
    def changed(self) -> tuple[PromptChange, ...]:
        return self.with_status("changed")


# -- git ----------------------------------------------------------------------------------------------


def git_toplevel_prefix(repo: Path) -> str:
    """The repository directory relative to the git top level; UsageError outside a git repository."""
    if not repo.is_dir():
        raise UsageError(f"repository directory {repo} does not exist", hint="pass --repo with an existing directory")
    done = Git(repo, timeout=READ_TIMEOUT_S).run("rev-parse", "--show-prefix", check=False)
    if done.returncode != 0:
        raise UsageError(
            f"{repo} is not inside a git repository",
            hint="run the gate in a git checkout (it compares two commits)",
        )
    return str(done.stdout).strip()


def resolve_ref(repo: Path, ref: str, *, what: str) -> str:
    """The full sha of the commit `ref` names; UsageError when it names none."""
    if not ref or ref.startswith("-") or any(ch in ref for ch in "\0\n\r"):
        raise UsageError(f"{what} ref {ref!r} is not a valid git revision", hint="pass a branch, tag or commit sha")
    done = Git(repo, timeout=READ_TIMEOUT_S).run(
        "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False
    )
    sha = str(done.stdout).strip()
    if done.returncode != 0 or not sha:
        raise UsageError(f"{what} ref {ref!r} does not name a commit in {repo}", hint=FETCH_HINT)
    return sha


def extract_tree(repo: Path, sha: str, prefix: str, dest: Path) -> bool:
    """Unpack the repository directory (`prefix` of the git tree) at `sha` into `dest`; False if absent."""
    tree = f"{sha}:{prefix.rstrip('/')}" if prefix else sha
    # git archive resolves `REV:path` against the working directory's own path, so run it at the top level.
    top = Path(str(Git(repo, timeout=READ_TIMEOUT_S).run("rev-parse", "--show-toplevel", check=False).stdout).strip() or repo)
    done = Git(top, timeout=READ_TIMEOUT_S).run("archive", "--format=tar", tree, binary=True, check=False)
    if done.returncode != 0:
        stderr = bytes(done.stderr).decode("utf-8", "replace").strip()
        if prefix and ("not a valid" in stderr or "does not exist" in stderr or "not a tree" in stderr):
            log.info("%s does not exist at %s", prefix, sha[:12])
            return False
        raise GitError(f"git archive {sha[:12]} failed: {stderr[:300]}", hint="check the repository is intact")
    if not bytes(done.stdout).strip(b"\0"):
        return True  # an empty tree archives to padding only
    try:
        with tarfile.open(fileobj=io.BytesIO(done.stdout), mode="r:") as archive:
            _safe_extract(archive, dest)
    except tarfile.TarError as exc:
        raise ConfigError(
            f"revision {sha[:12]} cannot be unpacked safely: {exc}",
            hint="remove links that point outside the repository",
        ) from None
    return True


def _safe_extract(archive: tarfile.TarFile, dest: Path) -> None:
    """Extract refusing links and paths that leave `dest` (tarfile's "data" filter where Python has it:
    Debian 12's Python 3.11.2 predates it)."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in archive.getmembers():
        target = (root / member.name).resolve()
        link_target = (target.parent / member.linkname).resolve() if member.issym() else None
        if member.islnk():
            link_target = (root / member.linkname).resolve()
        for path in (target, link_target):
            if path is not None and path != root and root not in path.parents:
                raise tarfile.TarError(f"{member.name} leads outside the repository")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise tarfile.TarError(f"{member.name} is not a regular file, directory or link")
    archive.extractall(dest)  # every member was checked above


# -- effective content --------------------------------------------------------------------------------


def config_sections(config: Config) -> dict[str, Any]:
    """The parts of the config that can change a prompt's score (and the gate's verdict)."""
    models = config.models
    return {
        "models": {"task": models.task.model_dump(), "judge": models.judge.model_dump()},
        "judge": config.judge.model_dump(),
        "metrics": config.metrics,
        "gate": config.gate.model_dump(),
    }


def _parts(target: Target, config: Config) -> dict[str, Any]:
    return {
        "prompt text": target.prompt.expanded,
        "description": target.prompt.description,
        "suite": target.suite.content_hash(),
        **{f"config: {k}": v for k, v in config_sections(config).items()},
    }


def effective_hash(target: Target, config: Config) -> str:
    return digest(_parts(target, config))


def _reasons(base: Target, base_config: Config, head: Target, head_config: Config) -> tuple[str, ...]:
    old, new = _parts(base, base_config), _parts(head, head_config)
    reasons = [key for key in new if digest(old[key]) != digest(new[key])]
    if "prompt text" in reasons and base.prompt.body == head.prompt.body:
        reasons[reasons.index("prompt text")] = "included file"
    return tuple(reasons)


# -- loading a revision -------------------------------------------------------------------------------


def _load_targets(root: Path, config: Config, *, strict: bool) -> tuple[dict[str, Target], dict[str, str]]:
    """Every prompt under `root` with its suite. Strict (head): errors raise. Lenient (base): recorded."""
    targets: dict[str, Target] = {}
    broken: dict[str, str] = {}
    for path in find_prompt_files(root, config):
        try:
            prompt = load_prompt(path, root)
            if prompt.id in targets:
                raise duplicate_id(prompt.id, targets[prompt.id].prompt.rel_path, prompt.rel_path)
            suite = load_suite(suite_path_for(prompt, root, config), root)
        except GradgateError as exc:
            if strict:
                raise
            rel = path.relative_to(root).as_posix()
            log.warning("base revision: %s cannot be loaded (%s); treating it as absent", rel, exc.message)
            broken[rel] = exc.message
            continue
        targets[prompt.id] = Target(prompt=prompt, suite=suite)
    return targets, broken


def _config_rel(repo: Path, config_path: Path | None) -> Path | None:
    """`--config` relative to the repository when it lies inside it (so base reads its own version)."""
    located = config_location(repo, config_path)
    if located is None:
        return None
    try:
        return located.resolve().relative_to(repo.resolve())
    except ValueError:
        return None


def _load_revision(root: Path, *, label: str, sha: str | None, repo: Path, config_path: Path | None, strict: bool) -> Revision:
    rel = _config_rel(repo, config_path)
    if config_path is not None and rel is None:
        path: Path | None = config_location(repo, config_path)  # outside the repository: one file for both sides
    elif rel is not None:
        path = root / rel
        if not strict and not path.is_file():
            path = None  # base predates that config file: defaults
    else:
        path = None
    if strict:
        config, _ = load_config(root, path)
    else:
        try:
            config, _ = load_config(root, path)
        except ConfigError as exc:
            log.warning(
                "base revision: its config cannot be loaded (%s); using the defaults for change detection",
                exc.message,
            )
            config = Config.model_validate({})
    targets, broken = _load_targets(root, config, strict=strict)
    hashes = {pid: effective_hash(t, config) for pid, t in targets.items()}
    return Revision(label=label, sha=sha, config=config, targets=targets, hashes=hashes, broken=broken)


def _compare(base: Revision, head: Revision, only: Iterable[str]) -> tuple[PromptChange, ...]:
    wanted = set(only)
    ids = list(head.targets) + [pid for pid in base.targets if pid not in head.targets]
    if wanted:
        unknown = sorted(wanted - set(ids))
        if unknown:
            raise UsageError(
                f"unknown prompt id(s): {', '.join(unknown)}",
                hint=f"prompts in base or head: {', '.join(sorted(ids)) or 'none'}",
            )
        ids = [pid for pid in ids if pid in wanted]
    changes = []
    for pid in ids:
        b, h = base.targets.get(pid), head.targets.get(pid)
        bh, hh = base.hashes.get(pid), head.hashes.get(pid)
        if b is None:
            changes.append(PromptChange(pid, "new", None, h, None, hh, ("not in base",)))
        elif h is None:
            changes.append(PromptChange(pid, "removed", b, None, bh, None, ("not in head",)))
        elif bh == hh:
            changes.append(PromptChange(pid, "unchanged", b, h, bh, hh))
        else:
            changes.append(PromptChange(pid, "changed", b, h, bh, hh, _reasons(b, base.config, h, head.config)))
    return tuple(changes)


def detect_changes(
    repo: Path,
    *,
    base_ref: str,
    head_ref: str | None = None,
    config_path: Path | None = None,
    prompt_ids: Iterable[str] = (),
) -> ChangeSet:
    """Compare the prompts of `base_ref` with those of `head_ref` (None: the working tree)."""
    repo = repo.resolve()
    prefix = git_toplevel_prefix(repo)
    base_sha = resolve_ref(repo, base_ref, what="base")
    head_sha = resolve_ref(repo, head_ref, what="head") if head_ref is not None else None
    with tempfile.TemporaryDirectory(prefix="gradgate-check-") as tmp:
        base_root = Path(tmp) / "base"
        base_root.mkdir()
        if extract_tree(repo, base_sha, prefix, base_root):
            base = _load_revision(base_root, label=base_sha[:12], sha=base_sha, repo=repo, config_path=config_path, strict=False)
        else:
            base = Revision(
                label=base_sha[:12],
                sha=base_sha,
                config=Config.model_validate({}),
                targets={},
                hashes={},
                broken={},
            )
        if head_sha is None:
            head = _load_revision(repo, label="working tree", sha=None, repo=repo, config_path=config_path, strict=True)
        else:
            head_root = Path(tmp) / "head"
            head_root.mkdir()
            if not extract_tree(repo, head_sha, prefix, head_root):
                raise UsageError(f"{prefix or 'the repository directory'} does not exist at head {head_ref!r}")
            head = _load_revision(head_root, label=head_sha[:12], sha=head_sha, repo=repo, config_path=config_path, strict=True)
    changes = _compare(base, head, prompt_ids)
    log.info(
        "changes %s -> %s: %s",
        base.label,
        head.label,
        ", ".join(f"{c.prompt_id}={c.status}" for c in changes) or "no prompts",
    )
    return ChangeSet(base=base, head=head, changes=changes, git_prefix=prefix)
