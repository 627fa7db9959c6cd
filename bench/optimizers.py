"""Optimizer shoot-out v2: gradgate's GRAD-SUM, GPO, GReaTer, demos and portfolio against DSPy's MIPROv2 (zero-shot
and with demonstrations), COPRO, GEPA and BootstrapFewShotWithRandomSearch.

    python bench/optimizers.py --task boolean_expressions
    python bench/optimizers.py --task path/to/task.json --task-model openai/gpt-4o-mini --optimizer-model openai/gpt-4o

Every method gets the same task, the same task model, the same train/dev/test split (the test split is every item
left after train and dev) and the same budget of LLM calls for its search; `portfolio` shares that one budget among
its member methods, picks the winner on dev and confirms only the winner. The initial prompt and each method's best
prompt are then scored on the held-out test split by one gradgate scorer, and the table (mean with a 95% bootstrap
interval, calls, tokens, time, gradgate's "improved?" decision) is written to bench/results/optimizers-<task>.json and .md.

Reruns reproduce the table: the split and every sampling step are seeded, and each reply is stored in a replay cache
(--cache-dir) that answers a rerun while still counting each call against the budget (see shootout/replay.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `bench.shootout` importable
    sys.path.insert(0, str(REPO_ROOT))

from bench.shootout import report  # noqa: E402
from bench.shootout.replay import PhaseBudget, ReplayBackend  # noqa: E402
from bench.shootout.tasks import BenchTask, bench_config, build_task, resolve_sizes  # noqa: E402

from gradgate.core.config import DEFAULT_MODEL, BudgetConfig, Config  # noqa: E402
from gradgate.core.stats import mean_interval  # noqa: E402
from gradgate.errors import GradgateError  # noqa: E402
from gradgate.models.gateway import Backend, Gateway, ResponseCache  # noqa: E402
from gradgate.models.litellm_backend import LiteLLMBackend  # noqa: E402
from gradgate.models.session import Session  # noqa: E402
from gradgate.scoring.scorer import Scorer  # noqa: E402

log = logging.getLogger("bench.optimizers")

GRADGATE_METHODS = ("gradsum", "gpo", "greater", "demos", "portfolio")
DSPY_METHODS = ("dspy-miprov2", "dspy-miprov2-demos", "dspy-copro", "dspy-gepa", "dspy-bootstrap-rs")
ALL_METHODS = GRADGATE_METHODS + DSPY_METHODS
DEFAULT_METHODS = ALL_METHODS
PORTFOLIO = ("demos", "gradsum")  # the portfolio's members, searched in this order
DEFAULT_BUDGET_CALLS = 180
DEFAULT_SIZES = (40, 40, 0)  # train, dev, test; test 0: every item left after train and dev


@dataclass(frozen=True)
class MethodRun:
    method: str
    body: str  # best prompt body
    calls: int
    tokens: int
    seconds: float
    model_seconds: float
    stopped_reason: str | None
    runner_improved: bool | None = None
    runner_decision: str | None = None
    error: str | None = None
    extra: dict[str, Any] | None = None


def _session(
    task: BenchTask, config: Config, *, max_calls: int | None, replay_dir: Path, run_cache: Path, backend: Backend | None
) -> tuple[Session, PhaseBudget, ReplayBackend]:
    """A fresh session: its own budget, a per-run gateway cache, and the shared persistent replay cache."""
    budget = PhaseBudget(BudgetConfig(max_calls=max_calls))
    replay = ReplayBackend(inner=backend if backend is not None else LiteLLMBackend(), directory=replay_dir)
    if run_cache.exists():
        shutil.rmtree(run_cache)
    gateway = Gateway(config.models, budget=budget, cache=ResponseCache(run_cache), backend=replay)
    gateway.validate(("task", "optimizer"))
    return Session(repo=task.repo, config=config, budget=budget, gateway=gateway), budget, replay


def confirm_calls(task: BenchTask) -> int:
    """Calls the gradgate runner holds back for its own test confirmation (outside the search budget)."""
    from gradgate.optimizers.confirmation import calls_needed

    return calls_needed(len(task.splits.test), uses_judge=False)


def run_portfolio_row(
    task: BenchTask, config: Config, *, budget_calls: int, seed: int, cache_dir: Path, backend: Backend | None
) -> MethodRun:
    """gradgate's portfolio: the members share one search budget; the dev winner alone is confirmed on test."""
    from gradgate.optimizers.portfolio import run_portfolio

    session, budget, replay = _session(
        task,
        config,
        max_calls=budget_calls + confirm_calls(task),
        replay_dir=cache_dir / "replay",
        run_cache=cache_dir / "run" / "portfolio",
        backend=backend,
    )
    run_dir = cache_dir / "runs" / task.name / "portfolio"  # per task: two tasks may run at once
    if run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.monotonic()
    outcome = asyncio.run(run_portfolio(session, task.target, PORTFOLIO, out_dir=run_dir, seed=seed))
    searched = time.monotonic() - started
    if not outcome.results:
        raise GradgateError("the portfolio produced no result: " + "; ".join(outcome.failures))
    winner = next(r for r in outcome.results if r.method == outcome.winner)
    return MethodRun(
        method="portfolio",
        body=winner.best.text,
        calls=outcome.search_calls,
        tokens=budget.tokens,
        seconds=searched,
        model_seconds=replay.stats.model_seconds,
        stopped_reason=winner.stopped_reason,
        runner_improved=winner.improved,
        runner_decision=winner.decision,
        extra={
            "members": list(PORTFOLIO),
            "winner": outcome.winner,
            "member_dev_best": {r.method: r.best.dev_score for r in outcome.results},
            "member_calls": {r.method: r.usage.calls for r in outcome.results},
            "candidates": sum(len(r.candidates) for r in outcome.results),
        },
    )


