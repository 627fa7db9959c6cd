"""Per-item scores for the gate: scoring one version of a prompt, the score cache, and each side's calls.

    side = Side.open(session, target, cache)     # one version (base or head) of a changed prompt
    await side.score(batch, repeats)             # from the score cache where it can, else from the model

An item's score is the mean over `repeats` samples; with its pass count it gives the item's flip rate (the
chance that two repeats disagree on pass/fail). Items the budget cut short are left out (`missing`), so are
items the judge gave no verdict for (`unjudged`), as in `gradgate eval`.

The score cache holds per-item scores of every version the gate has scored, base and head alike: one JSON
file per (prompt text, suite settings, scoring config, repeats), one entry per item content hash. A pull
request's base is usually the head of an earlier run (on the pull request, or on the main branch after the
merge), so with `.gradgate/` kept between runs (actions/cache) the base costs nothing.

Base and head are scored at the same time under the gateway's one concurrency limit; each side counts its
own real model calls through a counting view of the shared gateway (same budget, cache and limit).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gradgate.core.config import Config, ModelSpec, check_cache_untracked
from gradgate.core.discovery import Target
from gradgate.core.files import DistrustedFiles, atomic_write_text, digest
from gradgate.core.suites import Item
from gradgate.errors import BudgetExhausted
from gradgate.gate.changes import config_sections
from gradgate.models.gateway import Backend, BackendReply, Gateway
from gradgate.models.session import Session
from gradgate.scoring.scorer import Scorer

log = logging.getLogger(__name__)

SCORE_CACHE_VERSION = 2
SCORE_CACHE_DIR = "gate-scores"
UNSCORED_JUDGE_KEYS = ("min_agreement", "score_untrusted")
MAX_SCORE_FILE_BYTES = 64 * 1024 * 1024  # a bigger file is not one gradgate wrote: a miss


@dataclass(frozen=True)
class ItemScore:
    mean: float  # mean score over the samples
    passes: int  # samples that passed
    samples: int

    @property
    def flip_rate(self) -> float | None:
        """Chance that two of this item's samples disagree on pass/fail (None with one sample)."""
        n, k = self.samples, self.passes
        return 2 * k * (n - k) / (n * (n - 1)) if n > 1 else None


def item_key(item: Item) -> str:
    return digest([item.id, item.vars, item.expected, list(item.assertions)])


