"""A portfolio: several methods search one prompt, the winner is chosen on dev, only it is confirmed on test.

    outcome = await run_portfolio(session, target, ["gradsum", "gpo"], out_dir=Path(".gradgate/optimize"), seed=0)

Every method searches the prompt in turn (each keeping an equal share of the calls for the methods after it),
the winner is the method whose best candidate scores highest on dev (ties: the method named first), and only
the winner is confirmed on the held-out test split. Confirming every method on test and keeping the best would
pick the luckiest draw on test and inflate the reported gain; choosing on dev keeps the test split for one
honest decision. One method's run is `runner.run_optimization`; this module composes `runner.search` and
`runner.confirm_search` across methods.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gradgate.core.discovery import Target
from gradgate.errors import BudgetExhausted
from gradgate.models.session import Session
from gradgate.optimizers.confirmation import calls_needed
from gradgate.optimizers.results import Confirmation, OptimizeResult
from gradgate.optimizers.runner import SearchOutcome, check_split, confirm_search, search, to_result
from gradgate.scoring.scorer import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortfolioOutcome:
    """Several methods on one prompt: every search, the dev winner, and its test confirmation."""

    results: tuple[OptimizeResult, ...]  # one per method that searched, in method order
    failures: tuple[str, ...]
    winner: str | None  # the method chosen on dev
    search_calls: int  # calls of all the searches (the confirmation excluded)


def later_share(session: Session, kept: int, after: int) -> int:
    """Calls to keep for `after` later units of work: an equal share of what is left beyond `kept`."""
    left = session.budget.calls_left()
    if left is None or after <= 0:
        return 0
    return max(0, left - kept) * after // (after + 1)


async def run_portfolio(
    session: Session, target: Target, methods: Sequence[str], *, out_dir: Path, seed: int, reserve_calls: int = 0
) -> PortfolioOutcome:
    """Search with every method, choose the winner on dev, confirm only the winner on test (see the module doc).
    The searches never read the test split; `reserve_calls` are kept for work after this prompt."""
    splits = check_split(session, target, seed)
    confirm_calls = calls_needed(len(splits.test), Scorer(session.gateway, session.config, target).uses_judge)
    start = session.budget.calls
    outcomes: list[SearchOutcome] = []
    failures: list[str] = []
    shared: dict[str, list[float]] = {}
    for index, method in enumerate(methods):
        later = later_share(session, reserve_calls + confirm_calls, len(methods) - index - 1)
        try:
            outcome = await search(
                session,
                target,
                method,
                out_dir=out_dir,
                seed=seed,
                reserve_calls=reserve_calls + later,
                confirm_calls=confirm_calls,
                shared_scores=shared,  # the original on dev is scored once for all methods
                spent_on_dev=outcomes[0].spent_on_dev if outcomes else None,
            )
        except BudgetExhausted as exc:
            failures.append(f"{target.prompt.id}/{method}: {exc.message}; {exc.hint}")
            log.warning("%s", failures[-1])
            continue
        shared.update(outcome.run.scorer.seen)
        outcomes.append(outcome)
    search_calls = session.budget.calls - start
    if not outcomes:
        return PortfolioOutcome((), tuple(failures), None, search_calls)
    winner = max(outcomes, key=lambda o: (o.best.dev_score or 0.0, -outcomes.index(o)))
    results = []
    for outcome in outcomes:
        if outcome is winner:
            results.append(await confirm_search(session, outcome, reserve_calls=reserve_calls))
            continue
        decision = (
            f"not confirmed on test: the portfolio chose {winner.method} on dev (best dev "
            f"{winner.best.dev_score or 0.0:.3f} vs {outcome.best.dev_score or 0.0:.3f}); only the dev winner is tested"
        )
        results.append(to_result(session, outcome, Confirmation(improved=False, decision=decision)))
    return PortfolioOutcome(tuple(results), tuple(failures), winner.method, search_calls)
