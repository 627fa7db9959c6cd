"""The eval command's report: `results.json` and `report.md` written side by side, and the terminal table.

    results_path, report_path = write_results(results, out_dir)
    print_table(results, Console())

One summary object (`scoring.results.EvalResults`), several renderers.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gradgate.core.files import atomic_write_text
from gradgate.scoring.results import EvalResults, PromptOut, fmt_usd


def render_markdown(results: EvalResults) -> str:
    budget = results.budget
    lines = [
        "# gradgate eval",
        "",
        *(
            ["> [!WARNING]", "> Incomplete run, the results are partial: " + results.error.replace("\n", "\n> "), ""]
            if results.error
            else []
        ),
        f"Models: {', '.join(f'{role} `{model}`' for role, model in results.models.items())}",
        "",
        "| prompt | suite | score (95% CI) | pass rate | items | complete |",
        "|---|---|---|---|---|---|",
    ]
    for p in results.prompts:
        lines.append(
            f"| `{p.id}` | `{p.suite}` | {p.mean_score:.3f} ({p.ci_low:.3f}–{p.ci_high:.3f}) | "
            f"{p.pass_rate:.0%} | {_items(p)} | {'yes' if p.complete else 'no: ' + (p.stopped_reason or '')} |"
        )
    lines += [
        "",
        f"Calls: {budget['calls']} (+{sum(r['cached_calls'] for r in budget['by_role'].values())} from cache), "
        f"tokens: {budget['tokens']}, cost: {fmt_usd(budget['cost_usd'])}, time: {budget['seconds']:.1f} s",
        "",
    ]
    for p in results.prompts:
        if p.power is not None:
            lines.append(f"- `{p.id}`: {p.power.line}")
        if p.judge_agreement is not None:
            mark = "" if p.judge_agreement.trusted else "⚠️ below min_agreement: check's verdicts on it are inconclusive; "
            lines.append(f"- `{p.id}`: {mark}{p.judge_agreement.summary}")
        if p.answer_skew is not None:
            lines.append(f"- `{p.id}`: {p.answer_skew.line}")
    if any(p.power or p.judge_agreement or p.answer_skew for p in results.prompts):
        lines.append("")
    for p in results.prompts:
        failing = [i for i in p.items if not i.passed and i.error is None and not i.unjudged][:5]
        if failing:
            lines += [f"## `{p.id}`: failing items (first {len(failing)})", ""]
            for item in failing:
                reasons = "; ".join(m.reason for m in item.metrics)
                output = item.output.strip().replace("\n", " ")[:200]
                lines.append(f"- `{item.id}`: {reasons} — output: {output!r}")
            lines.append("")
        unjudged = [i.id for i in p.items if i.unjudged and i.error is None]
        if unjudged:
            shown = ", ".join(f"`{i}`" for i in unjudged[:20]) + (", …" if len(unjudged) > 20 else "")
            lines += [f"## `{p.id}`: {len(unjudged)} unjudged item(s), left out of the score", "", shown, ""]
    return "\n".join(lines)


def print_table(results: EvalResults, console: Console) -> None:
    table = Table(title="gradgate eval")
    for column in ("prompt", "suite", "score", "95% CI", "pass", "items"):
        table.add_column(column, justify="right" if column in ("score", "pass", "items") else "left")
    for p in results.prompts:
        table.add_row(
            p.id,
            p.suite,
            f"{p.mean_score:.3f}",
            f"{p.ci_low:.3f}–{p.ci_high:.3f}",
            f"{p.pass_rate:.0%}",
            _items(p),
        )
    console.print(table)
    for p in results.prompts:
        if p.power is not None:
            console.print(f"{p.id}: {p.power.line}", highlight=False)
        if p.judge_agreement is not None:
            console.print(
                f"{p.id}: {'' if p.judge_agreement.trusted else 'WARNING '}{p.judge_agreement.summary}", highlight=False
            )
        if p.answer_skew is not None:
            console.print(f"{p.id}: {p.answer_skew.line}", highlight=False, markup=False)
    b = results.budget
    console.print(
        f"calls {b['calls']}, tokens {b['tokens']}, cost {fmt_usd(b['cost_usd'])}, {b['seconds']:.1f} s"
        + (f" — stopped: {b['stopped_reason']}" if b.get("stopped_reason") else "")
    )


def _items(p: PromptOut) -> str:
    return f"{p.n_scored}/{p.n_items}" + (f" ({p.n_unjudged} unjudged)" if p.n_unjudged else "")


def write_results(results: EvalResults, out_dir: Path) -> tuple[Path, Path]:
    results_path, report_path = out_dir / "results.json", out_dir / "report.md"
    atomic_write_text(results_path, json.dumps(results.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(report_path, render_markdown(results) + "\n")
    return results_path, report_path
