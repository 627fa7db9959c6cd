"""Safe file handling: paths stay inside the repository (and out of `.git/`), reads strip a BOM and
parse untrusted YAML/JSON into a `ConfigError` on any failure, writes are atomic and redacted.

Prompt files, suites and configs arrive in pull requests: every loader goes through these helpers, so
hostile input ends as a `ConfigError` (exit 2, with the file and a hint), never as a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from gradgate.core.secrets import redact
from gradgate.errors import ConfigError, PathInGitDirError, PathOutsideRepoError

log = logging.getLogger(__name__)
T = TypeVar("T")
BOM = "\ufeff"
GIT_DIR = ".git"
MAX_NESTING = 64  # levels of lists/mappings in any config, front matter, suite or JSONL row
MAX_VALUES = 1_000_000  # values after expanding YAML aliases ("billion laughs")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f]")


def shown(text: str | Path, limit: int = 200) -> str:
    """A name from untrusted input, fit for a message: quoted, control characters escaped (repr), at most
    `limit` characters before an ellipsis. Paste-safe as a shell word for ordinary names."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _git_parts(parts: Iterable[str]) -> bool:
    return any(part.casefold() == GIT_DIR for part in parts)


def _relative_parts(path: Path, *roots: Path) -> tuple[str, ...] | None:
    for root in roots:
        try:
            return path.relative_to(root).parts
        except ValueError:
            continue
    return None


def resolve_inside(repo: Path, path: str | Path, *, what: str, where: str | None = None, hint: str | None = None) -> Path:
    """Resolve `path` (relative to `repo`, symlinks followed); refuse anything outside `repo` or under `.git/`.

    This is the one place every prompt, include, suite, dataset and cache path is resolved, so the rules
    hold everywhere: no NUL byte, no escape through `..` or a symlink, no `.git` path component (before
    or after resolving symlinks: `.git/config` holds the job's token under actions/checkout).
    """
    text = str(path)
    if "\x00" in text:
        raise ConfigError(f"{what} {shown(path)} contains a NUL byte", where=where, hint="remove the NUL character from the path")
    root = repo.resolve()
    candidate = Path(path)
    raw_parts = candidate.parts if not candidate.is_absolute() else (_relative_parts(candidate, repo, root) or ())
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"{what} {shown(path)} cannot be resolved: {exc}", where=where, hint="check the path") from None
    if resolved != root and root not in resolved.parents:
        raise PathOutsideRepoError(
            f"{what} {shown(path)} leads outside the repository",
            where=where,
            hint=hint or "keep prompt and suite files (and symlink targets) inside the repository",
        )
    if _git_parts(raw_parts) or _git_parts(resolved.relative_to(root).parts):
        raise PathInGitDirError(
            f"{what} {shown(path)} leads into the repository's .git directory",
            where=where,
            hint="gradgate never reads or writes under .git/ (it holds credentials and hooks); use a file of the work tree",
        )
    return resolved


def outside_git_dir(path: str | Path, *, what: str, hint: str, where: str | None = None) -> Path:
    """`path` resolved (symlinks followed); refused when it names or leads into a `.git` directory, which holds
    the job's token under actions/checkout and the repository's hooks."""
    given = Path(path)
    try:
        resolved = given.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"{what} {shown(path)} cannot be resolved: {exc}", where=where, hint=hint) from None
    if _git_parts(Path(os.path.abspath(given)).parts) or _git_parts(resolved.parts):
        raise PathInGitDirError(
            f"{what} {shown(path)} leads into a .git directory",
            where=where,
            hint="gradgate never reads or writes under .git/ (it holds credentials and hooks); " + hint,
        )
    return resolved


_SYSTEM_DIRS = (Path("/dev"), Path("/proc"), Path("/sys"))


def output_location(repo: Path, path: str | Path, *, what: str, hint: str, directory: bool) -> Path:
    """An output path a command names (`--out`: a `directory`; `--junit`: a file), checked before any model call:
    a folder to create or reuse (or a file in one), never a device or system path, never under `.git`.

    The person running gradgate may put reports anywhere else. A path that lies inside the repository must stay
    there once symlinks are followed: the repository's contents are untrusted, and a committed `gradgate-out` link
    to `.git` or to a folder outside would otherwise receive the reports.
    """
    text = str(path)
    if not text.strip() or "\x00" in text:
        raise ConfigError(f"{what} {shown(path)} is not a usable path", hint=hint)
    lexical = Path(os.path.abspath(text))  # `..` folded, no symlink followed
    resolved = outside_git_dir(text, what=what, hint=hint)
    root, repo_lexical = repo.resolve(), Path(os.path.abspath(repo))
    in_repo = any(lexical == r or r in lexical.parents for r in (root, repo_lexical))
    if in_repo and resolved != root and root not in resolved.parents:
        raise PathOutsideRepoError(
            f"{what} {shown(path)} is inside the repository but a symlink leads it out (to {shown(resolved)})",
            hint="remove the symlink from the repository, or name a folder outside it; " + hint,
        )
    if any(resolved == system or system in resolved.parents for system in _SYSTEM_DIRS):
        raise ConfigError(f"{what} {shown(path)} is a system path ({resolved}), not a place for reports", hint=hint)
    if not directory and resolved.is_dir():
        raise ConfigError(f"{what} {shown(path)} is a directory, not a file", hint=hint)
    probe = resolved if directory else resolved.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {shown(path)}: {probe} exists and is not a directory", hint=hint)
    return resolved


