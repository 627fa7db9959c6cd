"""``gradgate init``: write a working starter setup into a repository.

The starter files are package data under ``templates/init``; ``TEMPLATES`` says where each one goes. Template
names are flat because packaging tools skip hidden directories such as ``.github``.
"""

from __future__ import annotations

import logging
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


def template_text(name: str) -> str:
    """The text of starter template ``name`` (a key of ``TEMPLATES``)."""
    return resources.files("gradgate").joinpath("templates", "init", name).read_text(encoding="utf-8")


def init_repository(target: Path) -> list[Path]:
    """Write the starter files into ``target`` and return their paths, in ``TEMPLATES`` order.

    Nothing is written when any of them already exists: the ``ConfigError`` lists every clash.
    """
    target = Path(target)
    outside_git_dir(target, what="init directory", hint="pass the repository's work tree, not its .git directory")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file, not a directory", hint="pass the repository's directory")
    # A symlinked `prompts/` or `.github/` must not carry the starter files out of the directory.
    for relative in TEMPLATES.values():
        resolve_inside(target, relative, what="starter file", where=str(target), hint="remove the symlink, then rerun")
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
    return destinations
