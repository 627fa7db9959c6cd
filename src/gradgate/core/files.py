"""Safe file handling: paths stay inside the repository, writes are atomic."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gradgate.errors import ConfigError, PathOutsideRepoError


def resolve_inside(repo: Path, path: str | Path, *, what: str, where: str | None = None) -> Path:
    """Resolve `path` (relative to `repo`, symlinks followed) and refuse anything outside `repo`."""
    root = repo.resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise PathOutsideRepoError(
            f"{what} {str(path)!r} leads outside the repository",
            where=where,
            hint="keep prompt and suite files (and symlink targets) inside the repository",
        )
    return resolved


def read_text(path: Path, *, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist", where=str(path), hint="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} cannot be read: {exc}", where=str(path)) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
