"""How much of a loglik-scored BBH task can any prompt move? The label prior against the signal beneath it.

    python bench/label_prior.py                      # the five two-answer BBH tasks of the shoot-out
    python bench/label_prior.py --task navigate --min-delta 0.04
    python bench/label_prior.py --model local/gemma-3-270m --out bench/results/label-prior-gemma-3-270m.json

For each task, on the shoot-out's own split (40 train / 40 dev / the rest held out, seed 0), the task model ranks
the answer options of every held-out item exactly as gradgate's scorer does (the log-likelihood of each option
after the rendered prompt), for the initial prompt and for every shoot-out row whose held-out score moved by at
least `--min-delta`. Per prompt it records:

- `accuracy`: the option of highest log-likelihood against the gold answer (checked against the shoot-out's score);
- `predicted`: how often each option is chosen; `majority_share`: the share of the most chosen one;
- `auc`: the area under the ROC curve of the log-likelihood margin between the two options, against the gold
  answer. It does not depend on where the prior puts the decision threshold: 0.5 is no signal at all;
- `calibrated`: the accuracy after subtracting each option's mean log-likelihood over the 80 train + dev inputs
  (batch calibration, Zhou et al. 2024; the gold answers are not used), with gradgate's McNemar test against
  `accuracy`;
- `best_shift`: the highest accuracy any single offset on the margin reaches on the held-out items themselves, an
  upper bound on what shifting the prior alone (and nothing else) can do for this prompt; `best_shift_p`: gradgate's
  McNemar test of that against `accuracy` (could a pure prior shift pass the rule at all?).

A prompt that gains only by moving the prior stays at or below the initial prompt's `best_shift` and keeps its
`auc`; a prompt that makes the model discriminate better raises `auc`. Writes bench/results/label-prior.json.
With another `--model` than the shoot-out's task model only the initial prompt is read (the rows are that model's).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.shootout.tasks import held_out_task  # noqa: E402
from scipy.stats import mannwhitneyu  # noqa: E402

from gradgate.core.files import atomic_write_text  # noqa: E402
from gradgate.core.stats import mcnemar_exact  # noqa: E402
from gradgate.core.suites import Item  # noqa: E402
from gradgate.models.local.runtime import score_options  # noqa: E402
from gradgate.scoring.scorer import best_option  # noqa: E402

log = logging.getLogger("label_prior")

TWO_ANSWER_TASKS = ("boolean_expressions", "causal_judgement", "navigate", "sports_understanding", "web_of_lies")
RESULTS = REPO_ROOT / "bench" / "results"


def option_scores(model: str, body_prompt: Any, items: Sequence[Item], options: Sequence[str]) -> list[list[float]]:
    """Each item's log-likelihood per option, as the scorer's loglik path computes it (no system turn in the bench)."""
    return [score_options(model, [{"role": "user", "content": body_prompt.render(i.vars)}], list(options)) for i in items]


def accuracy(
    scores: Sequence[Sequence[float]], gold: Sequence[str], options: Sequence[str], shift: Sequence[float]
) -> list[float]:
    decided = [best_option(options, [s - o for s, o in zip(row, shift, strict=True)]) for row in scores]
    return [1.0 if d.strip() == g.strip() else 0.0 for d, g in zip(decided, gold, strict=True)]


def best_threshold(margins: Sequence[float], positive: Sequence[bool]) -> float:
    """The threshold t for which deciding `margin > t` is right most often on these items (the prior moved,
    nothing else); -inf decides every item positive."""
    pairs = sorted(zip(margins, positive, strict=True))
    best_t, best = -math.inf, sum(positive)  # t below every margin: every item decided positive
    correct = best
    for k, (margin, is_pos) in enumerate(pairs):  # move t past one item: it is now decided negative
        correct += -1 if is_pos else 1
        if (k + 1 == len(pairs) or pairs[k + 1][0] != margin) and correct > best:  # tied margins cannot be split
            best_t, best = margin, correct
    return best_t


def best_shift(margins: Sequence[float], positive: Sequence[bool]) -> list[float]:
    """Per item, right (1.0) or wrong under the best threshold on the margin."""
    t = best_threshold(margins, positive)
    return [1.0 if (m > t) == p else 0.0 for m, p in zip(margins, positive, strict=True)]


def describe(
    label: str, scores: list[list[float]], gold: list[str], options: Sequence[str], fit: list[list[float]]
) -> dict[str, Any]:
    raw = accuracy(scores, gold, options, [0.0] * len(options))
    offsets = [sum(row[k] for row in fit) / len(fit) for k in range(len(options))]
    calibrated = accuracy(scores, gold, options, offsets)
    predicted = Counter(best_option(options, row) for row in scores)
    # The margin of the second option over the first; gold == options[1] is the positive class.
    margins = [row[1] - row[0] for row in scores]
    positive = [g.strip() == options[1].strip() for g in gold]
    pairs = list(zip(margins, positive, strict=True))
    u = mannwhitneyu([m for m, p in pairs if p], [m for m, p in pairs if not p])
    n_pos = sum(positive)
    shifted = best_shift(margins, positive)
    return {
        "prompt": label,
        "accuracy": round(sum(raw) / len(raw), 4),
        "predicted": dict(predicted),
        "majority_share": round(max(predicted.values()) / len(scores), 4),
        "auc": round(float(u.statistic) / (n_pos * (len(positive) - n_pos)), 4),
        "auc_p": float(u.pvalue),
        "calibrated": round(sum(calibrated) / len(calibrated), 4),
        "calibrated_p": mcnemar_exact(raw, calibrated),
        "best_shift": round(sum(shifted) / len(shifted), 4),
        "best_shift_p": mcnemar_exact(raw, shifted),
        "_raw": raw,
    }


def run_task(task_name: str, args: argparse.Namespace, work_root: Path) -> dict[str, Any]:
    work_dir = work_root / task_name
    task = held_out_task(
        task_name, repo_root=REPO_ROOT, work_dir=work_dir, model=args.model, train=args.train, dev=args.dev, seed=args.seed
    )
    if len(task.options) != 2:
        raise SystemExit(f"{task_name}: {len(task.options)} options; this benchmark reads two-answer tasks")
    shootout_path = RESULTS / f"optimizers-{task_name}.json"
    shootout = json.loads(shootout_path.read_text(encoding="utf-8")) if shootout_path.exists() else None
    if shootout is not None and shootout["split_ids"] != task.split_ids():
        raise SystemExit(f"{task_name}: the split differs from {shootout_path.name}'s; same --train/--dev/--seed?")
    if shootout is not None and shootout["task_model"] != args.model:
        shootout = None  # its rows and scores belong to another model: this run reads the initial prompt alone
    test = list(task.splits.test)
    fit_items = [*task.splits.train, *task.splits.dev]
    gold = [str(i.expected) for i in test]
    prompts: list[tuple[str, str, float | None]] = [("initial prompt", task.target.prompt.body, None)]
    if shootout is not None:
        initial = next(r for r in shootout["rows"] if r["method"] == "initial prompt")["test"]["mean"]
        for row in shootout["rows"]:
            moved = row["test"]["mean"] - initial
            seen = {body for _, body, _ in prompts}
            if row["method"] != "initial prompt" and abs(moved) >= args.min_delta and row["prompt"] not in seen:
                prompts.append((row["method"], row["prompt"], row["test"]["mean"]))
    out: list[dict[str, Any]] = []
    for label, body, reported in prompts:
        started = time.monotonic()
        prompt = task.target.prompt.with_body(body)
        scores = option_scores(args.model, prompt, test, task.options)
        fit = option_scores(args.model, prompt, fit_items, task.options)
        row = describe(label, scores, gold, task.options, fit)
        row["shootout_accuracy"] = reported if reported is not None else (initial if shootout else None)
        row["seconds"] = round(time.monotonic() - started, 1)
        log.info("%s / %s: %s", task_name, label, {k: v for k, v in row.items() if not k.startswith("_")})
        out.append(row)
    base = out[0]["_raw"]
    for row in out:
        row["p_vs_initial"] = mcnemar_exact(base, row.pop("_raw"))
    labels = Counter(g.strip() for g in gold)
    return {
        "task": task_name,
        "options": list(task.options),
        "n_test": len(test),
        "gold": dict(labels),
        "majority_label_accuracy": round(max(labels.values()) / len(test), 4),
        "prompts": out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=",".join(TWO_ANSWER_TASKS), help="comma-separated two-answer BBH tasks")
    parser.add_argument("--model", default="local/smollm2-135m-instruct")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--dev", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-delta", type=float, default=0.04, help="also read shoot-out rows that moved this much")
    parser.add_argument("--out", type=Path, default=RESULTS / "label-prior.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        tasks = [run_task(t, args, Path(work)) for t in args.task.split(",")]
    result = {
        "model": args.model,
        "split": {"train": args.train, "dev": args.dev, "seed": args.seed},
        "min_delta": args.min_delta,
        "command": shlex.join(["python", "bench/label_prior.py", *(sys.argv[1:] if argv is None else argv)]),
        "wall_seconds": round(time.monotonic() - started, 1),
        "tasks": tasks,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
