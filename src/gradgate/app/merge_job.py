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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from gradgate.app.check_job import CheckOutcome, publish
from gradgate.app.eval_job import write_eval_reports
from gradgate.app.shards import ShardManifest, check_complete, find_manifests
from gradgate.errors import EXIT_INFRA, EXIT_OK, EXIT_REGRESSION, UsageError
from gradgate.gate.report import CheckSummary, PromptVerdict, overall_verdict
from gradgate.scoring.results import EvalResults
from gradgate.scoring.results import render_markdown as eval_markdown

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


def merge_budgets(budgets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Calls, tokens and USD summed, per role too; seconds of the longest shard; the first stop reason."""
    present = [b for b in budgets if b]
    if not present:
        return {}
    by_role: dict[str, dict[str, Any]] = {}
    for budget in present:
        for role, usage in budget.get("by_role", {}).items():
            merged = by_role.setdefault(role, {})
            for key, value in usage.items():
                merged[key] = merged.get(key, 0) + value
    return {
        "limits": present[0].get("limits", {}),
        "calls": sum(int(b.get("calls", 0)) for b in present),
        "tokens": sum(int(b.get("tokens", 0)) for b in present),
        "cost_usd": round(sum(float(b.get("cost_usd", 0.0)) for b in present), 6),
        "seconds": max(float(b.get("seconds", 0.0)) for b in present),
        "stopped_reason": next((b["stopped_reason"] for b in present if b.get("stopped_reason")), None),
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
    parts: list[EvalResults] = [_read(directory / "results.json", adapter) for directory, _ in found]
    errors = [p.error for p in parts if p.error]
    results = EvalResults(
        created_at=max(p.created_at for p in parts),
        models=_same([p.models for p in parts], "models"),
        budget=merge_budgets([p.budget for p in parts]),
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
    parts: list[CheckSummary] = [_read(directory / "check.json", adapter) for directory, _ in found]
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
        budget=merge_budgets([p.budget for p in parts]),
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
