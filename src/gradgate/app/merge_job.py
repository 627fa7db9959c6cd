"""`gradgate merge DIR...`: the shards of one eval or check (`--shard K/N`) combined into one result.

    outcome = run_merge([Path("shards")], out_dir=Path("gradgate-out"), env=os.environ)
    sys.exit(outcome.exit_code)

The merged result is what one unsharded run would have written: the prompts in that run's order, the budget
used summed over the shards (seconds: the longest shard, as they ran side by side), and for a check one
report, one job summary, one set of step outputs, one sticky comment and one exit code, published through the
same code as `gradgate check` (`check_job.publish`). A missing, repeated or foreign shard is a usage error
(exit 2) that names it. Shard results are read through pydantic: a malformed file is reported, not trusted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError

from gradgate.app.check_job import CheckOutcome, publish
from gradgate.app.eval_job import write_eval_reports
from gradgate.app.eval_report import render_markdown as eval_markdown
from gradgate.app.shards import ShardManifest, check_complete, find_manifests
from gradgate.core.files import first_problem
from gradgate.errors import EXIT_INFRA, EXIT_OK, EXIT_REGRESSION, UsageError
from gradgate.gate.report import CheckSummary, PromptVerdict, overall_verdict
from gradgate.scoring.results import EvalResults

log = logging.getLogger(__name__)
Found = Sequence[tuple[Path, ShardManifest]]


@dataclass(frozen=True)
class MergeOutcome:
    kind: Literal["eval", "check"]
    exit_code: int
    markdown: str
    report_path: Path | None
    results: EvalResults | None = None  # eval
    check: CheckOutcome | None = None  # check


_Count = Annotated[int, Field(ge=0)]
_Amount = Annotated[float, Field(ge=0)]  # finite: the models refuse NaN and infinity


def _limit(value: Any) -> int | float | None:
    if value is None or (type(value) in (int, float) and math.isfinite(value) and value >= 0):
        return value  # type: ignore[no-any-return]
    raise ValueError("a limit is a finite number, not negative, or null")


_Limit = Annotated[Any, PlainValidator(_limit)]


class RoleBudget(BaseModel):
    """One role's usage in a shard's `budget.by_role` (as `gradgate.core.budget.RoleUsage` writes it)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    calls: _Count = 0
    cached_calls: _Count = 0
    retries: _Count = 0
    prompt_tokens: _Count = 0
    completion_tokens: _Count = 0
    cost_usd: _Amount = 0.0


class ShardBudget(BaseModel):
    """A shard's `budget` section (as `BudgetTracker.snapshot` writes it): read as untrusted input."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    limits: dict[str, _Limit] = Field(default_factory=dict)
    calls: _Count = 0
    tokens: _Count = 0
    cost_usd: _Amount = 0.0
    seconds: _Amount = 0.0
    stopped_reason: str | None = None
    by_role: dict[str, RoleBudget] = Field(default_factory=dict)


def shard_budget(raw: Mapping[str, Any], where: str, *, complete: bool = False) -> ShardBudget | None:
    """A shard's budget section, validated: None when empty (the shard made no call), else finite non-negative
    numbers of the right types; with `complete`, every key a snapshot writes. UsageError (exit 2) naming
    `where` (the file) and the key otherwise."""
    if not raw and not complete:
        return None
    try:
        budget = ShardBudget.model_validate(raw)
    except ValidationError as exc:
        loc, message = first_problem(exc)
        raise _malformed(where, ("budget", *loc), message) from None
    if complete:
        missing: list[tuple[str, ...]] = [
            ("budget", name) for name in ShardBudget.model_fields if name not in budget.model_fields_set
        ]
        missing += [
            ("budget", "by_role", role, name)
            for role, usage in budget.by_role.items()
            for name in RoleBudget.model_fields
            if name not in usage.model_fields_set
        ]
        if missing:
            raise _malformed(where, missing[0], "missing")
    return budget


def _malformed(where: str, loc: Sequence[Any], message: str) -> UsageError:
    key = ".".join(str(part)[:80] for part in loc)
    return UsageError(
        f"cannot merge: a malformed shard result: {message}",
        where=f"{where}:{key}",
        hint="pass the --out directories of unmodified shards (numbers must be finite and not negative)",
    )


def merge_budgets(budgets: Sequence[Mapping[str, Any] | ShardBudget]) -> dict[str, Any]:
    """Calls, tokens and USD summed, per role too; seconds of the longest shard; the first stop reason.
    Mappings are validated first (UsageError naming the shard by its position and the key)."""
    present = [b if isinstance(b, ShardBudget) else shard_budget(b, f"shard {n}") for n, b in enumerate(budgets, start=1) if b]
    parts = [b for b in present if b is not None]
    if not parts:
        return {}
    by_role: dict[str, dict[str, Any]] = {}
    for budget in parts:
        for role, usage in budget.by_role.items():
            merged = by_role.setdefault(role, {})
            for key, value in usage.model_dump(exclude_unset=True).items():
                merged[key] = merged.get(key, 0) + value
    return {
        "limits": dict(parts[0].limits),
        "calls": sum(b.calls for b in parts),
        "tokens": sum(b.tokens for b in parts),
        "cost_usd": round(sum(b.cost_usd for b in parts), 6),
        "seconds": max(b.seconds for b in parts),
        "stopped_reason": next((b.stopped_reason for b in parts if b.stopped_reason), None),
        "by_role": {role: by_role[role] for role in sorted(by_role)},
    }


def _ordered(found: Found, parts: Sequence[Sequence[Any]], key: str) -> list[Any]:
    """Every shard's records, in the order one unsharded run would have produced them."""
    by_id = {getattr(record, key): record for part in parts for record in part}
    return [by_id[pid] for pid in found[0][1].all_prompts if pid in by_id]


