"""Reproducible model calls for the benchmark: a replaying backend and a budget that marks the search's end.

gradgate's gateway cache makes a repeated request free, which is right inside one run (every method gets that) but
would change a rerun: calls answered from a warm cache are not counted, so a budget would stop a method later than
the first time. The benchmark therefore keeps two layers:

- the gateway's own cache in a fresh per-run directory (repeats within a run are free, as in a real gradgate run);
- `ReplayBackend` under it, persistent across runs: it answers a request it has seen from disk but the gateway still
  counts it as a call with the recorded tokens, so a rerun spends the budget exactly as the first run did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradgate.core.budget import BudgetTracker, Holdback
from gradgate.core.config import ModelSpec
from gradgate.core.files import atomic_write_text
from gradgate.models.gateway import Backend, BackendReply

log = logging.getLogger(__name__)

REPLAY_VERSION = 1


@dataclass
class ReplayStats:
    requests: int = 0
    replayed: int = 0
    model_seconds: float = 0.0  # time the model took, recorded on the first run and replayed after


@dataclass
class ReplayBackend:
    """Wraps a real backend; stores each reply under the SHA-256 of the request and its occurrence number.

    The occurrence number tells apart identical requests within one run (repeated samples whose only difference,
    the gateway's `sample` index, does not reach the backend).
    """

    inner: Backend
    directory: Path
    stats: ReplayStats = field(default_factory=ReplayStats)
    _seen: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _key(self, request: dict[str, Any]) -> tuple[str, Path]:
        canonical = json.dumps({"v": REPLAY_VERSION, **request}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        with self._lock:
            occurrence = self._seen[digest]
            self._seen[digest] += 1
        key = f"{digest}-{occurrence}"
        return key, self.directory / key[:2] / f"{key}.json"

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def _store(self, path: Path, value: dict[str, Any]) -> None:
        try:
            atomic_write_text(path, json.dumps(value, ensure_ascii=False))
        except OSError as exc:
            log.warning("could not write the replay cache: %s", exc)

    async def complete(
        self,
        spec: ModelSpec,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        seed: int | None,
        stop: list[str] | None,
        timeout: float,
    ) -> BackendReply:
        request = {
            "kind": "chat",
            "model": spec.model,
            "api_base": spec.api_base,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "stop": stop,
        }
        _, path = self._key(request)
        self.stats.requests += 1
        if (hit := self._load(path)) is not None:
            self.stats.replayed += 1
            self.stats.model_seconds += float(hit.get("seconds", 0.0))
            return BackendReply(**hit["reply"])
        started = time.monotonic()
        reply = await self.inner.complete(
            spec, messages, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop, timeout=timeout
        )
        seconds = time.monotonic() - started
        self.stats.model_seconds += seconds
        self._store(path, {"reply": asdict(reply), "seconds": seconds})
        return reply

    async def score_options(
        self, spec: ModelSpec, messages: list[dict[str, str]], options: list[str], *, answer_prefix: str | None = None
    ) -> list[float]:
        request = {"kind": "loglik", "model": spec.model, "api_base": spec.api_base, "messages": messages, "options": options}
        if answer_prefix is not None:  # only when given: earlier replies keep their keys
            request["answer_prefix"] = answer_prefix
        _, path = self._key(request)
        self.stats.requests += 1
        if (hit := self._load(path)) is not None:
            self.stats.replayed += 1
            self.stats.model_seconds += float(hit.get("seconds", 0.0))
            return [float(x) for x in hit["scores"]]
        started = time.monotonic()
        scores = await self.inner.score_options(spec, messages, options, answer_prefix=answer_prefix)
        seconds = time.monotonic() - started
        self.stats.model_seconds += seconds
        self._store(path, {"scores": [float(x) for x in scores], "seconds": seconds})
        return scores

    def validate(self, spec: ModelSpec) -> None:
        self.inner.validate(spec)

    def estimate_usd(self, spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float:
        return self.inner.estimate_usd(spec, prompt_tokens, completion_tokens)


@dataclass
class PhaseBudget(BudgetTracker):
    """A budget tracker that remembers the usage at the end of each budget phase, with the phase's depth.

    The runner searches inside its outermost phase (the confirmation's share held back; optimizers may open
    phases of their own inside it) and confirms after it, so the first mark at depth 1 is exactly what the search
    spent (`search_mark`).
    """

    marks: list[dict[str, float]] = field(default_factory=list)
    depth: int = 0

    @contextmanager
    def phase(self, hold_back: Holdback) -> Iterator[None]:
        self.depth += 1
        with super().phase(hold_back):
            try:
                yield
            finally:
                self.marks.append({"calls": self.calls, "tokens": self.tokens, "seconds": self.elapsed, "depth": self.depth})
                self.depth -= 1

    def search_mark(self) -> dict[str, float]:
        """Usage when the runner's search phase ended (now, when no phase has ended yet)."""
        first = next((m for m in self.marks if m["depth"] == 1), None)
        return first or {"calls": self.calls, "tokens": self.tokens, "seconds": self.elapsed}
