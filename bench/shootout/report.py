"""The shoot-out's decision rule, its JSON file and its Markdown table."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradgate.core.files import atomic_write_text
from gradgate.core.stats import Interval, is_binary, mcnemar_exact, paired_difference


@dataclass(frozen=True)
class Row:
    """One line of the table: the initial prompt or one method's best prompt, scored on the test split."""

    method: str
    prompt: str  # the prompt body scored on test
    test: Interval | None
    scores: dict[str, float]  # test item id -> score
    calls: int | None  # LLM calls of the search (None for the initial prompt)
    tokens: int | None
    seconds: float | None  # search wall time
    model_seconds: float | None  # time the model took (replayed from the cache on a rerun)
    improved: bool | None
    decision: str
    difference: Interval | None = None
    p_value: float | None = None
    stopped_reason: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def decide(
    base: Sequence[float], head: Sequence[float], *, alpha: float, margin: float, resamples: int, seed: int
) -> tuple[bool, str, Interval | None, float | None]:
    """gradgate's rule (optimizers.runner): beat the original by more than `margin`, with support at `alpha`."""
    if not base:
        return False, "no test scores", None, None
    difference = paired_difference(base, head, confidence=1 - alpha, resamples=resamples, seed=seed)
    if list(base) == list(head):
        return False, "same test answers as the initial prompt", difference, None
    p: float | None = None
    if is_binary(base) and is_binary(head):
        p = mcnemar_exact(base, head)
        supported, support = p < alpha, f"exact McNemar p={p:.3g}"
    else:
        supported = difference.low > margin
        support = f"paired bootstrap interval [{difference.low:+.3f}, {difference.high:+.3f}]"
    beats = difference.mean > margin
    improved = beats and supported
    verdict = "improved" if improved else ("better, not significant" if beats else "not better")
    return improved, f"{verdict}: {difference.mean:+.3f}; {support}", difference, p


def _interval_dict(interval: Interval | None) -> dict[str, float] | None:
    return None if interval is None else asdict(interval)


def to_json(meta: dict[str, Any], rows: Sequence[Row]) -> dict[str, Any]:
    out_rows = []
    for row in rows:
        data = asdict(row)
        data["test"] = _interval_dict(row.test)
        data["difference"] = _interval_dict(row.difference)
        out_rows.append(data)
    return {**meta, "rows": out_rows}


def _fmt_interval(interval: Interval | None) -> str:
    if interval is None:
        return "—"
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _fmt(value: float | int | None, spec: str = "") -> str:
    return "—" if value is None else format(value, spec)


def markdown(meta: dict[str, Any], rows: Sequence[Row]) -> str:
    sizes = meta["split"]
    lines = [
        f"### Optimizer shoot-out: {meta['task']}",
        "",
        f"Task model `{meta['task_model']}`, optimizer model `{meta['optimizer_model']}`, scoring "
        f"`{meta['scoring']}` ({meta['metric']}); split train/dev/test = {sizes['train']}/{sizes['dev']}/"
        f"{sizes['test']} items (seed {meta['seed']}); budget {meta['budget_calls']} LLM calls per method's search.",
        "",
        "| method | test score [95% CI] | Δ vs initial | improved? | calls | tokens | search s | model s | note |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        delta = "—" if row.difference is None else f"{row.difference.mean:+.3f}"
        improved = "—" if row.improved is None else ("yes" if row.improved else "no")
        note = row.error or row.stopped_reason or ""
        note = note.replace("|", "/").replace("\n", " ")[:80]
        lines.append(
            f"| {row.method} | {_fmt_interval(row.test)} | {delta} | {improved} | {_fmt(row.calls)} | "
            f"{_fmt(row.tokens)} | {_fmt(row.seconds, '.0f')} | {_fmt(row.model_seconds, '.0f')} | {note} |"
        )
    lines += [
        "",
        "Test score: mean over the held-out test items with a 95% bootstrap interval; every row is scored by the same "
        "gradgate scorer. improved?: gradgate's rule (beats the initial prompt on test with exact McNemar p < "
        f"{meta['alpha']:g}). calls/tokens: what the search used (the budget counts replayed calls too). "
        "search s: wall time of the search on this machine; model s: time the model took, recorded on the first run "
        "and replayed from the cache after.",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    return "\n".join(lines)


MACHINE_PATH_OPTIONS = ("--out", "--cache-dir")  # where this machine keeps things: not part of the benchmark


def portable_command(script: str, argv: Sequence[str]) -> str:
    """The command as anyone could rerun it: a task given as a data file becomes its name (the defaults find the
    file), and options that only say where this machine writes are left out; no path of this machine remains."""
    words, skip = [script], False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in MACHINE_PATH_OPTIONS:
            skip = "=" not in arg
            continue
        if index > 0 and argv[index - 1] == "--task" and arg.endswith(".json"):
            arg = Path(arg).stem
        elif arg.startswith("--task=") and arg.endswith(".json"):
            arg = "--task=" + Path(arg.split("=", 1)[1]).stem
        words.append(shlex.quote(arg))
    return " ".join(words)


# What must match for an earlier run's rows to stand beside this run's: the same items, split, budget and models.
SAME_BENCHMARK = ("task", "split_ids", "seed", "budget_calls", "task_model", "optimizer_model", "scoring", "metric", "alpha")


def kept_rows(path: Path, meta: dict[str, Any], rerun: Sequence[str]) -> list[Row]:
    """The rows of an earlier run of the same benchmark (SAME_BENCHMARK) at `path` for the methods not rerun now,
    so that `--methods` with a subset updates those rows instead of dropping the others; [] when there is none."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if any(old.get(key) != meta.get(key) for key in SAME_BENCHMARK):
            return []
        kept = []
        for data in old["rows"]:
            if data["method"] in rerun or data["method"] == "initial prompt":
                continue
            values = dict(data)
            values["test"] = Interval(**data["test"]) if data.get("test") else None
            values["difference"] = Interval(**data["difference"]) if data.get("difference") else None
            kept.append(Row(**values))
        return kept
    except (OSError, ValueError, KeyError, TypeError):
        return []  # absent, from an older version, or damaged: only this run's rows


def write(out_dir: Path, task: str, meta: dict[str, Any], rows: Sequence[Row]) -> tuple[Path, Path]:
    json_path = out_dir / f"optimizers-{task}.json"
    md_path = out_dir / f"optimizers-{task}.md"
    atomic_write_text(json_path, json.dumps(to_json(meta, rows), indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(md_path, markdown(meta, rows))
    return json_path, md_path
