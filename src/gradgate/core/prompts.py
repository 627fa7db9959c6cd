"""Prompt files: optional YAML front matter, then a body with `{{variable}}` placeholders.

    ---
    id: math
    description: Solve grade-school word problems.
    suite: evals/math.yaml
    ---
    Solve the problem step by step. {{> partials/format.md}}
    Problem: {{question}}

`{{> path}}` includes another file (relative to the prompt, inside the repository). Writing a prompt
back replaces only the body: front matter, comments and line endings stay byte-for-byte.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradgate.core.demos import SLOT_HINT, find_slot, marker_lines, slot_problem, strip_slot_markers
from gradgate.core.files import BOM, atomic_write_bytes, parse_yaml, read_text, resolve_inside
from gradgate.errors import ConfigError

VARIABLE_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
INCLUDE_RE = re.compile(r"\{\{>\s*([^}\s]+)\s*\}\}")
_FRONT_MATTER_RE = re.compile(r"\A(---[ \t]*\r?\n)(.*?)(\r?\n---[ \t]*(?:\r?\n|\Z))", re.DOTALL)
MAX_INCLUDE_DEPTH = 8
MAX_INCLUDES = 200  # files pulled in by one prompt, all levels together (fan-out bombs)
FRONT_MATTER_KEYS = ("id", "description", "suite", "variables", "tags")


@dataclass(frozen=True)
class Prompt:
    id: str
    path: Path  # absolute
    rel_path: str  # relative to the repository, posix
    body: str  # as written, includes not expanded
    front_matter: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    suite: str | None = None
    includes: tuple[Path, ...] = ()  # files the body pulls in (for change detection)
    expanded: str = ""  # body with includes expanded: what is sent to the model
    body_line: int = 1  # 1-based line where the body starts, for annotations

    @property
    def variables(self) -> list[str]:
        return template_variables(self.expanded)

    def render(self, values: dict[str, Any], *, where: str | None = None) -> str:
        return render_template(strip_slot_markers(self.expanded), values, where=where or self.rel_path)

    def with_body(self, body: str) -> Prompt:
        """The same prompt with another body (the optimizers' candidates); includes are kept as text."""
        return Prompt(
            id=self.id,
            path=self.path,
            rel_path=self.rel_path,
            body=body,
            front_matter=self.front_matter,
            description=self.description,
            suite=self.suite,
            includes=self.includes,
            expanded=_expand_known_includes(body, self),
            body_line=self.body_line,
        )

    def content_hash(self) -> str:
        return hashlib.sha256(self.expanded.encode("utf-8")).hexdigest()


def contains_include(text: str) -> bool:
    """Whether expanding `text` would read a file (`{{> path}}`). Model-written candidates must not."""
    return INCLUDE_RE.search(text) is not None


def include_targets(text: str) -> list[str]:
    """The include paths in `text`, as written, in order."""
    return [match.group(1) for match in INCLUDE_RE.finditer(text)]


def template_variables(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for match in VARIABLE_RE.finditer(text):
        seen.setdefault(match.group(1), None)
    return list(seen)


def render_template(text: str, values: dict[str, Any], *, where: str | None = None) -> str:
    missing = [name for name in template_variables(text) if _lookup(values, name) is None]
    if missing:
        raise ConfigError(
            f"template variable(s) {', '.join(missing)} have no value",
            where=where,
            hint=f"add {', '.join(missing)} to every suite row's vars (have: {', '.join(sorted(values)) or 'none'})",
        )
    return VARIABLE_RE.sub(lambda m: str(_lookup(values, m.group(1))), text)


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    current: Any = values
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def split_front_matter(text: str) -> tuple[str, str]:
    """(front matter block including both `---` lines, body)."""
    match = _FRONT_MATTER_RE.match(text)
    if not match:
        return "", text
    return text[: match.end()], text[match.end() :]


def load_prompt(path: Path, repo: Path) -> Prompt:
    path = resolve_inside(repo, path.absolute(), what="prompt file")  # a relative path is relative to the cwd
    rel = path.relative_to(repo.resolve()).as_posix()
    text = read_text(path, what="prompt file")
    head, body = split_front_matter(text)
    meta: dict[str, Any] = {}
    if head:
        inner = _FRONT_MATTER_RE.match(text)
        assert inner is not None  # split_front_matter matched the same text
        loaded = parse_yaml(inner.group(2), where=rel, label="front matter")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("front matter must be a mapping", where=rel, hint="e.g. `id: my-prompt`")
        meta = loaded or {}
    _check_front_matter(meta, rel)
    prompt_id = str(meta.get("id") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prompt_id):
        raise ConfigError(
            f"prompt id {prompt_id!r} is not valid", where=f"{rel}:id", hint="use letters, digits, '-', '_' and '.'"
        )
    body_line = head.count("\n") + 1
    problem = slot_problem(body, first_line=body_line)
    if problem is not None:
        raise ConfigError(problem.message, where=f"{rel}:{problem.line}", hint=SLOT_HINT)
    span = find_slot(body)
    if span is not None and "{{" in body[span[0] : span[1]]:
        # The optimizers rewrite the slot whole: a variable there would be lost, an include silently replaced.
        line = body_line + body.count("\n", 0, span[0] + body[span[0] : span[1]].index("{{"))
        raise ConfigError(
            "the demonstrations slot holds `{{`: a variable or include inside it would be lost when an optimizer writes the slot",
            where=f"{rel}:{line}",
            hint="move the variable or `{{> include}}` outside the two marker lines (write a literal brace pair as `{ {`)",
        )
    includes: list[Path] = []
    spans: list[tuple[int, int, int]] = []
    expanded = _expand_includes(body, path, repo, includes, depth=0, where=rel, spans=spans)
    _check_expanded_markers(body, expanded, spans, rel, body_line)
    declared = meta.get("variables")
    if declared is not None:
        if not isinstance(declared, list) or not all(isinstance(v, str) for v in declared):
            raise ConfigError("variables must be a list of names", where=f"{rel}:variables")
        undeclared = [v for v in template_variables(expanded) if v not in declared]
        if undeclared:
            raise ConfigError(
                f"placeholder(s) {', '.join(undeclared)} are not in the declared variables",
                where=rel,
                hint="declare them in front matter `variables:` or remove them",
            )
    return Prompt(
        id=prompt_id,
        path=path.resolve(),
        rel_path=rel,
        body=body,
        front_matter=meta,
        description=meta.get("description"),
        suite=meta.get("suite"),
        includes=tuple(includes),
        expanded=expanded,
        body_line=body_line,
    )


def _check_expanded_markers(body: str, expanded: str, spans: list[tuple[int, int, int]], rel: str, body_line: int) -> None:
    """The includes must leave the body's marker lines as they are: none can be formed across an include's edge
    (`<!-- gradgate:{{> x}} -->`) or swallowed into an include directive (included files' own are refused)."""
    have = marker_lines(body)
    got = marker_lines(expanded)
    if [(m.kind, m.text) for m in have] == [(m.kind, m.text) for m in got]:
        return
    index = next((i for i, (a, b) in enumerate(zip(have, got, strict=False)) if (a.kind, a.text) != (b.kind, b.text)), None)
    index = min(len(have), len(got)) if index is None else index
    swallowed = index < len(have) and any(start <= have[index].start < end for start, end, _ in spans)
    if index < len(got) and not swallowed:
        offset, shown = _body_offset(got[index].start, spans), got[index].text
    else:
        offset, shown = have[index].start, have[index].text
    line = body_line + body.count("\n", 0, offset)
    raise ConfigError(
        f"line {line}: an include makes or swallows a demonstrations marker line ({shown.strip()[:80]!r})",
        where=f"{rel}:{line}",
        hint="write each marker line out in the prompt file, not completed or swallowed by a `{{> include}}`; " + SLOT_HINT,
    )


def _body_offset(offset: int, spans: list[tuple[int, int, int]]) -> int:
    """Where an offset of the expanded body lies in the body: an include's expansion maps to its directive."""
    shift = 0
    for start, end, length in spans:
        if offset < start + shift:
            break
        if offset < start + shift + length:
            return start
        shift += length - (end - start)
    return offset - shift


def _check_front_matter(meta: dict[Any, Any], rel: str) -> None:
    """Types of the front matter keys: a prompt file comes from a pull request like any other input."""
    unknown = [str(key) for key in meta if key not in FRONT_MATTER_KEYS]
    if unknown:
        raise ConfigError(
            f"unknown front matter key(s): {', '.join(sorted(unknown))[:300]}",
            where=rel,
            hint="allowed: " + ", ".join(FRONT_MATTER_KEYS),
        )
    prompt_id = meta.get("id")
    if prompt_id is not None and (isinstance(prompt_id, bool) or not isinstance(prompt_id, str | int)):
        raise ConfigError("`id` must be text", where=f"{rel}:id", hint="e.g. `id: my-prompt`")
    description = meta.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError("`description` must be text", where=f"{rel}:description", hint="quote it")
    suite = meta.get("suite")
    if suite is not None:
        if not isinstance(suite, str) or not suite.strip():
            raise ConfigError(
                f"`suite` must be a path, not {type(suite).__name__ if suite != '' else 'empty text'}",
                where=f"{rel}:suite",
                hint="e.g. `suite: evals/my-prompt.yaml` (relative to the repository root)",
            )
        if "\x00" in suite:
            raise ConfigError("`suite` contains a NUL byte", where=f"{rel}:suite", hint="remove the NUL character")
    for key in ("variables", "tags"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise ConfigError(f"`{key}` must be a list of names", where=f"{rel}:{key}", hint=f"e.g. `{key}: [question]`")


def _expand_includes(
    text: str,
    origin: Path,
    repo: Path,
    acc: list[Path],
    *,
    depth: int,
    where: str,
    spans: list[tuple[int, int, int]] | None = None,
) -> str:
    """`text` with its includes expanded; `spans` gets (start, end, expanded length) of each of its own directives.

    An included file may hold no demonstrations marker: the slot lives in the prompt file, the only file that
    write-back changes, and an included file is shared (a marker there would be stripped but never be the slot)."""
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfigError("includes nest too deeply (a cycle?)", where=where, hint=f"at most {MAX_INCLUDE_DEPTH} levels")

    def replace(match: re.Match[str]) -> str:
        include = match.group(1)
        if len(acc) >= MAX_INCLUDES:
            raise ConfigError(f"pulls in more than {MAX_INCLUDES} included files", where=where, hint="include fewer files")
        shown = include if include.isprintable() else ascii(include)
        root = repo.resolve()
        relative = origin.parent.relative_to(root) / include if origin.parent.is_relative_to(root) else origin.parent / include
        target = resolve_inside(repo, relative, what=f"include {{{{> {shown}}}}}: file", where=where)
        acc.append(target)
        included = read_text(target, what="included file")
        for marker in marker_lines(included)[:1]:
            name = target.relative_to(root).as_posix() if target.is_relative_to(root) else str(target)
            raise ConfigError(
                f"line {marker.line} holds a demonstrations marker ({marker.text.strip()[:80]!r}), "
                f"and {where} includes this file ({{{{> {shown}}}}})",
                where=f"{name}:{marker.line}",
                hint="the demonstrations slot lives in the prompt file itself; remove the marker lines from the included file",
            )
        expanded = _expand_includes(included, target, repo, acc, depth=depth + 1, where=where)
        if spans is not None:
            spans.append((match.start(), match.end(), len(expanded)))
        return expanded

    return INCLUDE_RE.sub(replace, text)


def _expand_known_includes(body: str, prompt: Prompt) -> str:
    repo_root = prompt.path
    for _ in prompt.rel_path.split("/"):
        repo_root = repo_root.parent
    return _expand_includes(body, prompt.path, repo_root, [], depth=0, where=prompt.rel_path)


def _dominant_newline(text: str) -> str:
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf >= text.count("\n") - crlf else "\n"


def write_prompt_body(prompt: Prompt, new_body: str) -> None:
    """Replace only the body of the prompt file; everything before it stays byte-for-byte."""
    atomic_write_bytes(prompt.path, prompt_file_bytes(prompt, new_body))


def prompt_file_bytes(prompt: Prompt, new_body: str) -> bytes:
    """The prompt file's bytes with its body replaced; front matter and newline habits kept byte-for-byte."""
    raw = prompt.path.read_bytes()
    text = raw.decode("utf-8")
    bom = text[: len(text) - len(text.lstrip(BOM))]  # the byte-order marks, kept as they were, before the front matter
    head, old_body = split_front_matter(text[len(bom) :])
    head = bom + head
    newline = _dominant_newline(old_body) if old_body else _dominant_newline(text)
    body = new_body.replace("\r\n", "\n").replace("\n", newline)
    # Keep the file's trailing-newline habit.
    if old_body.endswith(newline) and not body.endswith(newline):
        body += newline
    elif not old_body.endswith(("\n", "\r")) and body.endswith(newline):
        body = body[: -len(newline)]
    return head.encode("utf-8") + body.encode("utf-8")
