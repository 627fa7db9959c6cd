"""``gradgate init``: write a working starter setup into a repository.

The starter files are package data under ``templates/init``; ``TEMPLATES`` says where each one goes. Template
names are flat because packaging tools skip hidden directories such as ``.github``. ``.gitignore`` is the one file
init may change rather than create: it appends the lines that keep gradgate's caches and reports out of git
(a committed cache is refused at run time, since its entries could forge model replies), and keeps every line
already there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gradgate.core.files import atomic_write_text, outside_git_dir, resolve_inside
from gradgate.errors import ConfigError, GradgateError

logger = logging.getLogger(__name__)

# template file name -> path relative to the target repository
TEMPLATES: dict[str, str] = {
    "gradgate.yaml": "gradgate.yaml",
    "example.md": "prompts/example.md",
    "example.yaml": "evals/example.yaml",
    "gradgate-check.yml": ".github/workflows/gradgate-check.yml",
}


# What gradgate writes into a repository and git should not carry: the response cache and the default --out.
IGNORED = (".gradgate/", "gradgate-out/")
IGNORE_COMMENT = "# gradgate: caches and reports (a committed cache is refused; carry it with actions/cache)"


@dataclass(frozen=True)
class Scaffold:
    """What `init_repository` did: the starter files it created, in ``TEMPLATES`` order, and what it did to
    ``.gitignore`` (a sentence, or None when the file already ignored everything)."""

    created: list[Path]
    gitignore: str | None


def template_text(name: str) -> str:
    """The text of starter template ``name`` (a key of ``TEMPLATES``)."""
    return resources.files("gradgate").joinpath("templates", "init", name).read_text(encoding="utf-8")


def init_repository(target: Path) -> Scaffold:
    """Write the starter files into ``target``, then make ``.gitignore`` ignore gradgate's outputs.

    Nothing is written when any starter file already exists: the ``ConfigError`` lists every clash.
    """
    target = Path(target)
    outside_git_dir(target, what="init directory", hint="pass the repository's work tree, not its .git directory")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file, not a directory", hint="pass the repository's directory")

    # A symlinked `prompts/` or `.github/` must not carry the starter files out of the directory.
    def checked(relative: str) -> Path:
        return resolve_inside(target, relative, what="starter file", where=str(target), hint="remove the symlink, then rerun")

    for relative in TEMPLATES.values():
        checked(relative)
    gitignore = checked(".gitignore")
    destinations = [target / relative for relative in TEMPLATES.values()]
    clashes = [path for path in destinations if path.exists() or path.is_symlink()]
    if clashes:
        listed = ", ".join(str(path.relative_to(target)) for path in clashes)
        raise ConfigError(
            f"refusing to overwrite existing files: {listed}",
            hint="move or delete them first, or edit them by hand; gradgate init wrote nothing",
            where=str(target),
        )
    # Read every template before writing anything, so a broken install cannot leave half a setup behind.
    texts = [template_text(name) for name in TEMPLATES]
    for path, text in zip(destinations, texts, strict=True):
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            raise GradgateError(f"cannot write {path}: {exc.strerror or exc}", hint="pass a directory you can write to") from None
        logger.info("wrote %s", path)
    # The resolved path: a `.gitignore` symlinked to a file inside the repository is appended to, not replaced by a
    # regular file (an atomic write renames over whatever sits at the path it is given).
    return Scaffold(created=destinations, gitignore=ignore_outputs(gitignore))


def ignore_outputs(path: Path) -> str | None:
    """Append the `IGNORED` lines ``path`` lacks (a line naming the same directory with or without its slashes
    counts); create the file when it does not exist. A sentence for the user, None when nothing was missing."""
    if path.exists() and not path.is_file():
        return f"{path} is not a file: add {', '.join(IGNORED)} to your ignore rules by hand"
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        return f"could not read {path} ({exc}): add {', '.join(IGNORED)} to it by hand"
    present = {line.strip().strip("/") for line in old.splitlines()}
    missing = [entry for entry in IGNORED if entry.strip("/") not in present]
    if not missing:
        return None
    separator = "" if not old or old.endswith("\n") else "\n"
    try:
        atomic_write_text(path, old + separator + "\n".join([IGNORE_COMMENT, *missing]) + "\n", redact_secrets=False)
    except OSError as exc:
        return f"could not write {path} ({exc.strerror or exc}): add {', '.join(missing)} to it by hand"
    return f"added {', '.join(missing)} to {path}" if old else f"created {path} ({', '.join(missing)})"