def run_gradgate_method(
    method: str, task: BenchTask, config: Config, *, budget_calls: int, seed: int, cache_dir: Path, backend: Backend | None
) -> MethodRun:
    from gradgate.optimizers.runner import run_optimization

    if method == "portfolio":
        return run_portfolio_row(task, config, budget_calls=budget_calls, seed=seed, cache_dir=cache_dir, backend=backend)
    session, budget, replay = _session(
        task,
        config,
        max_calls=budget_calls + confirm_calls(task),
        replay_dir=cache_dir / "replay",
        run_cache=cache_dir / "run" / method,
        backend=backend,
    )
    run_dir = cache_dir / "runs" / task.name / method
    if run_dir.exists():  # a stale state file would make the runner resume instead of rerunning
        shutil.rmtree(run_dir)
    started = time.monotonic()
    result = asyncio.run(run_optimization(session, task.target, method, out_dir=run_dir, seed=seed))
    end = budget.search_mark()  # the search, inner phases (GReaTer's, demos') included; not the confirmation
    return MethodRun(
        method=method,
        body=result.best.text,
        calls=int(end["calls"]),
        tokens=int(end["tokens"]),
        seconds=float(end["seconds"]),
        model_seconds=replay.stats.model_seconds,
        stopped_reason=result.stopped_reason,
        runner_improved=result.improved,
        runner_decision=result.decision,
        extra={
            "candidates": len(result.candidates),
            "best_id": result.best.id,
            "dev_best": result.best.dev_score,
            "settings": result.settings,
            "wall_seconds_with_confirmation": round(time.monotonic() - started, 1),
        },
    )


def run_dspy_method(
    method: str,
    task: BenchTask,
    config: Config,
    *,
    budget_calls: int,
    seed: int,
    cache_dir: Path,
    backend: Backend | None,
    strict: bool = False,
) -> MethodRun:
    from bench.shootout.dspy_methods import run_dspy

    session, budget, replay = _session(
        task,
        config,
        max_calls=budget_calls,
        replay_dir=cache_dir / "replay",
        run_cache=cache_dir / "run" / method,
        backend=backend,
    )
    started = time.monotonic()
    outcome = run_dspy(method, task, session, seed=seed, budget_calls=budget_calls, strict=strict)
    return MethodRun(
        method=method,
        body=outcome.body,
        calls=budget.calls,
        tokens=budget.tokens,
        seconds=time.monotonic() - started,
        model_seconds=replay.stats.model_seconds,
        stopped_reason=outcome.stopped_reason,
        error=outcome.error,
        extra={
            "settings": outcome.settings,
            "dev_best": outcome.dev_score,
            "dspy_lm_calls": outcome.lm_history,
            "engine_calls": outcome.engine_calls,
            "instruction": outcome.instruction,
            "scored_item_ids": list(outcome.scored_item_ids),
            "adapter": "dspy.ChatAdapter" if strict else "lenient ChatAdapter",
        },
    )