def _read(path: Path, adapter: TypeAdapter[Any]) -> Any:
    try:
        return adapter.validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise UsageError(f"cannot merge {path}: {exc}", hint="pass the --out directories of unmodified shards") from exc


def _same(values: Sequence[Any], what: str) -> Any:
    distinct = [v for i, v in enumerate(values) if v not in values[:i]]
    if len(distinct) > 1:
        raise UsageError(
            f"cannot merge: the shards disagree on the {what} ({' vs '.join(map(str, distinct))})",
            hint="merge the shards of one run: the same command, revisions, config and --shard count",
        )
    return values[0]


def _merge_eval(found: Found, out_dir: Path, junit: Path | None) -> MergeOutcome:
    adapter = TypeAdapter(EvalResults)
    paths = [directory / "results.json" for directory, _ in found]
    parts: list[EvalResults] = [_read(path, adapter) for path in paths]
    # An eval shard always writes its whole budget: the report reads every key of it.
    budgets = [shard_budget(p.budget, str(path), complete=True) for p, path in zip(parts, paths, strict=True)]
    errors = [p.error for p in parts if p.error]
    results = EvalResults(
        created_at=max(p.created_at for p in parts),
        models=_same([p.models for p in parts], "models"),
        budget=merge_budgets([b for b in budgets if b is not None]),
        prompts=_ordered(found, [p.prompts for p in parts], "id"),
        complete=all(p.complete for p in parts),
        error="; ".join(dict.fromkeys(errors)) or None,
    )
    _, report_path = write_eval_reports(results, out_dir, junit=junit)
    exit_code = EXIT_OK if results.complete else EXIT_INFRA
    return MergeOutcome("eval", exit_code, eval_markdown(results), report_path, results=results)


def merged_exit_code(prompts: Sequence[PromptVerdict], error_codes: Sequence[int], fail_on_regression: bool) -> int:
    """As one check decides it: a regression (when it fails the check), else an error, else an infra failure."""
    if fail_on_regression and any(p.verdict == "regressed" for p in prompts):
        return EXIT_REGRESSION
    if error_codes:
        return error_codes[0]
    return EXIT_INFRA if any(p.infra_failure for p in prompts) else EXIT_OK


def _merge_check(
    found: Found,
    out_dir: Path,
    env: Mapping[str, str],
    *,
    comment: bool,
    fail_on_regression: bool,
    junit: Path | None,
    github_options: Mapping[str, Any] | None,
) -> MergeOutcome:
    adapter = TypeAdapter(CheckSummary)
    paths = [directory / "check.json" for directory, _ in found]
    parts: list[CheckSummary] = [_read(path, adapter) for path in paths]
    # Empty when a shard had nothing to score; otherwise whole, as a check writes it.
    budgets = [shard_budget(p.budget, str(path), complete=bool(p.budget)) for p, path in zip(parts, paths, strict=True)]
    first = parts[0]
    prompts = tuple(_ordered(found, [p.prompts for p in parts], "prompt_id"))
    error = "; ".join(dict.fromkeys(p.error for p in parts if p.error)) or None
    codes = [m.error_exit_code for _, m in found if m.error_exit_code]
    summary = CheckSummary(
        base_label=_same([p.base_label for p in parts], "base revision"),
        head_label=_same([p.head_label for p in parts], "head revision"),
        models=next((p.models for p in parts if p.models), {}),
        gate=next((p.gate for p in parts if p.models), first.gate),
        prompts=prompts,
        unchanged=first.unchanged,
        removed=first.removed,
        broken_base=first.broken_base,
        overall="error" if error is not None and not prompts else overall_verdict(prompts),
        exit_code=merged_exit_code(prompts, codes, fail_on_regression),
        error=error,
        budget=merge_budgets([b for b in budgets if b is not None]),
    )
    check = publish(summary, out_dir, env, comment=comment, github_options=github_options, junit=junit)
    return MergeOutcome("check", check.exit_code, check.markdown, check.report_path, check=check)


def run_merge(
    dirs: Sequence[Path],
    *,
    out_dir: Path,
    env: Mapping[str, str],
    comment: bool = True,
    fail_on_regression: bool = True,
    junit: Path | None = None,
    github_options: Mapping[str, Any] | None = None,
) -> MergeOutcome:
    """Merge the shards found in `dirs` (each a shard's --out directory, or a folder of them) into `out_dir`."""
    found = find_manifests(dirs)
    check_complete(found)
    log.info("merging %d %s shard(s) into %s", len(found), found[0][1].kind, out_dir)
    if found[0][1].kind == "eval":
        return _merge_eval(found, out_dir, junit)
    return _merge_check(
        found, out_dir, env, comment=comment, fail_on_regression=fail_on_regression, junit=junit, github_options=github_options
    )
