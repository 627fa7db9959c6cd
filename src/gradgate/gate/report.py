"""What `gradgate check` found, as one summary object, and its renderers.

One `CheckSummary` is rendered three ways from the same numbers: Markdown (stdout, `report.md`, the
job summary, the sticky pull request comment), step outputs, and JSON (`check.json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gradgate.scoring.results import fmt_usd

Verdict = Literal["regressed", "improved", "unchanged", "inconclusive", "new", "error"]
Overall = Literal["regressed", "improved", "unchanged", "inconclusive", "no-changes", "error"]

COMMENT_MARKER = "gradgate-check"  # the sticky comment's hidden `<!-- gradgate-check -->`
ICONS = {
    "regressed": "❌",
    "improved": "✅",
    "unchanged": "➖",
    "inconclusive": "❔",
    "new": "🆕",
    "error": "⚠️",
}

DECISION_RULE = """\
Each changed prompt is scored in its base and head versions on the same items (the ids both suites
share), with the head's models and config, so only the prompt differs. For the paired differences
d = head − base:

- **regressed**: binary scores (0/1, repeats 1): the exact McNemar test rejects "no difference" at the
  look's level and mean(d) < −max_drop; other scores: the upper end of the bootstrap (BCa) confidence
  interval of mean(d), at the look's level, is below −max_drop;
- **improved**: the same, mirrored (mean(d) > +max_drop, or the lower end above +max_drop);
- **unchanged**: the whole interval lies within ±max_drop;
- **inconclusive**: anything else, or fewer than min_items paired items.

