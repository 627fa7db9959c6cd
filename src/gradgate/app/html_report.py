"""`report.html`: the eval, check and optimize reports as one self-contained page each.

    write_html(out_dir / "report.html", eval_html(results))   # or check_html(summary), optimize_html(...)

No network and no scripts: the page carries its own CSS, charts are inline SVG, and a Content-Security-Policy
forbids loading anything else. The skeleton and the CSS are package data (`gradgate/templates/report/`),
filled with `string.Template`; every value is HTML-escaped and redacted (model outputs can echo secrets).
The numbers are the ones report.md shows, rendered from the same objects.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from gradgate import __version__
from gradgate.core.files import atomic_write_text
from gradgate.core.secrets import redact
from gradgate.core.stats import Interval
from gradgate.gate.report import DECISION_RULE, CheckSummary, PromptVerdict
from gradgate.optimizers import report as tune_report
from gradgate.optimizers.results import OptimizeResult
from gradgate.scoring.results import EvalResults, PromptOut, fmt_usd

MAX_ITEMS_SHOWN = 500  # per prompt; results.json has them all
MAX_TEXT_CHARS = 4000  # per output, prompt or explanation shown


@cache
def _template(name: str) -> str:
    return resources.files("gradgate").joinpath(f"templates/report/{name}").read_text(encoding="utf-8")


def esc(value: object, limit: int | None = MAX_TEXT_CHARS) -> str:
    """Redacted, shortened, HTML-escaped text."""
    text = redact("" if value is None else str(value))
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"… [{len(text) - limit} more characters]"
    return html.escape(text, quote=True)


def page(title: str, meta: str, body: str) -> str:
    """The whole document: `meta` and `body` are HTML already; `title` is text."""
    return Template(_template("page.html")).substitute(
        title=esc(title), meta=meta, body=body, style=_template("style.css"), version=esc(__version__)
    )


def write_html(path: Path, document: str) -> Path:
    atomic_write_text(path, document)
    return path


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Iterable[int] = (), cls: str = "") -> str:
    """A table of HTML cells (escape the values first); `numeric` columns are right-aligned."""
    right = set(numeric)

    def cell(tag: str, index: int, content: str) -> str:
        return f'<{tag} class="num">{content}</{tag}>' if index in right else f"<{tag}>{content}</{tag}>"

    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    body = "\n".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


def badge(kind: str, text: str | None = None) -> str:
    return f'<span class="badge {esc(kind)}">{esc(text or kind)}</span>'


def pre(text: object) -> str:
    return f"<pre>{esc(text)}</pre>"


def num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# -- the chart -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    value: float
    low: float | None = None  # an interval drawn as a whisker
    high: float | None = None


@dataclass(frozen=True)
class ChartRow:
    label: str
    bars: tuple[Bar | None, ...]  # one per series; None: no value
    note: str = ""  # right of the bars (the difference, the verdict)


def score_chart(rows: Sequence[ChartRow], series: Sequence[str], *, title: str) -> str:
    """Horizontal bars on a 0–1 score axis, one group per row, with interval whiskers: inline SVG."""
    label_w, plot_w, note_w, bar_h, gap = 190, 460, 190, 14, 10
    group_h = len(series) * bar_h + gap
    top = 34
    height = top + len(rows) * group_h + 24
    width = label_w + plot_w + note_w

    def x(score: float) -> float:
        return label_w + max(0.0, min(1.0, score)) * plot_w

    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{esc(title)}</title>'
    ]
    offset = 1 if len(series) == 1 else 0  # a single series is drawn in the head colour
    for i, name in enumerate(series):
        lx = label_w + i * 150
        parts.append(
            f'<rect class="s{i + offset}" x="{lx}" y="6" width="12" height="12"/><text x="{lx + 18}" y="16">{esc(name)}</text>'
        )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        tx = x(tick)
        parts.append(f'<line class="axis" x1="{tx}" y1="{top - 6}" x2="{tx}" y2="{height - 20}"/>')
        parts.append(f'<text x="{tx}" y="{height - 6}" text-anchor="middle">{tick:g}</text>')
    for r, row in enumerate(rows):
        y0 = top + r * group_h
        mid = y0 + len(series) * bar_h / 2
        parts.append(f'<text x="{label_w - 8}" y="{mid + 4}" text-anchor="end">{esc(row.label, 28)}</text>')
        for s, bar in enumerate(row.bars):
            if bar is None:
                continue
            y, length = y0 + s * bar_h, x(bar.value) - label_w
            parts.append(
                f'<rect class="s{s + offset}" x="{label_w}" y="{y + 1}" width="{length:.1f}" height="{bar_h - 2}">'
                f"<title>{esc(series[s])}: {bar.value:.3f}</title></rect>"
            )
            if bar.low is not None and bar.high is not None and bar.high > bar.low:
                cy = y + bar_h / 2
                parts.append(f'<line class="ci" x1="{x(bar.low):.1f}" y1="{cy}" x2="{x(bar.high):.1f}" y2="{cy}"/>')
        if row.note:
            parts.append(f'<text class="note" x="{label_w + plot_w + 10}" y="{mid + 4}">{esc(row.note, 40)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _interval_bar(interval: Interval | None) -> Bar | None:
    return None if interval is None else Bar(interval.mean, interval.low, interval.high)


# -- eval ------------------------------------------------------------------------------------------------


def _budget_sentence(budget: dict[str, Any]) -> str:
    cached = sum(int(r.get("cached_calls", 0)) for r in budget.get("by_role", {}).values())
    text = (
        f"{budget.get('calls', 0)} calls (+{cached} from cache), {budget.get('tokens', 0)} tokens, "
        f"{fmt_usd(float(budget.get('cost_usd', 0.0)))}, {float(budget.get('seconds', 0.0)):.1f} s"
    )
    return text + (f"; stopped: {budget['stopped_reason']}" if budget.get("stopped_reason") else "")


def _item_rows(prompt: PromptOut) -> list[list[str]]:
    rows = []
    for item in prompt.items[:MAX_ITEMS_SHOWN]:
        verdict = badge("pass") if item.passed else badge("fail")
        if item.error is not None:
            verdict = badge("skip", "not scored")
        reasons = "<br>".join(f"<code>{esc(m.name)}</code> {num(m.score, 2)}: {esc(m.reason, 300)}" for m in item.metrics)
        why = reasons + (f"<br><b>judge:</b> {esc(item.judge_explanation)}" if item.judge_explanation else "")
        if item.error:
            why = esc(item.error)
        variables = json.dumps(item.vars, ensure_ascii=False, indent=1, default=str)
        output = pre(item.output) if item.output else '<span class="muted">(empty)</span>'
        if item.reasoning is not None:
            output += f"<details><summary>reasoning</summary>{pre(item.reasoning)}</details>"
        rows.append(
            [
                f"<code>{esc(item.id)}</code><details><summary>input</summary>{pre(variables)}</details>",
                num(item.score),
                verdict,
                esc(item.expected) if item.expected is not None else '<span class="muted">–</span>',
                output,
                why,
            ]
        )
    return rows


def eval_html(results: EvalResults) -> str:
    """Scores per prompt (table and chart), then every item: its output, metric reasons and the judge's explanation."""
    models = ", ".join(f"{esc(role)} <code>{esc(model)}</code>" for role, model in results.models.items())
    meta = f"Models: {models} · {esc(results.created_at)} · {esc(_budget_sentence(results.budget))}"
    chart_rows = [
        ChartRow(p.id, (Bar(p.mean_score, p.ci_low, p.ci_high),), f"pass {p.pass_rate:.0%}, {p.n_scored}/{p.n_items}")
        for p in results.prompts
    ]
    summary = table(
        ["prompt", "suite", "score", "95% CI", "pass rate", "items", "complete"],
        [
            [
                f'<a href="#p-{esc(p.id)}"><code>{esc(p.id)}</code></a>',
                f"<code>{esc(p.suite)}</code>",
                num(p.mean_score),
                f"{num(p.ci_low)}–{num(p.ci_high)}",
                f"{p.pass_rate:.0%}",
                f"{p.n_scored}/{p.n_items}",
                badge("pass", "yes") if p.complete else badge("fail", "no") + " " + esc(p.stopped_reason or ""),
            ]
            for p in results.prompts
        ],
        numeric=(2, 4, 5),
        cls="summary",
    )
    body = [summary, score_chart(chart_rows, ["mean score (95% CI)"], title="Mean score per prompt")]
    for p in results.prompts:
        shown = min(len(p.items), MAX_ITEMS_SHOWN)
        more = f" Showing the first {shown} of {len(p.items)} items; results.json has all." if shown < len(p.items) else ""
        body += [
            f'<section id="p-{esc(p.id)}"><h2>{esc(p.id)}</h2>',
            f'<p class="muted"><code>{esc(p.path)}</code> on <code>{esc(p.suite)}</code> · mean {num(p.mean_score)} · '
            f"pass {p.pass_rate:.0%} · {p.n_scored}/{p.n_items} items scored.{esc(more)}</p>",
            table(["item", "score", "verdict", "expected", "output", "why"], _item_rows(p), numeric=(1,), cls="items"),
            "</section>",
        ]
    return page("gradgate eval", meta, "\n".join(body))


