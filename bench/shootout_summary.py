"""One table across the shoot-out's tasks: each method's held-out change, and who wins per task.

    python bench/shootout_summary.py [--results bench/results] [--out bench/results/optimizers-summary.md]

Reads every `optimizers-<task>.json` that `bench/optimizers.py` wrote and prints (and writes) a Markdown table:
one row per method, one column per task, each cell the change of the test score against the initial prompt,
bold when it passes gradgate's rule (`improved`). Below it, per task, whether the best gradgate method passes the
rule and whether its held-out score is at least every DSPy optimizer's: the two targets of the shoot-out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.optimizers import DSPY_METHODS, GRADGATE_METHODS  # noqa: E402

from gradgate.core.files import atomic_write_text  # noqa: E402


def load(results: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(results.glob("optimizers-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "rows" in data and "task" in data:
            runs.append(data)
    return runs


def _cell(row: dict[str, Any] | None) -> str:
    if row is None or row.get("difference") is None:
        return "—"
    delta = row["difference"]["mean"]
    text = f"{delta:+.3f}"
    return f"**{text}**" if row.get("improved") else text


def table(runs: list[dict[str, Any]]) -> str:
    tasks = [r["task"] for r in runs]
    by_task = {r["task"]: {row["method"]: row for row in r["rows"]} for r in runs}
    methods: list[str] = []
    for run in runs:
        for row in run["rows"]:
            if row["method"] != "initial prompt" and row["method"] not in methods:
                methods.append(row["method"])
    lines = [
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---:|" * len(tasks),
        "| initial prompt (test score) | "
        + " | ".join(f"{by_task[t]['initial prompt']['test']['mean']:.3f}" for t in tasks)
        + " |",
    ]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(_cell(by_task[t].get(method)) for t in tasks) + " |")
    lines += ["", "| task | best gradgate method | passes the rule | ≥ every DSPy optimizer on test |", "|---|---|---|---|"]
    for task in tasks:
        rows = by_task[task]
        ours = [rows[m] for m in GRADGATE_METHODS if m in rows and rows[m].get("test")]
        peers = [rows[m] for m in DSPY_METHODS if m in rows and rows[m].get("test")]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["test"]["mean"])
        at_least = all(best["test"]["mean"] >= p["test"]["mean"] for p in peers) if peers else None
        verdict = "—" if at_least is None else "yes" if at_least else "no"
        if len(ours) < len(GRADGATE_METHODS) or len(peers) < len(DSPY_METHODS):  # a partial task says so
            verdict += f" ({len(ours)} of {len(GRADGATE_METHODS)} gradgate, {len(peers)} of {len(DSPY_METHODS)} DSPy rows run)"
        lines.append(
            f"| {task} | {best['method']} ({best['test']['mean']:.3f}) | {'yes' if best.get('improved') else 'no'} | "
            + verdict
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "optimizers-summary.md")
    args = parser.parse_args(argv)
    runs = load(args.results)
    if not runs:
        print(f"no optimizers-<task>.json in {args.results}", file=sys.stderr)
        return 2
    text = table(runs)
    atomic_write_text(args.out, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
