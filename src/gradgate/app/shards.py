"""`--shard K/N`: a deterministic share of the prompts for one of N parallel jobs, and the manifest with which
`gradgate merge` checks that the shards fit together.

    shard = Shard.parse("2/3")
    targets = select_targets(discover(repo, config), shard)       # eval
    changes = select_changes(detect_changes(...), shard)          # check: only the changed and new prompts

Assignment, balanced by suite size: greedy longest-processing-time. Prompts are taken largest suite first
(ties by prompt id) and each goes to the shard with the fewest items so far (ties: the lower shard number).
Every shard computes the same assignment from the same suites, so N jobs split the work with no coordinator.

A shard writes its partial result as an ordinary run does (results.json or check.json, report.md, report.html)
plus `shard.json`: which shard it was, its prompts, and every prompt of the whole run in the order one unsharded
run takes them (so the merged report lists them in that order).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gradgate.core.discovery import Target
from gradgate.core.files import atomic_write_text
from gradgate.errors import UsageError
from gradgate.gate.changes import ChangeSet, Status

MANIFEST = "shard.json"
MANIFEST_VERSION = 1
WORK: tuple[Status, ...] = ("changed", "new")  # the statuses a check scores; the rest are listed by every shard alike
_SHARD = re.compile(r"^\s*(\d{1,9})\s*/\s*(\d{1,9})\s*$")
MAX_SHARDS = 256  # a GitHub Actions matrix runs at most 256 jobs


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = _SHARD.match(text or "")
        if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)) <= MAX_SHARDS:
            raise UsageError(
                f"--shard {text!r} is not K/N with 1 ≤ K ≤ N ≤ {MAX_SHARDS}",
                hint="pass e.g. --shard 2/3 for the second of three shards (in a matrix: ${{ matrix.shard }}/3)",
            )
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def assign(sizes: Mapping[str, int], count: int) -> list[list[str]]:
    """Prompt ids per shard: largest suite first (ties by id), each to the least-loaded shard (ties: lowest)."""
    loads = [0] * count
    shards: list[list[str]] = [[] for _ in range(count)]
    for prompt_id in sorted(sizes, key=lambda p: (-sizes[p], p)):
        k = min(range(count), key=lambda i: (loads[i], i))
        shards[k].append(prompt_id)
        loads[k] += sizes[prompt_id]
    return shards


def _mine(sizes: Mapping[str, int], shard: Shard) -> set[str]:
    return set(assign(sizes, shard.count)[shard.index - 1])


def select_targets(targets: Sequence[Target], shard: Shard) -> list[Target]:
    """This shard's prompts, in discovery order."""
    mine = _mine({t.prompt.id: len(t.suite.items) for t in targets}, shard)
    return [t for t in targets if t.prompt.id in mine]


def work_ids(changes: ChangeSet) -> list[str]:
    return [c.prompt_id for c in changes.with_status(*WORK)]


def select_changes(changes: ChangeSet, shard: Shard) -> ChangeSet:
    """The change set with only this shard's changed and new prompts (unchanged and removed ones stay: every
    shard lists them, as one run would)."""
    work = changes.with_status(*WORK)
    mine = _mine({c.prompt_id: len(c.head.suite.items) if c.head else 0 for c in work}, shard)
    return replace(changes, changes=tuple(c for c in changes.changes if c.status not in WORK or c.prompt_id in mine))


class ShardManifest(BaseModel):
    """`shard.json`: what one shard did, so `gradgate merge` can tell that the shards fit together."""

    model_config = ConfigDict(extra="forbid")

    version: int = MANIFEST_VERSION
    kind: Literal["eval", "check"]
    index: int = Field(ge=1)
    count: int = Field(ge=1)
    prompts: list[str] = Field(description="This shard's prompts.")
    all_prompts: list[str] = Field(description="Every shard's prompts, in the order one unsharded run takes them.")
    error_exit_code: int | None = Field(None, description="check: the exit code of an error the shard met (2 or 3).")

    @classmethod
    def of(
        cls,
        kind: Literal["eval", "check"],
        shard: Shard,
        prompts: Sequence[str],
        every: Sequence[str],
        error_exit_code: int | None = None,
    ) -> ShardManifest:
        return cls(
            kind=kind,
            index=shard.index,
            count=shard.count,
            prompts=list(prompts),
            all_prompts=list(every),
            error_exit_code=error_exit_code,
        )


def write_manifest(out_dir: Path, manifest: ShardManifest) -> Path:
    path = out_dir / MANIFEST
    atomic_write_text(path, manifest.model_dump_json(indent=2) + "\n")
    return path


def _read(path: Path) -> ShardManifest:
    try:
        return ShardManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise UsageError(
            f"{path} is not a gradgate shard manifest: {exc}", hint="pass the --out directories of the shards"
        ) from exc


def find_manifests(dirs: Sequence[Path]) -> list[tuple[Path, ShardManifest]]:
    """(directory, manifest) of every shard: each DIR is a shard's output directory, or holds them one level
    down (actions/download-artifact puts each artifact in its own folder)."""
    found: list[tuple[Path, ShardManifest]] = []
    for directory in dirs:
        if (directory / MANIFEST).is_file():
            found.append((directory, _read(directory / MANIFEST)))
            continue
        below = sorted(p.parent for p in directory.glob(f"*/{MANIFEST}")) if directory.is_dir() else []
        if not below:
            raise UsageError(
                f"no {MANIFEST} in {directory} or its subdirectories", hint="pass the --out directories of the shards"
            )
        found += [(d, _read(d / MANIFEST)) for d in below]
    return sorted(found, key=lambda pair: pair[1].index)


def check_complete(found: Sequence[tuple[Path, ShardManifest]]) -> None:
    """Every shard of one run, each once: one kind, one count, indices 1..N, the same prompt list."""
    if not found:
        raise UsageError("no shard to merge", hint="pass the --out directories of the shards")
    first = found[0][1]
    hint = "merge the shards of one run: the same command, revisions and --shard count"
    for path, m in found:
        if (m.kind, m.count, m.all_prompts) != (first.kind, first.count, first.all_prompts):
            raise UsageError(f"{path} holds a shard of another run ({m.kind} {m.index}/{m.count})", hint=hint)
    indices = [m.index for _, m in found]
    missing = sorted(set(range(1, first.count + 1)) - set(indices))
    twice = sorted({i for i in indices if indices.count(i) > 1})
    if missing or twice:
        what = "; ".join(
            part
            for part in (
                f"missing shard(s) {', '.join(f'{i}/{first.count}' for i in missing)}" if missing else "",
                f"shard(s) {', '.join(str(i) for i in twice)} given twice" if twice else "",
            )
            if part
        )
        raise UsageError(f"cannot merge: {what}", hint="a shard job that failed before writing its result must be rerun")
    claimed = [p for _, m in found for p in m.prompts]
    if len(claimed) != len(set(claimed)) or set(claimed) != set(first.all_prompts):
        raise UsageError("cannot merge: the shards' prompts overlap or differ from the run's", hint=hint)