async def score_on_test(task: BenchTask, session: Session, bodies: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each distinct body's score per test item, all by one scorer."""
    scorer = Scorer(session.gateway, session.config, task.target)
    out: dict[str, dict[str, float]] = {}
    for body in dict.fromkeys(bodies):
        evaluation = await scorer.score(task.target.prompt.with_body(body), task.splits.test)
        if not evaluation.complete:
            raise GradgateError(f"test scoring did not finish: {evaluation.stopped_reason}")
        out[body] = evaluation.scores_by_id()
    return out


def run_benchmark(
    args: argparse.Namespace, *, backend: Backend | None = None, command: str | None = None
) -> tuple[Path, Path, list[report.Row]]:
    """The whole shoot-out for one task; returns the JSON and Markdown paths and the rows."""
    started = time.monotonic()
    cache_dir = Path(args.cache_dir).resolve()
    sizes = resolve_sizes(args.task, repo_root=REPO_ROOT, sizes=(args.train, args.dev, args.test), seed=args.seed)
    os.environ.setdefault("DSPY_CACHEDIR", str(cache_dir / "dspy"))  # DSPy's own cache (unused: cache=False)
    optimizer_model = args.optimizer_model or args.task_model
    config = bench_config(
        task_model=args.task_model, optimizer_model=optimizer_model, seed=args.seed, sizes=sizes, cache_dir=".gradgate/cache"
    )  # unused: the bench builds its gateways and caches itself
    work = cache_dir / "repo"
    if work.exists():
        shutil.rmtree(work)
    task = build_task(
        args.task,
        repo_root=REPO_ROOT,
        work_dir=work,
        sizes=sizes,
        seed=args.seed,
        task_model=args.task_model,
        scoring=args.scoring,
        config=config,
    )
    log.info(
        "task %s: %d/%d/%d items, scoring %s (%s), budget %d calls per method",
        task.name,
        *sizes,
        task.scoring,
        task.metric,
        args.budget_calls,
    )

    runs: list[MethodRun] = []
    for method in args.methods:
        log.info("== %s ==", method)
        method_started = time.monotonic()
        try:
            if method in DSPY_METHODS:
                runs.append(
                    run_dspy_method(
                        method,
                        task,
                        config,
                        budget_calls=args.budget_calls,
                        seed=args.seed,
                        cache_dir=cache_dir,
                        backend=backend,
                        strict=args.dspy_strict,
                    )
                )
            else:
                runs.append(
                    run_gradgate_method(
                        method, task, config, budget_calls=args.budget_calls, seed=args.seed, cache_dir=cache_dir, backend=backend
                    )
                )
        except (GradgateError, ImportError) as exc:
            message = exc.message if isinstance(exc, GradgateError) else str(exc)
            log.warning("%s failed: %s", method, message)
            runs.append(
                MethodRun(
                    method=method,
                    body=task.target.prompt.body,
                    calls=0,
                    tokens=0,
                    seconds=time.monotonic() - method_started,
                    model_seconds=0.0,
                    stopped_reason=None,
                    error=f"failed: {message}",
                )
            )
        log.info("%s: %d calls in %.0f s", method, runs[-1].calls, runs[-1].seconds)

    session, _, _ = _session(
        task, config, max_calls=None, replay_dir=cache_dir / "replay", run_cache=cache_dir / "run" / "test", backend=backend
    )
    initial = task.target.prompt.body
    scores = asyncio.run(score_on_test(task, session, [initial, *(r.body for r in runs)]))
    test_ids = [i.id for i in task.splits.test]
    alpha, margin = config.optimize.alpha, config.optimize.margin
    resamples = config.gate.bootstrap_resamples

    def interval(body: str) -> Any:
        return mean_interval([scores[body][i] for i in test_ids], resamples=resamples, seed=args.seed)

    rows = [
        report.Row(
            method="initial prompt",
            prompt=initial,
            test=interval(initial),
            scores=scores[initial],
            calls=None,
            tokens=None,
            seconds=None,
            model_seconds=None,
            improved=None,
            decision="the starting point",
        )
    ]
    base = [scores[initial][i] for i in test_ids]
    for run in runs:
        head = [scores[run.body][i] for i in test_ids]
        improved, decision, difference, p = report.decide(
            base, head, alpha=alpha, margin=margin, resamples=resamples, seed=args.seed
        )
        extra = dict(run.extra or {})
        if run.runner_decision is not None:
            extra["runner_decision"] = run.runner_decision
            extra["runner_improved"] = run.runner_improved
        rows.append(
            report.Row(
                method=run.method,
                prompt=run.body,
                test=interval(run.body),
                scores=scores[run.body],
                calls=run.calls,
                tokens=run.tokens,
                seconds=round(run.seconds, 1),
                model_seconds=round(run.model_seconds, 1),
                improved=run.runner_improved if run.runner_improved is not None else improved,
                decision=decision,
                difference=difference,
                p_value=p,
                stopped_reason=run.stopped_reason,
                error=run.error,
                extra=extra,
            )
        )
    meta = {
        "task": task.name,
        "source": Path(task.source).name,
        "task_model": args.task_model,
        "optimizer_model": optimizer_model,
        "scoring": task.scoring,
        "options": list(task.options),
        "metric": task.metric,
        "seed": args.seed,
        "budget_calls": args.budget_calls,
        "split": {"train": sizes[0], "dev": sizes[1], "test": sizes[2]},
        "split_ids": task.split_ids(),
        "alpha": alpha,
        "margin": margin,
        "methods": list(args.methods),
        "dspy_strict": args.dspy_strict,
        "command": command or report.portable_command("python bench/optimizers.py", sys.argv[1:]),
        "versions": _versions(),
        # This invocation's wall time, replayed replies included: the methods in `methods` only.
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    kept = report.kept_rows(Path(args.out) / f"optimizers-{task.name}.json", meta, args.methods)
    if kept:  # a subset of methods was rerun: the others' rows stay, and the file says which ones they are
        meta["rows_from_an_earlier_run"] = [r.method for r in kept]
        order = {m: i for i, m in enumerate(ALL_METHODS)}
        rows = [rows[0], *sorted([*rows[1:], *kept], key=lambda r: order.get(r.method, len(order)))]
    json_path, md_path = report.write(Path(args.out), task.name, meta, rows)
    return json_path, md_path, rows


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("gradgate", "dspy", "litellm", "torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _methods(value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(ALL_METHODS)}"
        )
    return methods


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--task",
        default="boolean_expressions",
        help="a BBH task (boolean_expressions, causal_judgement, navigate, object_counting, "
        "sports_understanding, web_of_lies), gsm8k, or a path to a BBH-format JSON file",
    )
    p.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS), help="comma-separated")
    p.add_argument("--budget-calls", type=_positive, default=DEFAULT_BUDGET_CALLS, help="LLM calls each method's search may use")
    p.add_argument("--train", type=_positive, default=DEFAULT_SIZES[0])
    p.add_argument("--dev", type=_positive, default=DEFAULT_SIZES[1])
    p.add_argument("--test", type=int, default=DEFAULT_SIZES[2], help="0: every item left after train and dev")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task-model", default=DEFAULT_MODEL, help="any litellm model string")
    p.add_argument("--optimizer-model", default=None, help="any litellm model string (default: the task model)")
    p.add_argument(
        "--scoring",
        choices=("auto", "loglik", "generate"),
        default="auto",
        help="auto: log-likelihood of the answer options for embedded models with few distinct answers",
    )
    p.add_argument(
        "--dspy-strict",
        action="store_true",
        help="use DSPy's stock chat adapter (a reply without its field markers stops the optimizer) instead of the lenient one",
    )
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    p.add_argument("--cache-dir", default=str(REPO_ROOT / ".gradgate" / "bench-cache"))
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("LiteLLM", "litellm", "httpx", "dspy", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    try:
        json_path, md_path, _ = run_benchmark(args)
    except GradgateError as exc:
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if getattr(exc, "hint", None) else ""), file=sys.stderr)
        return exc.exit_code
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path} and {md_path} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