# -- check -----------------------------------------------------------------------------------------------


def _delta(p: PromptVerdict) -> str:
    d = p.decision
    if d is None:
        return "–"
    text = f"{d.mean_diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}] ({(1 - d.level) * 100:.4g}%)"
    return text + (f", McNemar p={d.p_value:.3g}" if d.p_value is not None else "")


def _verdict_row(p: PromptVerdict) -> list[str]:
    items = f"{p.items_scored}/{p.items_total}" + ("<br><span class='muted'>stopped early</span>" if p.stopped_early else "")
    calls = f"{p.calls} (base {p.base_calls})" if p.verdict != "new" else str(p.calls)
    return [
        f"<code>{esc(p.prompt_id)}</code><br><span class='muted'>{esc(p.path)}</span>",
        num(p.base_mean),
        num(p.head_mean),
        esc(_delta(p)),
        badge(p.verdict),
        items,
        calls + (f" +{p.cached_calls} cached" if p.cached_calls else ""),
        fmt_usd(p.cost_usd),
    ]


def _notes(p: PromptVerdict) -> str:
    bits = []
    if p.reasons:
        bits.append("changed: " + ", ".join(p.reasons))
    if p.decision is not None:
        bits.append(p.decision.reason)
    if p.base_from_score_cache:
        bits.append(f"{p.base_from_score_cache} base item scores reused from the gate's score cache")
    if p.note:
        bits.append(p.note)
    return f"<li><code>{esc(p.prompt_id)}</code>: {esc('; '.join(bits))}</li>" if bits else ""