With `repeats` > 1 each item's score is the mean of that many samples. Sequential test: items are taken
in a fixed pseudo-random order (by a hash of their id) and scored in batches; the first look comes after
max(min_items, batch_size) items, and each look tests at the level given by an O'Brien-Fleming-type
alpha-spending function (Lan-DeMets), spent only at looks that are tested, so over all looks the error
rate stays within alpha (union bound). The run stops at the first look with a verdict other than
inconclusive. Only **regressed** fails the check (exit 1).
"""


@dataclass(frozen=True)
class Decision:
    verdict: Literal["regressed", "improved", "unchanged", "inconclusive"]
    n: int
    mean_diff: float
    low: float
    high: float
    level: float  # significance level this look was tested at
    p_value: float | None  # exact McNemar, binary scores only
    reason: str


@dataclass(frozen=True)
class PromptVerdict:
    prompt_id: str
    verdict: Verdict
    path: str  # of the head version, relative to the git top level (for annotations and links)
    line: int  # where the prompt body starts
    reasons: tuple[str, ...] = ()  # what changed
    base_mean: float | None = None
    head_mean: float | None = None
    decision: Decision | None = None
    items_scored: int = 0
    items_total: int = 0
    calls: int = 0  # real LLM calls for this prompt (base + head)
    base_calls: int = 0
    cached_calls: int = 0  # answered by the response cache
    base_from_score_cache: int = 0  # base items whose scores came from the gate's base score cache
    cost_usd: float = 0.0
    looks: int = 0
    stopped_early: bool = False
    calls_saved: int = 0  # estimate: remaining items × calls per item so far
    note: str | None = None  # budget ran out, not comparable, ...
    infra_failure: bool = False  # no decision because the budget or the model gave out


@dataclass(frozen=True)
class CheckSummary:
    base_label: str
    head_label: str
    models: dict[str, str]
    gate: dict[str, Any]
    prompts: tuple[PromptVerdict, ...]
    unchanged: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    broken_base: dict[str, str] = field(default_factory=dict)
    overall: Overall = "no-changes"
    exit_code: int = 0
    error: str | None = None
    budget: dict[str, Any] = field(default_factory=dict)

    def count(self, verdict: Verdict) -> int:
        return sum(1 for p in self.prompts if p.verdict == verdict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def overall_verdict(prompts: tuple[PromptVerdict, ...] | list[PromptVerdict]) -> Overall:
    """regressed > inconclusive > improved > unchanged; new prompts do not count; none: no-changes."""
    compared = [p.verdict for p in prompts if p.verdict != "new"]
    for verdict in ("regressed", "error", "inconclusive", "improved", "unchanged"):
        if verdict in compared:
            return verdict  # type: ignore[return-value]
    return "no-changes"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "−")


def _delta(p: PromptVerdict) -> str:
    d = p.decision
    if d is None:
        return "–"
    confidence = f"{(1 - d.level) * 100:.4g}%"
    text = f"{_signed(d.mean_diff)} [{_signed(d.low)}, {_signed(d.high)}] ({confidence})"
    if d.p_value is not None:
        text += f", McNemar p={d.p_value:.3g}"
    return text


def _calls(p: PromptVerdict) -> str:
    base = "base cached" if p.base_calls == 0 and p.verdict != "new" else f"base {p.base_calls}"
    text = f"{p.calls} ({base})" if p.verdict != "new" else str(p.calls)
    if p.cached_calls:
        text += f" +{p.cached_calls} from cache"
    return text


def headline(summary: CheckSummary) -> str:
    if summary.error and not summary.prompts:
        return f"{ICONS['error']} could not run"
    counts = [
        f"{ICONS[v]} {summary.count(v)} {v}"
        for v in ("regressed", "improved", "unchanged", "inconclusive", "new")
        if summary.count(v)
    ]
    return " · ".join(counts) if counts else "no prompt changed"


def render_markdown(summary: CheckSummary) -> str:
    gate = summary.gate
    lines = [
        f"## gradgate check: {headline(summary)}",
        "",
        f"Base `{summary.base_label}` → head `{summary.head_label}` · max drop {gate.get('max_drop')} · "
        f"α {gate.get('alpha')} · min items {gate.get('min_items')} · repeats {gate.get('repeats')}"
        f"{' · sequential' if gate.get('sequential') else ''}",
        "",
    ]
    if summary.error:
        lines += [f"> [!CAUTION]\n> {_cell(summary.error)}", ""]
    if summary.prompts:
        lines += [
            "| prompt | base | head | Δ head − base [CI] | verdict | items | calls | cost |",
            "|---|---:|---:|---|---|---:|---:|---:|",
        ]
        for p in summary.prompts:
            items = f"{p.items_scored}/{p.items_total}" + (" ⏩" if p.stopped_early else "")
            lines.append(
                f"| [`{p.prompt_id}`]({p.path}) | {_num(p.base_mean)} | {_num(p.head_mean)} | {_delta(p)} | "
                f"{ICONS[p.verdict]} {p.verdict} | {items} | {_calls(p)} | {fmt_usd(p.cost_usd)} |"
            )
        lines.append("")
    early = [p for p in summary.prompts if p.stopped_early]
    if early:
        saved = sum(p.calls_saved for p in early)
        detail = ", ".join(f"`{p.prompt_id}` after {p.items_scored} of {p.items_total} items" for p in early)
        lines += [
            f"⏩ Stopped early by the sequential test: {detail} — about {saved} calls saved (estimated from "
            "the calls per item so far).",
            "",
        ]
    for p in summary.prompts:
        bits = []
        if p.reasons:
            bits.append("changed: " + ", ".join(p.reasons))
        if p.decision is not None:
            bits.append(p.decision.reason)
        if p.base_from_score_cache:
            bits.append(f"{p.base_from_score_cache} base item scores reused from the gate's score cache")
        if p.note:
            bits.append(p.note)
        if bits:
            lines.append(f"- `{p.prompt_id}`: " + _cell("; ".join(bits)))
    if summary.prompts:
        lines.append("")
    if summary.unchanged:
        lines += [
            "Not re-run (effective content unchanged): "
            + ", ".join(f"`{i}`" for i in summary.unchanged)
            + ".",
            "",
        ]
    if summary.removed:
        lines += ["Removed in head: " + ", ".join(f"`{i}`" for i in summary.removed) + ".", ""]
    if summary.broken_base:
        lines += [
            "Base versions that could not be loaded (treated as absent): "
            + "; ".join(f"`{k}`: {_cell(v)}" for k, v in summary.broken_base.items())
            + ".",
            "",
        ]
    if summary.models:
        lines += [
            "Both versions were scored with the head's config and models ("
            + ", ".join(f"{role} `{model}`" for role, model in summary.models.items())
            + ") on the items both suites share, so only the prompt differs.",
            "",
        ]
    lines += ["<details><summary>How the verdict is decided</summary>", "", DECISION_RULE, "</details>", ""]
    budget = summary.budget
    if budget:
        cached = sum(r.get("cached_calls", 0) for r in budget.get("by_role", {}).values())
        lines.append(
            f"Totals: {budget.get('calls', 0)} calls (+{cached} from cache), "
            f"{budget.get('tokens', 0)} tokens, "
            f"{fmt_usd(budget.get('cost_usd', 0.0))}, {budget.get('seconds', 0.0):.1f} s. "
            f"Exit code {summary.exit_code}."
        )
    else:
        lines.append(f"Exit code {summary.exit_code}.")
    return "\n".join(lines) + "\n"


def step_outputs(summary: CheckSummary, report_path: str) -> dict[str, str]:
    return {
        "verdict": summary.overall,
        "regressed": str(summary.count("regressed")),
        "improved": str(summary.count("improved")),
        "unchanged": str(summary.count("unchanged")),
        "inconclusive": str(summary.count("inconclusive")),
        "new": str(summary.count("new")),
        "report-path": report_path,
    }
