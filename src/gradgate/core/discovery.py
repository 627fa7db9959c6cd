"""Find the prompts of a repository and the suite each one is scored on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gradgate.core.config import Config
from gradgate.core.files import GIT_DIR, resolve_inside
from gradgate.core.prompts import Prompt, load_prompt
from gradgate.core.suites import Suite, load_suite
from gradgate.errors import ConfigError

log = logging.getLogger(__name__)

SUITE_SUFFIXES = (".yaml", ".yml", ".jsonl", ".csv")


@dataclass(frozen=True)
class Target:
    """One prompt and the suite it is scored on."""

    prompt: Prompt
    suite: Suite


def find_prompt_files(repo: Path, config: Config) -> list[Path]:
    """Files matching the `prompts` globs. Matches inside `.git/` are never prompts (skipped); a match
    that resolves into `.git/` or outside the repository through a symlink is refused."""
    root = repo.resolve()
    found: dict[Path, None] = {}
    for index, pattern in enumerate(config.prompts):
        try:
            matches = sorted(root.glob(pattern))
        except (ValueError, NotImplementedError, OSError) as exc:
            raise ConfigError(
                f"prompts[{index}] {pattern!r} is not a usable glob: {exc}",
                where=f"config prompts[{index}]",
                hint="use a glob relative to the repository root, e.g. prompts/**/*.md",
            ) from None
        for path in matches:
            if any(part.casefold() == GIT_DIR for part in path.relative_to(root).parts):
                continue
            if path.is_file() and not path.name.startswith("."):
                resolved = resolve_inside(root, path, what="prompt file", where=path.relative_to(root).as_posix())
                found.setdefault(resolved, None)
    return list(found)


def suite_path_for(prompt: Prompt, repo: Path, config: Config) -> Path:
    if prompt.suite:
        where = f"{prompt.rel_path}:suite"
        path = resolve_inside(repo, prompt.suite, what="suite", where=where)
        if not path.is_file():
            raise ConfigError(
                f"the suite {prompt.suite!r} is not a file of the repository",
                where=where,
                hint=f"fix the path in the front matter (relative to the repository root), or remove `suite:` to use "
                f"{config.suites_dir}/{prompt.id}.yaml",
            )
        return path
    for suffix in SUITE_SUFFIXES:
        candidate = repo / config.suites_dir / f"{prompt.id}{suffix}"
        if candidate.exists() or candidate.is_symlink():
            return resolve_inside(repo, candidate, what="suite", where=prompt.rel_path)
    raise ConfigError(
        f"no eval suite for prompt {prompt.id!r}",
        where=prompt.rel_path,
        hint=f"add `suite: <path>` to its front matter or create {config.suites_dir}/{prompt.id}.yaml",
    )


def duplicate_id(prompt_id: str, first: str, second: str) -> ConfigError:
    """Two prompt files (`first`, `second`: repository-relative) claim the same id."""
    return ConfigError(
        f"prompt id {prompt_id!r} is used by {first} and {second}", hint="give each prompt a unique `id:` in its front matter"
    )


def discover(repo: Path, config: Config, only: list[str] | tuple[str, ...] = ()) -> list[Target]:
    """Every prompt (or those named in `only`) with its suite, in a stable order."""
    prompts = [load_prompt(path, repo) for path in find_prompt_files(repo, config)]
    seen: dict[str, str] = {}
    for prompt in prompts:
        if prompt.id in seen:
            raise duplicate_id(prompt.id, seen[prompt.id], prompt.rel_path)
        seen[prompt.id] = prompt.rel_path
    if only:
        unknown = [p for p in only if p not in seen]
        if unknown:
            raise ConfigError(
                f"unknown prompt id(s): {', '.join(unknown)}",
                hint=f"known: {', '.join(sorted(seen)) or 'none (check the `prompts` globs)'}",
            )
        prompts = [p for p in prompts if p.id in only]
    if not prompts:
        raise ConfigError(
            f"no prompt files match {config.prompts} in {repo}",
            hint="put prompts under prompts/ or set `prompts:` globs in gradgate.yaml",
        )
    return [Target(prompt=p, suite=load_suite(suite_path_for(p, repo, config), repo)) for p in prompts]