def _id_list(ids: Iterable[str]) -> str:
    return ", ".join(f"<code>{esc(i)}</code>" for i in ids)


def check_html(summary: CheckSummary) -> str:
    """The gate's verdicts: a base-vs-head chart, the table report.md shows, each prompt's reasons."""
    gate = summary.gate
    meta = (
        f"Base <code>{esc(summary.base_label)}</code> → head <code>{esc(summary.head_label)}</code> · "
        f"max drop {esc(gate.get('max_drop'))} · α {esc(gate.get('alpha'))} · min items {esc(gate.get('min_items'))} · "
        f"repeats {esc(gate.get('repeats'))}"
    )
    counts = [
        f"{summary.count(v)} {v}" for v in ("regressed", "improved", "unchanged", "inconclusive", "new") if summary.count(v)
    ]
    said = "could not run" if summary.error and not summary.prompts else " · ".join(counts) or "no prompt changed"
    body = [f'<p class="headline {esc(summary.overall)}">{esc(said)}</p>']
    if summary.error:
        body.append(f'<div class="callout bad">{esc(summary.error)}</div>')
    if summary.prompts:
        rows = [
            ChartRow(
                p.prompt_id,
                (Bar(p.base_mean) if p.base_mean is not None else None, Bar(p.head_mean) if p.head_mean is not None else None),
                p.verdict + (f" {p.decision.mean_diff:+.3f}" if p.decision else ""),
            )
            for p in summary.prompts
        ]
        body.append(score_chart(rows, ["base", "head"], title="Mean score, base vs head, on the paired items"))
        headers = ["prompt", "base", "head", "Δ head − base [CI]", "verdict", "items", "calls", "cost"]
        body.append(table(headers, [_verdict_row(p) for p in summary.prompts], numeric=(1, 2, 5, 6, 7), cls="summary"))
        notes = "".join(_notes(p) for p in summary.prompts)
        if notes:
            body.append(f'<ul class="notes">{notes}</ul>')
    lists = [
        ("Not re-run (effective content unchanged)", summary.unchanged),
        ("Removed in head", summary.removed),
    ]
    body += [f"<p>{esc(title)}: {_id_list(ids)}.</p>" for title, ids in lists if ids]
    if summary.broken_base:
        broken = "; ".join(f"<code>{esc(k)}</code>: {esc(v)}" for k, v in summary.broken_base.items())
        body.append(f"<p>Base versions that could not be loaded (treated as absent): {broken}.</p>")
    if summary.models:
        models = ", ".join(f"{esc(role)} <code>{esc(model)}</code>" for role, model in summary.models.items())
        body.append(f"<p>Both versions were scored with the head's config and models ({models}), so only the prompt differs.</p>")
    rule = DECISION_RULE.replace("**", "")
    body.append(f"<details><summary>How the verdict is decided</summary>{pre(rule)}</details>")
    totals = _budget_sentence(summary.budget) + ". " if summary.budget else ""
    body.append(f'<p class="muted">{esc(totals)}Exit code {summary.exit_code}.</p>')
    return page(f"gradgate check: {summary.overall}", meta, "\n".join(body))


