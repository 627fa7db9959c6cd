"""The model gateway: every LLM call goes through here.

    gateway = Gateway(config.models, budget=BudgetTracker(limits), cache=ResponseCache(dir))
    reply = await gateway.complete("task", [{"role": "user", "content": "2+2?"}])

One gateway per run, passed in (never global). It adds what every caller needs: a concurrency limit,
retries with backoff on 429/5xx/timeouts/malformed replies, a disk cache keyed on the full request (a
rerun with nothing changed makes zero calls), hard budgets, and token/cost accounting per role.

A failed import inside a call (a provider needs a package that is not installed; litellm reports it as a
connection error) is never retried: MissingPackageError (exit 2) names the package to install.

Waiting is bounded too: a server's `Retry-After` is honoured up to `models.max_retry_wait_seconds`; a
server that asks for longer fails the call at once (ModelError), and every wait must fit in the time
budget (`BudgetTracker.check_wait`). The backend is litellm (`gradgate.models.litellm_backend`); tests may
pass a scripted backend instead (see `gradgate.models.scripted`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from gradgate.core.budget import BudgetTracker
from gradgate.core.config import ModelsConfig, ModelSpec, check_cache_untracked
from gradgate.core.files import DistrustedFiles, atomic_write_text, digest
from gradgate.errors import ConfigError, GradgateError, MissingPackageError, ModelError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_CACHE_ENTRY_BYTES = 32 * 1024 * 1024  # a bigger entry is not one gradgate wrote: a miss


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    model: str
    cached: bool = False


@dataclass(frozen=True)
class BackendReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class RetryableError(Exception):
    """A backend failure worth retrying (rate limit, 5xx, timeout, connection, a malformed reply).

    `retry_after`: the seconds the server asked to wait, when it said (may be `inf`)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Backend(Protocol):
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
    ) -> BackendReply: ...

    async def score_options(
        self, spec: ModelSpec, messages: list[dict[str, str]], options: list[str], *, answer_prefix: str | None = None
    ) -> list[float]:
        """`answer_prefix`: the text the assistant turn opens with before each option (None: the model's default)."""

    def validate(self, spec: ModelSpec) -> None: ...

    def estimate_usd(self, spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float: ...


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    # Deliberately pessimistic (2 characters a token) so reservations are never too small.
    return sum(math.ceil(len(m.get("content") or "") / 2) + 8 for m in messages)


class _CachedCompletion(BaseModel):
    """A cached chat reply, validated strictly: the cache directory is read back as untrusted input."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    text: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cost_usd: float = Field(ge=0)
    model: str


class _CachedScores(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    scores: list[float]

    @field_validator("scores")
    @classmethod
    def _no_nan(cls, scores: list[float]) -> list[float]:
        # Log-likelihoods: -inf is an answer the model rules out; NaN and +inf are never real.
        if any(math.isnan(s) or s == math.inf for s in scores):
            raise ValueError("a score is NaN or +inf")
        return scores


_Entry = TypeVar("_Entry")
_ANY_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


class ResponseCache:
    """One JSON file per request, named by the SHA-256 of the canonical request.

    Entries are read back as untrusted input: anything malformed (undecodable, too deep, too big, a field
    missing or of the wrong type, a reply for another model) is a cache miss, logged once per cache, never a
    crash. `root` (the repository) only shortens the file names in that warning. A cache whose files are
    committed to git is refused before the first call (`gradgate.core.config.check_cache_untracked`)."""

    def __init__(self, directory: Path, *, root: Path | None = None) -> None:
        self.directory = directory
        self.files = DistrustedFiles(
            "response cache entry", "the request is sent to the model again", max_bytes=MAX_CACHE_ENTRY_BYTES, root=root
        )

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return digest({"v": CACHE_VERSION, **request})

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def _validated(self, key: str, parse: Callable[[bytes], _Entry]) -> _Entry | None:
        return self.files.load(self._path(key), parse)

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry as a JSON object, or None (absent or malformed). Prefer `completion` and `scores`."""
        return self._validated(key, _ANY_OBJECT.validate_json)

    def completion(self, key: str, model: str) -> Completion | None:
        """The cached reply of `model` for `key`, or None: absent, malformed, or written for another model."""
        entry = self._validated(key, _CachedCompletion.model_validate_json)
        if entry is None:
            return None
        if entry.model != model:
            self.files.malformed(self._path(key), f"a reply of {entry.model[:80]!r}, not of {model!r}")
            return None
        return Completion(**entry.model_dump(), cached=True)

    def scores(self, key: str, count: int) -> list[float] | None:
        """The cached log-likelihoods of `count` options for `key`, or None: absent or malformed."""
        entry = self._validated(key, _CachedScores.model_validate_json)
        if entry is None:
            return None
        if len(entry.scores) != count:
            self.files.malformed(self._path(key), f"{len(entry.scores)} scores for {count} options")
            return None
        return list(entry.scores)

    def put(self, key: str, value: dict[str, Any]) -> None:
        try:
            atomic_write_text(self._path(key), json.dumps(value, ensure_ascii=False))
        except OSError as exc:  # a read-only cache must not fail the run
            log.warning("could not write the response cache: %s", exc)


class Gateway:
    def __init__(
        self,
        models: ModelsConfig,
        *,
        budget: BudgetTracker,
        cache: ResponseCache | None = None,
        backend: Backend | None = None,
        sleep: Any = asyncio.sleep,
    ) -> None:
        self.models = models
        self.budget = budget
        self.cache = cache
        if backend is None:
            from gradgate.models.litellm_backend import LiteLLMBackend  # imports litellm: only when needed

            backend = LiteLLMBackend()
        self.backend: Backend = backend
        self._semaphore = asyncio.Semaphore(models.concurrency)
        self._sleep = sleep
        self._warned_unpriced: set[str] = set()

    def spec(self, role: str) -> ModelSpec:
        return self.models.for_role(role)

    def validate(self, roles: tuple[str, ...] = ("task", "judge")) -> None:
        """Before any call: every role's model exists and its API key variable is set (else exit 2)."""
        for role in roles:
            spec = self.spec(role)
            key = "optimizer" if role == "editor" and self.models.editor is None else role
            try:
                self.backend.validate(spec)
            except GradgateError as exc:  # say which key names the model (a --model flag sets the same key)
                exc.where = exc.where or f"models.{key}"
                raise
            if spec.api_key_env and not os.environ.get(spec.api_key_env):
                raise ConfigError(
                    f"environment variable {spec.api_key_env} is not set (the API key of the {role} model {spec.model})",
                    where=f"models.{key}.api_key_env",
                    hint=f"export {spec.api_key_env}, or pass it to the action through `env:`",
                )

    def _request(self, kind: str, spec: ModelSpec, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        return {"kind": kind, "model": spec.model, "api_base": spec.api_base, "messages": messages, **params}

    async def complete(
        self,
        role: str,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        sample: int = 0,
    ) -> Completion:
        """One chat completion. `sample` tells apart repeated samples of the same request (cache key)."""
        spec = self.spec(role)
        temperature = spec.temperature if temperature is None else temperature
        max_tokens = spec.max_tokens if max_tokens is None else max_tokens
        request = self._request(
            "chat", spec, messages, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop, sample=sample
        )
        key = ResponseCache.key(request)
        if self.cache is not None and (hit := self.cache.completion(key, spec.model)) is not None:
            self.budget.record_cached(role)
            return hit
        reply = await self._call(
            role,
            spec,
            estimate_tokens(messages) + max_tokens,
            max_tokens,
            lambda timeout: self.backend.complete(
                spec, messages, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop, timeout=timeout
            ),
        )
        log.debug("%s %s <- %r", role, spec.model, messages)
        log.debug("%s %s -> %r", role, spec.model, reply.text[:2000])
        completion = Completion(
            text=reply.text,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cost_usd=reply.cost_usd,
            model=spec.model,
        )
        if self.cache is not None:
            self.cache.put(key, {k: v for k, v in asdict(completion).items() if k != "cached"})
        return completion

    async def score_options(
        self, role: str, messages: list[dict[str, str]], options: list[str], *, answer_prefix: str | None = None
    ) -> list[float]:
        """Log-likelihood of each option as the answer (embedded models), after `answer_prefix` (None: the runtime's
        "The answer is ")."""
        spec = self.spec(role)
        # The prefix joins the cache key only when given, so the keys of every earlier request stay valid.
        extra = {} if answer_prefix is None else {"answer_prefix": answer_prefix}
        request = self._request("loglik", spec, messages, options=options, **extra)
        key = ResponseCache.key(request)
        if self.cache is not None and (cached := self.cache.scores(key, len(options))) is not None:
            self.budget.record_cached(role)
            return cached
        tokens = estimate_tokens(messages) * len(options)

        async def run(timeout: float) -> BackendReply:
            scores = await self.backend.score_options(spec, messages, options, answer_prefix=answer_prefix)
            return BackendReply(text=json.dumps(scores), prompt_tokens=tokens, completion_tokens=0, cost_usd=0.0)

        reply = await self._call(role, spec, tokens, 0, run)
        scores = [float(x) for x in json.loads(reply.text)]
        if self.cache is not None:
            self.cache.put(key, {"scores": scores})
        return scores

    async def _call(self, role: str, spec: ModelSpec, reserve_tokens: int, max_tokens: int, attempt: Any) -> BackendReply:
        usd = self.backend.estimate_usd(spec, reserve_tokens - max_tokens, max_tokens)
        self._warn_unpriced(spec, usd)
        async with self._semaphore:
            for attempt_no in range(self.models.max_retries + 1):
                reservation = self.budget.reserve(reserve_tokens, usd)
                timeout = self.models.timeout_seconds
                left = self.budget.seconds_left()
                if left is not None:
                    timeout = min(timeout, left)
                try:
                    if spec.is_local:
                        # In-process models run in a worker thread that cannot be cancelled, and wait
                        # their turn for the CPU: a timer would only abandon (and re-run) work already
                        # paid for. The provider receives `timeout` and stops generating by then.
                        reply: BackendReply = await attempt(timeout)
                    else:
                        reply = await asyncio.wait_for(attempt(timeout), timeout=timeout + 5)
                except (RetryableError, TimeoutError, ImportError) as exc:
                    # A failed attempt still counts as a call: providers may bill it.
                    self.budget.settle(
                        reservation, role, prompt_tokens=0, completion_tokens=0, cost_usd=0.0, retried=attempt_no > 0
                    )
                    missing = missing_package_error(spec, exc)
                    if missing is not None:  # no retry installs a package
                        raise missing from None
                    delay = self._retry_delay(spec, exc, attempt_no)
                    self.budget.check_wait(delay)
                    log.warning("%s: %s; retrying in %.1f s", spec.model, str(exc) or "timeout", delay)
                    await self._sleep(delay)
                    continue
                except BaseException:
                    self.budget.settle(reservation, role, prompt_tokens=0, completion_tokens=0, cost_usd=0.0)
                    raise
                self.budget.settle(
                    reservation,
                    role,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    cost_usd=reply.cost_usd,
                    retried=attempt_no > 0,
                )
                return reply
        raise AssertionError("unreachable")

    def _retry_delay(self, spec: ModelSpec, exc: BaseException, attempt_no: int) -> float:
        """Seconds to wait before the next attempt; ModelError when there is none, or the server asks too much."""
        reason = str(exc) or "timeout"
        cap = self.models.max_retry_wait_seconds
        asked = getattr(exc, "retry_after", None)
        if asked is not None and asked > cap:
            raise ModelError(
                f"{spec.model}: the server asked to wait {_seconds(asked)} before a retry, more than "
                f"models.max_retry_wait_seconds ({_seconds(cap)}): {reason}",
                hint="try again later, lower models.concurrency, or raise models.max_retry_wait_seconds",
            )
        if attempt_no >= self.models.max_retries:
            raise ModelError(
                f"{spec.model} did not answer after {attempt_no + 1} attempts: {reason}",
                hint="check that the model server is reachable, or raise models.max_retries",
            )
        if asked is not None:
            return float(asked)
        return min(cap, min(30.0, 0.5 * 2**attempt_no) * (0.5 + random.random()))

    def _warn_unpriced(self, spec: ModelSpec, usd: float) -> None:
        if (
            usd == 0.0
            and self.budget.limits.max_usd is not None
            and spec.model not in self._warned_unpriced
            and not spec.is_local
            and not spec.api_base
        ):
            self._warned_unpriced.add(spec.model)
            log.warning("no price known for %s: the USD limit cannot bind on it", spec.model)


def missing_package_error(spec: ModelSpec, exc: BaseException) -> MissingPackageError | None:
    """A MissingPackageError when an ImportError is `exc` or behind it (its cause or context: litellm wraps one
    raised by a provider as APIConnectionError), else None."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and not isinstance(found, ImportError) and id(found) not in seen:
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    if not isinstance(found, ImportError):
        return None
    package = (found.name or "").split(".")[0]
    what = f"the Python package {package!r}" if package else "a Python package"
    if isinstance(found, ModuleNotFoundError):
        install = f"pip install {package}" if package else "install the package the message names"
    else:  # it is there but does not provide what is imported: another version is needed
        install = f"pip install --upgrade {package}" if package else "upgrade the package the message names"
    extra = ", or gradgate's local extra: pip install 'gradgate[local]'" if spec.is_local else ""
    return MissingPackageError(
        f"{spec.model} needs {what}, which cannot be imported: {found}",
        hint=f"{install}{extra} (a module's pip name may differ), then rerun",
    )


def _seconds(value: float) -> str:
    return "forever" if math.isinf(value) else f"{value:.0f} s" if value >= 10 else f"{value:g} s"


def gateway_from_config(
    repo: Path, models: ModelsConfig, budget: BudgetTracker, *, cache_dir: str | None, backend: Backend | None = None
) -> Gateway:
    """The gateway a run uses: the repository's cache directory unless caching is off (None).

    ConfigError (exit 2), before any call, when git tracks a file in the cache directory: a pull request
    could commit forged replies (see `check_cache_untracked`)."""
    cache = None
    if cache_dir:
        check_cache_untracked(repo, cache_dir)
        cache = ResponseCache(repo / cache_dir, root=repo)
    return Gateway(models, budget=budget, cache=cache, backend=backend)
