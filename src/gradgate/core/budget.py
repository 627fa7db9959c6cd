"""Hard budgets: calls, tokens, USD and seconds. This module is the only place that says "stop".

Before each call the gateway reserves its worst case (one call, the prompt's estimated tokens plus
`max_tokens`, their price); the reservation fails if any limit could be passed, so no limit is ever
exceeded. After the call the reservation is settled with what was really used.

A run in phases keeps part of the budget for a later phase: `with budget.phase(Holdback(calls=40,
seconds=60)):` makes those 40 calls and 60 seconds unreachable inside the block (the optimizers keep
the test confirmation's share this way), in every unit alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from gradgate.core.config import BudgetConfig
from gradgate.errors import BudgetExhausted

log = logging.getLogger(__name__)


@dataclass
class RoleUsage:
    calls: int = 0
    cached_calls: int = 0  # answered from the disk cache: free and not counted in `calls`
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: RoleUsage) -> None:
        for name in ("calls", "cached_calls", "retries", "prompt_tokens", "completion_tokens", "cost_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Reservation:
    tokens: int
    usd: float
    settled: bool = False


@dataclass(frozen=True)
class Holdback:
    """Budget a phase must leave untouched for the phases after it."""

    calls: int = 0
    tokens: int = 0
    usd: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: Holdback) -> Holdback:
        return Holdback(self.calls + other.calls, self.tokens + other.tokens, self.usd + other.usd, self.seconds + other.seconds)


@dataclass
class BudgetTracker:
    limits: BudgetConfig = field(default_factory=BudgetConfig)
    clock: Callable[[], float] = time.monotonic
    started_at: float = field(init=False)
    usage: dict[str, RoleUsage] = field(default_factory=dict)
    stopped_reason: str | None = None
    _reserved_calls: int = 0
    _reserved_tokens: int = 0
    _reserved_usd: float = 0.0
    held: Holdback = field(default_factory=Holdback)  # kept for a later phase (see `phase`)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    # -- totals -------------------------------------------------------------------------------
    @property
    def calls(self) -> int:
        return sum(u.calls for u in self.usage.values())

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.usage.values())

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.usage.values())

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def calls_left(self) -> int | None:
        """Calls this phase may still make (None: no call limit): used, in flight and held back for later
        phases excluded."""
        if self.limits.max_calls is None:
            return None
        with self._lock:
            return max(0, self.limits.max_calls - self.calls - self._reserved_calls - self.held.calls)

    def seconds_left(self) -> float | None:
        """Seconds this phase may still use (what is held back for later phases excluded)."""
        if self.limits.max_seconds is None:
            return None
        return max(0.0, self.limits.max_seconds - self.held.seconds - self.elapsed)

    def describe(self) -> str:
        parts = [
            f"calls≤{self.limits.max_calls}" if self.limits.max_calls is not None else "calls unlimited",
            f"tokens≤{self.limits.max_tokens}" if self.limits.max_tokens is not None else "tokens unlimited",
            f"USD≤{self.limits.max_usd:g}" if self.limits.max_usd is not None else "USD unlimited",
            f"seconds≤{self.limits.max_seconds:g}" if self.limits.max_seconds is not None else "time unlimited",
        ]
        return ", ".join(parts)

    def log_start(self) -> None:
        log.info("budget: %s", self.describe())

    # -- the only place that says stop --------------------------------------------------------
    def _refuse(self, reason: str) -> BudgetExhausted:
        self.stopped_reason = self.stopped_reason or reason
        return BudgetExhausted(f"budget exhausted: {reason}")

    def _check_locked(self, calls: int, tokens: int, usd: float) -> None:
        lim, held = self.limits, self.held
        if lim.max_seconds is not None and self.elapsed >= lim.max_seconds - held.seconds:
            raise self._refuse(f"{lim.max_seconds:g} s time limit reached" + _kept(held.seconds, "s"))
        if lim.max_calls is not None and self.calls + self._reserved_calls + held.calls + calls > lim.max_calls:
            raise self._refuse(f"{lim.max_calls} calls used" + _kept(held.calls, "calls"))
        if lim.max_tokens is not None and self.tokens + self._reserved_tokens + held.tokens + tokens > lim.max_tokens:
            raise self._refuse(f"token limit {lim.max_tokens} would be passed" + _kept(held.tokens, "tokens"))
        if lim.max_usd is not None and self.cost_usd + self._reserved_usd + held.usd + usd > lim.max_usd + 1e-12:
            raise self._refuse(f"USD limit {lim.max_usd:g} would be passed" + _kept(held.usd, "USD"))

    def check_can_spend(self, calls: int = 1, tokens: int = 0, usd: float = 0.0) -> None:
        """Raise BudgetExhausted if spending this much could pass a limit."""
        with self._lock:
            self._check_locked(calls, tokens, usd)

    def check_wait(self, seconds: float) -> None:
        """Raise BudgetExhausted if waiting `seconds` (a retry's back-off) would pass the time limit."""
        left = self.seconds_left()
        if left is not None and seconds >= left:
            with self._lock:
                raise self._refuse(f"no time left to wait {seconds:.1f} s before a retry")

    @contextmanager
    def phase(self, hold_back: Holdback) -> Iterator[None]:
        """Within the block, `hold_back` is out of reach (on top of what an enclosing phase holds)."""
        with self._lock:
            outer = self.held
            self.held = outer + hold_back
        try:
            yield
        finally:
            with self._lock:
                self.held = outer

    def reserve(self, tokens: int, usd: float) -> Reservation:
        with self._lock:
            self._check_locked(1, tokens, usd)
            self._reserved_calls += 1
            self._reserved_tokens += tokens
            self._reserved_usd += usd
            return Reservation(tokens=tokens, usd=usd)

    def settle(
        self,
        reservation: Reservation,
        role: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        retried: bool = False,
    ) -> None:
        """Replace a reservation by what the call really used."""
        with self._lock:
            if not reservation.settled:
                self._reserved_calls -= 1
                self._reserved_tokens -= reservation.tokens
                self._reserved_usd -= reservation.usd
                reservation.settled = True
            usage = self.usage.setdefault(role, RoleUsage())
            usage.calls += 1
            usage.retries += int(retried)
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
            usage.cost_usd += cost_usd

    def charge(
        self, role: str, calls: int = 1, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0
    ) -> None:
        """Record work done outside the gateway (GReaTer's forward passes)."""
        with self._lock:
            usage = self.usage.setdefault(role, RoleUsage())
            usage.calls += calls
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
            usage.cost_usd += cost_usd

    def record_cached(self, role: str) -> None:
        with self._lock:
            self.usage.setdefault(role, RoleUsage()).cached_calls += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "limits": self.limits.model_dump(),
                "calls": self.calls,
                "tokens": self.tokens,
                "cost_usd": round(self.cost_usd, 6),
                "seconds": round(self.elapsed, 3),
                "stopped_reason": self.stopped_reason,
                "by_role": {role: {**asdict(u), "cost_usd": round(u.cost_usd, 6)} for role, u in sorted(self.usage.items())},
            }


def _kept(amount: float, unit: str) -> str:
    return f" ({amount:g} {unit} kept for a later phase)" if amount else ""


def resolve_budget(
    base: BudgetConfig,
    *,
    calls: int | None = None,
    tokens: int | None = None,
    usd: float | None = None,
    seconds: float | None = None,
) -> BudgetConfig:
    """Command-line settings override the config's, key by key."""
    update = {
        k: v
        for k, v in (("max_calls", calls), ("max_tokens", tokens), ("max_usd", usd), ("max_seconds", seconds))
        if v is not None
    }
    return base.model_copy(update=update)