def strip_bom(text: str) -> str:
    """A UTF-8 byte-order mark is an encoding artefact, not content (editors on Windows add it; a file saved
    twice that way carries two)."""
    return text.lstrip(BOM)


def read_text(path: Path, *, what: str) -> str:
    """The file as text: UTF-8, BOM stripped, newlines as \\n; a missing, unreadable or non-regular file is a ConfigError."""
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{what} is not a regular file", where=str(path), hint="point to a file, not a directory or device")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist", where=str(path), hint="check the path") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} cannot be read: {exc}", where=str(path)) from None
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise ConfigError(
            f"{what} holds a NUL byte (line {line}): not a text file", where=str(path), hint="save the file as UTF-8 text"
        )
    try:
        text = strip_bom(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} is not valid UTF-8 (byte {exc.start}, line {line})", where=str(path), hint="save the file as UTF-8"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as open() in text mode


def _parse_failure(exc: BaseException, *, fmt: str, where: str, label: str) -> ConfigError:
    prefix = f"{label} " if label else ""
    if isinstance(exc, RecursionError):
        return ConfigError(
            f"{prefix}nests too deeply to be read as {fmt}",
            where=where,
            hint=f"flatten the structure (at most {MAX_NESTING} levels of lists and mappings)",
        )
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return ConfigError(
            f"{prefix}holds a number with too many digits", where=where, hint="quote long numbers so they are read as text"
        )
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if isinstance(exc, json.JSONDecodeError):
        at = f" at column {exc.colno}"
    problem = getattr(exc, "problem", None) or getattr(exc, "msg", None) or str(exc)
    return ConfigError(
        f"{prefix}is not valid {fmt}{at}: {problem}",
        where=where,
        hint="check indentation and quoting" if fmt == "YAML" else "one JSON value per line",
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping: YAML would keep the last silently, so a
    second `metrics:` in a pull request could quietly replace the first. Keys brought in by a `<<` merge may
    still be overridden, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key_node.value[:80]!r} appears twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key[:80]!r} appears twice in one object")
        data[key] = value
    return data


def parse_yaml(text: str, *, where: str, label: str = "") -> Any:
    """`yaml.safe_load` of untrusted text: any failure (syntax, bad tags, deep nesting, huge numbers) is a
    ConfigError, and the result passes `check_tree`."""
    try:
        data = yaml.load(strip_bom(text), Loader=_UniqueKeyLoader)
    except Exception as exc:  # the parser raises many types on hostile text (ValueError, AttributeError, ...)
        raise _parse_failure(exc, fmt="YAML", where=where, label=label) from None
    check_tree(data, where=where)
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, *, where: str, label: str = "") -> Any:
    """`json.loads` of untrusted text (NaN and Infinity refused); failures are ConfigErrors."""
    try:
        data = json.loads(strip_bom(text), parse_constant=_no_constants, object_pairs_hook=_unique_pairs)
    except Exception as exc:
        raise _parse_failure(exc, fmt="JSON", where=where, label=label) from None
    check_tree(data, where=where)
    return data


