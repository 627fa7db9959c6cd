"""``gradgate init``: write a working starter setup into a repository.

The starter files are package data under ``templates/init``; ``TEMPLATES`` says where each one goes. Template
names are flat because packaging tools skip hidden directories such as ``.github``.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from gradgate.core.files import atomic_write_text
from gradgate.errors import ConfigError

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
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file, not a directory", hint="pass the repository's directory")
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
        atomic_write_text(path, text)
        logger.info("wrote %s", path)
    return destinations
