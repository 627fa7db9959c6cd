"""What `gradgate check` found, as one summary object, and its renderers.

One `CheckSummary` is rendered three ways from the same numbers: Markdown (stdout, `report.md`, the
job summary, the sticky pull request comment), step outputs, and JSON (`check.json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gradgate.core.stats import detectable_line
from gradgate.scoring.calibration import JudgeCalibration
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

**The judge.** When a suite carries labeled judge examples (`judge_examples:` in the suite), the judge
judges them first; if it agrees with fewer than `judge.min_agreement` of them, a verdict that rests on it is
**inconclusive**, whatever the scores say, and the suite's items are not scored (`judge.score_untrusted`
scores them anyway, to show what the scores alone say).

**What a suite can detect.** Each verdict states the smallest drop of the mean score the gate can flag on
that suite: for binary scores exactly (k of n discordant pairs all going one way, the McNemar p-value below
the look's level and k/n above max_drop), otherwise approximately (max_drop + z·s/√n, with s the standard
deviation of the paired differences). An inconclusive verdict says how many paired items (at the observed
rates), or with repeats how many repeats, would decide the change observed.
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
class Power:
    """What the suite can detect at its size, alpha and max_drop (see gradgate.gate.power)."""

    detectable_drop: float | None  # the smallest drop of the mean score the gate can flag; None: none can be
    exact: bool  # exact (binary scores, McNemar) or a normal approximation
    n: int  # paired items in the suite
    level: float  # the level of the look that detects it
    basis: str  # how it was computed, in words
    needed_items: int | None = None  # inconclusive: paired items at which the observed change would be decided
    needed_repeats: int | None = None  # inconclusive: repeats at which it would be, on the items at hand
    advice: str | None = None  # the two above in words

    def line(self) -> str:
        return detectable_line(self.detectable_drop, self.exact, self.basis)


@dataclass(frozen=True)
class Noise:
    """Flip rates with repeats > 1: the chance that two repeats of an item disagree on pass/fail."""

    repeats: int
    base_flip_rate: float | None
    head_flip_rate: float | None
    flaky: tuple[tuple[str, float, float], ...] = ()  # (item id, base, head), the flakiest first
    flaky_items: int = 0

    def line(self) -> str:
        def rate(value: float | None) -> str:
            return "–" if value is None else f"{value:.3f}"

        text = f"flip rate over {self.repeats} repeats: base {rate(self.base_flip_rate)}, head {rate(self.head_flip_rate)}"
        if self.flaky:
            shown = ", ".join(f"{i} ({b:.2f}/{h:.2f})" for i, b, h in self.flaky)
            more = f" and {self.flaky_items - len(self.flaky)} more" if self.flaky_items > len(self.flaky) else ""
            text += f"; flaky items (base/head): {shown}{more}"
        return text


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
    base_from_score_cache: int = 0  # base items whose scores came from the gate's score cache
    head_from_score_cache: int = 0
    cost_usd: float = 0.0
    looks: int = 0
    stopped_early: bool = False
    calls_saved: int = 0  # estimate: remaining items × calls per item so far
    note: str | None = None  # budget ran out, not comparable, ...
    infra_failure: bool = False  # no decision because the budget or the model gave out
    power: Power | None = None
    noise: Noise | None = None  # repeats > 1
    judge: JudgeCalibration | None = None  # the judge on the suite's labeled examples
    unjudged: int = 0  # items left out: the judge gave no verdict


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
    if p.verdict == "new" or p.items_scored == 0:  # no base side, or nothing scored (e.g. an untrusted judge)
        text = str(p.calls)
    else:
        text = f"{p.calls} (base cached)" if p.base_calls == 0 else f"{p.calls} (base {p.base_calls})"
    if p.cached_calls:
        text += f" +{p.cached_calls} from cache"
    return text


def _prompt_notes(p: PromptVerdict) -> list[str]:
    """One bullet per prompt (what changed, why the verdict) and sub-bullets: power, judge, noise."""
    bits = []
    if p.reasons:
        bits.append("changed: " + ", ".join(p.reasons))
    if p.decision is not None:
        bits.append(p.decision.reason)
    if p.note:
        bits.append(p.note)
    lines = [f"- `{p.prompt_id}`: " + _cell("; ".join(bits))] if bits else [f"- `{p.prompt_id}`"]
    if p.power is not None:
        lines.append("  - " + _cell(p.power.line()))
        if p.power.advice and p.verdict == "inconclusive":
            lines.append("  - undecided: " + _cell(p.power.advice))
    if p.judge is not None:
        mark = "" if p.judge.trusted else "⚠️ "
        lines.append(f"  - {mark}judge: " + _cell(p.judge.summary()))
    if p.noise is not None:
        lines.append("  - " + _cell(p.noise.line()))
    return lines


def _score_cache_line(prompts: tuple[PromptVerdict, ...]) -> str | None:
    compared = [p for p in prompts if p.verdict != "new" and p.items_scored]
    if not compared:
        return None
    reused = sum(p.base_from_score_cache for p in compared)
    total = sum(p.items_scored for p in compared)
    head = sum(p.head_from_score_cache for p in prompts)
    text = f"Score cache: {reused} of {total} base item scores came from the cache"
    text += f" (and {head} head item scores)" if head else ""
    return text + "; keep `.gradgate/` between runs (actions/cache) so a pull request pays only for its head."


def headline(summary: CheckSummary) -> str:
    if summary.error and not summary.prompts:
        return f"{ICONS['error']} could not run"
    counts = [
        f"{ICONS[v]} {summary.count(v)} {v}"
        for v in ("regressed", "improved", "unchanged", "inconclusive", "new")
        if summary.count(v)
    ]
    return " · ".join(counts) if counts else "no prompt changed"


def _alerts(summary: CheckSummary) -> list[str]:
    """What must be seen first: the run's error, and every judge that disagrees with its labeled examples."""
    lines = [f"> [!CAUTION]\n> {_cell(summary.error)}", ""] if summary.error else []
    for p in summary.prompts:
        if p.judge is not None and not p.judge.trusted:
            lines += [
                f"> [!WARNING]\n> **The judge of `{p.prompt_id}` disagrees with {p.judge.disagree} of {p.judge.n} labeled "
                f"examples** (agreement {p.judge.accuracy:.2f}, min_agreement {p.judge.min_agreement:g}): its verdicts "
                "are inconclusive until the judge (model, method or criteria) agrees with the labels.",
                "",
            ]
    return lines


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
    lines += _alerts(summary)
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
        lines += _prompt_notes(p)
    if summary.prompts:
        lines.append("")
    cache_line = _score_cache_line(summary.prompts)
    if cache_line:
        lines += [cache_line, ""]
    if summary.unchanged:
        lines += [
            "Not re-run (effective content unchanged): " + ", ".join(f"`{i}`" for i in summary.unchanged) + ".",
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