def _key_path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def check_tree(data: Any, *, where: str, max_nesting: int = MAX_NESTING, max_values: int = MAX_VALUES) -> None:
    """Refuse what parses but breaks later: nesting deeper than `max_nesting` (recursion in validation,
    hashing, JSON output), alias bombs and cycles, and strings with lone surrogates (they cannot be
    encoded as UTF-8, so reports and requests would fail after model calls).

    Iterative, and linear in the parsed size: shared (aliased) nodes are visited once.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id -> (values after expansion, height)
    open_nodes: set[int] = set()
    stack: list[tuple[Any, str, bool]] = [(data, "", False)]
    while stack:
        node, path, done = stack.pop()
        if isinstance(node, str):
            _check_string(node, where=where, path=path)
            continue
        if not isinstance(node, dict | list | tuple | set | frozenset):
            continue
        key = id(node)
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        if done:
            open_nodes.discard(key)
            values, height = 1, 1
            for name, child in children:
                child_size, child_height = sizes.get(id(child), (1, 0))
                values += child_size + (1 if isinstance(node, dict) else 0)
                height = max(height, child_height + 1)
                if isinstance(name, str):
                    _check_string(name, where=where, path=path)
            sizes[key] = (values, height)
            if height > max_nesting:
                raise ConfigError(
                    f"nests more than {max_nesting} levels deep",
                    where=f"{where}:{path}" if path else where,
                    hint="flatten the structure",
                )
            if values > max_values:
                raise ConfigError(
                    f"expands to more than {max_values} values (YAML aliases?)", where=where, hint="write the data out plainly"
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ConfigError("refers to itself (a YAML alias cycle)", where=f"{where}:{path}" if path else where)
        open_nodes.add(key)
        stack.append((node, path, True))
        if len(stack) + len(children) > max_values:
            raise ConfigError(f"holds more than {max_values} values", where=where, hint="split the file")
        for name, child in children:
            stack.append((child, _key_path(path, name), False))


def _check_string(text: str, *, where: str, path: str) -> None:
    if _SURROGATE_RE.search(text):
        raise ConfigError(
            "holds a lone UTF-16 surrogate (e.g. an escaped \\ud800), which is not valid Unicode text",
            where=f"{where}:{path}" if path else where,
            hint="remove the escape or write the character itself",
        )
    if "\x00" in text:
        raise ConfigError(
            "holds a NUL character (\\u0000), which no prompt or answer needs",
            where=f"{where}:{path}" if path else where,
            hint="remove it; a NUL often means a binary file or a broken export",
        )


def has_control_chars(text: str) -> bool:
    return _CONTROL_RE.search(text) is not None


class DistrustedFiles:
    """Reads back files gradgate wrote earlier (its caches) as untrusted input: damaged or planted ones are misses.

        reader = DistrustedFiles("response cache entry", "the request is sent to the model again", root=repo)
        raw = reader.read(path)          # None: absent, unreadable or too big
        reader.malformed(path, "why")    # the first one of a run is a warning, later ones debug lines

    One warning per reader: a damaged cache must neither flood the log nor go unnoticed. `root` (the repository)
    only shortens the file names shown."""

    def __init__(self, what: str, consequence: str, *, max_bytes: int, root: Path | None = None) -> None:
        self.what, self.consequence, self.max_bytes, self.root = what, consequence, max_bytes, root
        self._warned = False

    def load(self, path: Path, parse: Callable[[bytes], T]) -> T | None:
        """`parse` (a pydantic validator) applied to the file: None when absent, unreadable, too big or invalid."""
        raw = self.read(path)
        if raw is None:
            return None
        try:
            return parse(raw)
        except ValidationError as exc:
            self.malformed(path, validation_summary(exc))
            return None

    def read(self, path: Path) -> bytes | None:
        try:
            if path.stat().st_size > self.max_bytes:
                self.malformed(path, f"larger than {self.max_bytes} bytes")
                return None
            return path.read_bytes()
        except OSError:
            return None  # absent (the usual miss) or unreadable

    def malformed(self, path: Path, why: str) -> None:
        if self._warned:
            log.debug("malformed %s %s ignored: %s", self.what, path, why)
            return
        self._warned = True
        shown = path
        if self.root is not None:
            with contextlib.suppress(ValueError):
                shown = path.relative_to(self.root)
        log.warning(
            "malformed %s %s ignored (%s): %s; further malformed files are not reported",
            self.what,
            shown,
            why[:200],
            self.consequence,
        )


def first_problem(exc: ValidationError) -> tuple[tuple[int | str, ...], str]:
    """Where (the key path) and what the first problem pydantic found is, without echoing the (untrusted, maybe
    huge) input."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return (), "invalid"
    return tuple(errors[0].get("loc", ())), str(errors[0].get("msg", "invalid"))


def validation_summary(exc: ValidationError) -> str:
    """`first_problem` as one line: "key.path: message"."""
    loc, message = first_problem(exc)
    return f"{'.'.join(str(part) for part in loc)}: {message}" if loc else message


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file. New files are 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; a report must stay readable to later workflow steps. An existing file keeps its
        # mode (an executable bit, say), made readable to all.
        os.chmod(tmp, (path.stat().st_mode & 0o777) | 0o444 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, *, redact_secrets: bool = True) -> None:
    """Atomic UTF-8 write. Reports, results and caches go through here, so secrets are masked on the way
    out (`gradgate.core.secrets.redact`) unless the caller writes exact bytes it must keep."""
    atomic_write_bytes(path, (redact(text) if redact_secrets else text).encode("utf-8"))


def digest(payload: Any) -> str:
    """SHA-256 of `payload` as canonical JSON (sorted keys, no spaces, non-JSON values as text): the one content
    hash behind cache keys, base-score keys, run fingerprints and suite hashes."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