# -- optimize --------------------------------------------------------------------------------------------


def _interval(interval: Interval | None, signed: bool = False) -> str:
    return esc(tune_report.fmt_interval(interval, signed=signed))


def _run_section(r: OptimizeResult) -> str:
    train, dev, test = r.split_sizes
    candidates = [
        [
            f"<code>{esc(c.id)}</code>",
            str(c.step),
            esc(c.origin),
            esc(c.parent or "–"),
            num(c.dev_score) if c.dev_score is not None else badge("skip", "rejected"),
            esc(c.rejected or c.note or "", 300),
        ]
        for c in r.candidates
    ]
    gradients = "".join(f"<li>iteration {g.step + 1}, from {esc(g.parent)}: {esc(g.summary, 1500)}</li>" for g in r.gradients)
    stopped = f" The search stopped early: {esc(r.stopped_reason)}." if r.stopped_reason else ""
    stopped += f" Label prior: {esc(r.label_prior)}." if r.label_prior else ""
    proposed = badge("improved", "proposed") if r.improved else badge("unchanged", "not proposed")
    return "\n".join(
        [
            f'<section id="r-{esc(r.prompt_id)}-{esc(r.method)}"><h2>{esc(r.prompt_id)} / {esc(r.method)} {proposed}</h2>',
            f"<p><code>{esc(r.prompt_path)}</code> · split {train}/{dev}/{test} · seed {r.seed} · "
            f"{r.usage.calls} calls, {r.usage.tokens} tokens, {fmt_usd(r.usage.cost_usd)}, {r.usage.seconds:.0f} s. "
            f"{esc(r.decision)}.{stopped}</p>",
            '<div class="cols"><div><h3>Original</h3>'
            + pre(r.original)
            + f"</div><div><h3>Best ({esc(r.best.id)})</h3>"
            + pre(r.best.text)
            + "</div></div>",
            f"<details><summary>{len(r.candidates)} candidates</summary>"
            + table(["id", "step", "origin", "parent", "dev score", "note"], candidates, numeric=(1, 4))
            + "</details>",
            f"<h3>Gradients</h3><ul class='notes'>{gradients}</ul>" if gradients else "",
            "</section>",
        ]
    )


def optimize_html(results: Sequence[OptimizeResult], *, budget: dict[str, Any], failures: Sequence[str], message: str) -> str:
    """Original vs best on the held-out test split (chart and table), then each run's prompts and candidates."""
    meta = f"Budget used (whole job): {esc(tune_report.budget_line(budget))}"
    body = [f"<p><b>Outcome:</b> {esc(message)}</p>"]
    body += [f'<div class="callout">not run to a result: {esc(f)}</div>' for f in failures]
    if results:
        rows = [
            ChartRow(
                f"{r.prompt_id}/{r.method}",
                (_interval_bar(r.test_original), _interval_bar(r.test_best)),
                f"Δ {r.difference.mean:+.3f}" if r.difference is not None else "",
            )
            for r in results
        ]
        body.append(score_chart(rows, ["original (test)", "best (test)"], title="Held-out test score, original vs best"))
        headers = ["prompt", "method", "best", "dev original", "dev best", "test original", "test best", "Δ test", "p", "calls"]
        body.append(
            table(
                [*headers, "proposed"],
                [
                    [
                        f'<a href="#r-{esc(r.prompt_id)}-{esc(r.method)}"><code>{esc(r.prompt_id)}</code></a>',
                        esc(r.method),
                        esc(r.best.id),
                        _interval(r.dev_original),
                        _interval(r.dev_best),
                        _interval(r.test_original),
                        _interval(r.test_best),
                        _interval(r.difference, signed=True),
                        f"{r.p_value:.3g}" if r.p_value is not None else "—",
                        str(r.usage.calls),
                        badge("improved", "yes") if r.improved else "no",
                    ]
                    for r in results
                ],
                numeric=(8, 9),
                cls="summary",
            )
        )
    body += [_run_section(r) for r in results]
    body.append(f'<p class="muted">{esc(tune_report.DECISION_RULE.replace("**", ""))}</p>')
    return page("gradgate optimize", meta, "\n".join(body))
