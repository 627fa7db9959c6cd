"""What an optimization run reports: the score table, gradients.md, the PR body and result.json.

One computed result (`results.OptimizeResult`) rendered several ways; nothing here calls a model.
Model-written text (gradient summaries) is redacted and shortened before it is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from gradgate.core.demos import OPEN_MARKER, slot_content
from gradgate.core.secrets import redact
from gradgate.core.stats import Interval
from gradgate.scoring.results import fmt_usd

if TYPE_CHECKING:
    from gradgate.optimizers.results import OptimizeResult

SUMMARY_CHARS = 700  # per gradient summary in the PR body
PR_MARKER = "<!-- gradgate-tune -->"

DECISION_RULE = (
    "A new prompt is proposed only when its mean score on the held-out test split beats the original by more "
    "than the margin **and** the paired difference has statistical support (exact McNemar test for pass/fail "
    "scores, else a paired bootstrap interval whose lower bound clears the margin). With several methods, the "
    "winner is chosen on the dev split and only the winner is confirmed on test."
)


def fmt_interval(interval: Interval | None, *, signed: bool = False) -> str:
    if interval is None:
        return "—"
    sign = "+" if signed else ""
    return f"{interval.mean:{sign}.3f} [{interval.low:{sign}.3f}, {interval.high:{sign}.3f}] n={interval.n}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _short(text: str, limit: int) -> str:
    clean = redact(" ".join(text.split()))
    return clean if len(clean) <= limit else clean[: limit - 1].rstrip() + "…"


def score_table(results: Sequence[OptimizeResult]) -> str:
    """Original vs best on dev and test, with intervals, the paired test, and what each run used."""
    lines = [
        "| Prompt | Method | Best | Dev original | Dev best | Test original | Test best "
        "| Δ test (best − original) | p | Calls | Tokens | Cost | Proposed |",
        "|---|---|---|---|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        cells = [
            r.prompt_id,
            r.method,
            r.best.id,
            fmt_interval(r.dev_original),
            fmt_interval(r.dev_best),
            fmt_interval(r.test_original),
            fmt_interval(r.test_best),
            fmt_interval(r.difference, signed=True),
            f"{r.p_value:.3g}" if r.p_value is not None else "—",
            str(r.usage.calls),
            str(r.usage.tokens),
            fmt_usd(r.usage.cost_usd),
            "yes" if r.improved else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_line(budget: dict[str, Any]) -> str:
    limits = budget.get("limits", {})

    def limit(key: str) -> str:
        value = limits.get(key)
        return "unlimited" if value is None else f"{value:g}"

    text = (
        f"{budget.get('calls', 0)} calls (limit {limit('max_calls')}), {budget.get('tokens', 0)} tokens "
        f"(limit {limit('max_tokens')}), {fmt_usd(float(budget.get('cost_usd', 0.0)))} "
        f"(limit {limit('max_usd')}), "
        f"{float(budget.get('seconds', 0.0)):.0f} s (limit {limit('max_seconds')})"
    )
    if budget.get("stopped_reason"):
        text += f"; stopped: {budget['stopped_reason']}"
    return text


def _decisions(results: Sequence[OptimizeResult]) -> list[str]:
    out = []
    for r in results:
        stop = f" The search stopped early: {r.stopped_reason}." if r.stopped_reason else ""
        stop += f" Label prior: {_cell(r.label_prior)}." if r.label_prior else ""
        train, dev, test = r.split_sizes
        out.append(
            f"- **{r.prompt_id} / {r.method}** (split {train}/{dev}/{test}, seed {r.seed}, "
            f"{len([c for c in r.candidates if c.dev_score is not None])} candidates scored, "
            f"{len([c for c in r.candidates if c.rejected])} rejected): {_cell(r.decision)}.{stop}"
        )
    return out


def report_markdown(results: Sequence[OptimizeResult], *, budget: dict[str, Any], failures: Sequence[str], message: str) -> str:
    lines = ["# gradgate optimize", ""]
    if results:
        lines += [score_table(results), "", *_decisions(results), ""]
    for failure in failures:
        lines.append(f"- **not run to a result**: {_cell(failure)}")
    if failures:
        lines.append("")
    lines += [
        f"**Outcome:** {_cell(message)}",
        "",
        f"**Budget used (whole job):** {budget_line(budget)}",
        "",
        DECISION_RULE,
        "",
    ]
    return "\n".join(lines)


def gradients_markdown(results: Sequence[OptimizeResult]) -> str:
    """The summarized gradients per iteration and the candidates each produced."""
    lines = ["# Gradients", ""]
    for r in results:
        lines += [f"## {r.prompt_id} / {r.method}", ""]
        if not r.gradients:
            lines += ["No gradients recorded (the method keeps none, or no train item failed).", ""]
            continue
        by_id = {c.id: c for c in r.candidates}
        for note in r.gradients:
            lines += [
                f"### Iteration {note.step + 1}, from {note.parent}",
                "",
                redact(note.summary.strip()),
                "",
            ]
            if note.per_item and note.summary.startswith("("):
                lines += [f"- {_short(g, 400)}" for g in note.per_item] + [""]
            elif note.per_item:
                lines += [f"<details><summary>{len(note.per_item)} per-item gradients</summary>", ""]
                lines += [f"- {_short(g, 400)}" for g in note.per_item] + ["", "</details>", ""]
            if note.children:
                lines.append("Candidates: " + ", ".join(_child(by_id.get(c), c) for c in note.children))
            else:
                lines.append("Candidates: none (the budget stopped the edit, or every reply was unusable)")
            lines.append("")
    return "\n".join(lines)


def _child(candidate: Any, candidate_id: str) -> str:
    if candidate is None:
        return candidate_id
    if candidate.rejected:
        return f"{candidate_id} (rejected: {candidate.rejected})"
    return f"{candidate_id} (dev {candidate.dev_score:.3f})" if candidate.dev_score is not None else candidate_id


def pr_body(
    chosen: Sequence[OptimizeResult],
    results: Sequence[OptimizeResult],
    *,
    budget: dict[str, Any],
    methods: Sequence[str],
) -> str:
    lines = [
        PR_MARKER,
        "## gradgate: prompt tuning",
        "",
        "This pull request proposes prompts that beat the current ones on the held-out test split.",
        "",
        "### Scores",
        "",
        score_table(results),
        "",
        *_decisions(results),
        "",
        "### What changed and why",
        "",
    ]
    for r in chosen:
        lines += [f"#### `{r.prompt_path}` ({r.method}, candidate {r.best.id})", ""]
        notes = _lineage_notes(r)
        if notes:
            for note in notes:
                lines.append(f"- iteration {note.step + 1}: {_short(note.summary, SUMMARY_CHARS)}")
        else:
            lines.append("- (this method records no textual gradients)")
        shown = slot_content(r.best.text)
        if shown.strip():
            count = shown.count("\nAnswer: ")
            lines += [
                "",
                f"The prompt now carries {count} worked example(s) in its demonstrations slot (between the "
                f"`{OPEN_MARKER}` marker lines; edit them freely, the markers are never sent to the model):",
                "",
                "```text",
                redact(shown.rstrip())[:4000].replace("```", "ʼʼʼ"),
                "```",
            ]
        lines.append("")
    settings = "; ".join(f"{r.prompt_id}/{r.method}: {r.settings or 'defaults'}" for r in results)
    lines += [
        "### Method and budget",
        "",
        f"- Methods: {', '.join(methods)}; seed {results[0].seed if results else 0}",
        f"- Settings: {_cell(settings)}",
        f"- Budget used: {budget_line(budget)}",
        f"- {DECISION_RULE}",
        "",
        "Rerunning the optimization updates this pull request when it finds something better. Commits you "
        "push to this branch are never overwritten: gradgate stops instead.",
        "",
    ]
    return "\n".join(lines)


def _lineage_notes(result: OptimizeResult) -> list[Any]:
    """The gradient notes on the path from the original to the best candidate, oldest first."""
    by_id = {c.id: c for c in result.candidates}
    chain: list[str] = []
    current = by_id.get(result.best.id)
    while current is not None and current.parent is not None:
        chain.append(current.id)
        current = by_id.get(current.parent)
    notes = [n for n in result.gradients if any(c in chain for c in n.children)]
    return notes or list(result.gradients[-3:])


def result_json(
    results: Sequence[OptimizeResult],
    *,
    budget: dict[str, Any],
    message: str,
    pr_number: int | None,
    pr_url: str | None,
    failures: Sequence[str],
) -> dict[str, Any]:
    return {
        "version": 1,
        "message": message,
        "pr_number": pr_number,
        "pr_url": pr_url,
        "budget": budget,
        "failures": list(failures),
        "results": [
            {
                **asdict(r),
                "candidates": [asdict(c) for c in r.candidates],
                "best_is_original": r.best_is_original,
            }
            for r in results
        ],
    }