class _StoredScores(BaseModel):
    """A score cache file, validated strictly: the cache directory is read back as untrusted input."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    # item content hash -> [mean score, samples passed, samples]
    items: dict[str, tuple[Annotated[float, Field(ge=0, le=1)], Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]]]

    @field_validator("items")
    @classmethod
    def _passes_within_samples(cls, items: dict[str, tuple[float, int, int]]) -> dict[str, tuple[float, int, int]]:
        for key, (_, passes, samples) in items.items():
            if passes > samples:
                raise ValueError(f"item {key[:80]!r}: {passes} samples passed out of {samples}")
        return items


class ScoreCache:
    """Per-item scores of prompt versions, by content hash (see the module docstring).

    A malformed file (undecodable, too deep, a field missing or out of range) is a miss, logged once per cache,
    never a crash. `root` (the repository) only shortens the file names in that warning."""

    def __init__(self, directory: Path | None, *, root: Path | None = None) -> None:
        self.directory = directory
        self.files = DistrustedFiles("score cache file", "its items are scored again", max_bytes=MAX_SCORE_FILE_BYTES, root=root)

    @staticmethod
    def key(target: Target, config: Config) -> str:
        sections = {k: v for k, v in config_sections(config).items() if k != "gate"}
        # Whether the judge is trusted does not change a score.
        sections["judge"] = {k: v for k, v in sections["judge"].items() if k not in UNSCORED_JUDGE_KEYS}
        return digest(
            {
                "v": SCORE_CACHE_VERSION,
                "prompt": target.prompt.expanded,
                "description": target.prompt.description,
                "suite": target.suite.spec.model_dump(exclude={"items", "dataset", "judge_examples"}),
                "config": sections,
                "repeats": config.gate.repeats,
            }
        )

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.json"

    def load(self, key: str) -> dict[str, ItemScore]:
        path = self._path(key)
        if path is None:
            return {}
        # Absent (the usual miss), unreadable, too big, from an older version or damaged: score again.
        stored = self.files.load(path, _StoredScores.model_validate_json)
        if stored is None:
            return {}
        return {k: ItemScore(mean, passes, samples) for k, (mean, passes, samples) in stored.items.items()}

    def save(self, key: str, scores: Mapping[str, ItemScore]) -> None:
        path = self._path(key)
        if path is None or not scores:
            return
        entries = {k: [s.mean, s.passes, s.samples] for k, s in scores.items()}
        try:
            atomic_write_text(path, json.dumps({"items": entries}, sort_keys=True))
        except OSError as exc:  # a read-only cache must not fail the gate
            log.warning("could not write the gate's score cache: %s", exc)


def score_cache_for(session: Session) -> ScoreCache:
    """The session's score cache (none when caching is off). ConfigError (exit 2), before any call, when git
    tracks a file in the cache directory: a pull request could commit forged scores. Make one per run and pass
    it on (`gate_changes(cache=...)`), so a damaged cache is reported once."""
    config = session.config
    if not config.cache_dir:
        return ScoreCache(None)
    if session.gateway.cache is None:  # else gateway_from_config checked this same directory already
        check_cache_untracked(session.repo, config.cache_dir)
    return ScoreCache(session.repo / config.cache_dir / SCORE_CACHE_DIR, root=session.repo)


@dataclass
class _CountingBackend:
    """Passes every real model call through, counting it (cache hits never reach a backend)."""

    inner: Backend
    calls: int = 0

    async def complete(self, spec: ModelSpec, messages: list[dict[str, str]], **kwargs: Any) -> BackendReply:
        self.calls += 1
        return await self.inner.complete(spec, messages, **kwargs)

    async def score_options(
        self, spec: ModelSpec, messages: list[dict[str, str]], options: list[str], *, answer_prefix: str | None = None
    ) -> list[float]:
        self.calls += 1
        return await self.inner.score_options(spec, messages, options, answer_prefix=answer_prefix)

    def validate(self, spec: ModelSpec) -> None:
        self.inner.validate(spec)

    def estimate_usd(self, spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float:
        return self.inner.estimate_usd(spec, prompt_tokens, completion_tokens)


def counting_view(gateway: Gateway) -> tuple[Gateway, _CountingBackend]:
    """The same gateway (budget, cache, concurrency limit), with its own count of real calls."""
    counter = _CountingBackend(gateway.backend)
    view = copy.copy(gateway)
    view.backend = counter
    return view, counter


@dataclass
class Side:
    """One version of a prompt being scored: its scorer, what is known so far, and what it cost."""

    target: Target
    scorer: Scorer
    counter: _CountingBackend
    cache: ScoreCache
    cache_key: str
    stored: dict[str, ItemScore]
    scores: dict[str, ItemScore] = field(default_factory=dict)
    from_cache: int = 0
    unjudged: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)  # the budget ran out before these were scored

    @classmethod
    def open(cls, session: Session, target: Target, cache: ScoreCache) -> Side:
        """ConfigError/GradgateError when the version cannot be scored on the target's suite."""
        view, counter = counting_view(session.gateway)
        scorer = Scorer(view, session.config, target)
        key = cache.key(target, session.config)
        return cls(target, scorer, counter, cache, key, cache.load(key))

    @property
    def calls(self) -> int:
        return self.counter.calls

    async def score(self, batch: Sequence[Item], repeats: int) -> None:
        todo = []
        for item in batch:
            hit = self.stored.get(item_key(item))
            if hit is not None and hit.samples == repeats:
                self.scores[item.id] = hit
                self.from_cache += 1
            else:
                todo.append(item)
        fresh, unjudged, missing = await score_items(self.scorer, self.target, todo, repeats)
        self.scores.update(fresh)
        self.unjudged |= unjudged
        self.missing |= missing
        if fresh:
            self.stored.update({item_key(i): fresh[i.id] for i in todo if i.id in fresh})
            self.cache.save(self.cache_key, self.stored)


async def score_items(
    scorer: Scorer, target: Target, items: Sequence[Item], repeats: int
) -> tuple[dict[str, ItemScore], set[str], set[str]]:
    """Each item's score over `repeats` samples, the items the judge left unjudged, and those the budget cut."""

    async def one(item: Item) -> tuple[str, ItemScore | None, str | None]:
        try:
            samples = [await scorer.score_item(target.prompt, item, sample=r) for r in range(repeats)]
        except BudgetExhausted:
            return item.id, None, "missing"
        if any(s.unjudged for s in samples):
            return item.id, None, "unjudged"
        return item.id, ItemScore(sum(s.score for s in samples) / repeats, sum(s.passed for s in samples), repeats), None

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:  # one item failed for good: stop the others rather than leave them calling the model
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    scores = {item_id: score for item_id, score, _ in results if score is not None}
    unjudged = {item_id for item_id, _, why in results if why == "unjudged"}
    missing = {item_id for item_id, _, why in results if why == "missing"}
    return scores, unjudged, missing
