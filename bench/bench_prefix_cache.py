"""What reusing a shared prompt start saves when scoring (models/local/prefix_cache.py), measured in one run.

    python bench/bench_prefix_cache.py [--task causal_judgement] [--out bench/results/prefix-cache.json]

On the shoot-out's split of the task (40 train / 40 dev / the rest held out, seed 0) the task model ranks the
answer options of every held-out item, as gradgate's scorer does, under two prompts from the committed shoot-out:
the initial prompt, and the row whose prompt is longest (on causal_judgement a DSPy program carrying four
stories as demonstrations). Each is scored twice in this process, with the prefix cache and with it switched off.
Per prompt: wall seconds both ways, prompt tokens not recomputed, the largest difference in any option's
log-likelihood, and how many decisions differ. Figures are from a shared 2-core machine: compare within the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.label_prior import option_scores  # noqa: E402
from bench.shootout.tasks import held_out_task  # noqa: E402

from gradgate.core.files import atomic_write_text  # noqa: E402
from gradgate.models.local import runtime  # noqa: E402
from gradgate.scoring.scorer import best_option  # noqa: E402

log = logging.getLogger("bench_prefix_cache")
MODEL = "local/smollm2-135m-instruct"


def timed_scores(prompt: Any, items: list[Any], options: list[str], *, reuse: bool) -> tuple[list[list[float]], float, int]:
    """(option log-likelihoods per item, wall seconds, prompt tokens reused) with the prefix cache on or off."""
    store = runtime.PREFIX_CACHE
    store.clear()
    store.enabled = reuse
    before = store.reused_tokens
    started = time.monotonic()
    try:
        scores = option_scores(MODEL, prompt, items, options)
    finally:
        store.enabled = True
    return scores, time.monotonic() - started, store.reused_tokens - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="causal_judgement")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "prefix-cache.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shootout = json.loads((REPO_ROOT / "bench" / "results" / f"optimizers-{args.task}.json").read_text(encoding="utf-8"))
    split = shootout["split"]
    with tempfile.TemporaryDirectory() as work:
        task = held_out_task(
            args.task,
            repo_root=REPO_ROOT,
            work_dir=Path(work),
            model=MODEL,
            train=split["train"],
            dev=split["dev"],
            seed=shootout["seed"],
        )
    if task.split_ids() != shootout["split_ids"]:
        raise SystemExit(f"{args.task}: the split differs from the committed shoot-out's")
    test, options = list(task.splits.test), list(task.options)
    longest = max(shootout["rows"], key=lambda r: len(r["prompt"]))
    prompts = [("initial prompt", task.target.prompt.body), (longest["method"], longest["prompt"])]
    option_scores(MODEL, task.target.prompt, test[:1], options)  # load the model outside the timings
    tokenizer = runtime.load_causal_lm(MODEL)[1]
    rows = []
    for label, body in prompts:
        prompt = task.target.prompt.with_body(body)
        tokens = len(tokenizer(prompt.render(test[0].vars))["input_ids"])
        reused, reused_s, saved_tokens = timed_scores(prompt, test, options, reuse=True)
        scratch, scratch_s, _ = timed_scores(prompt, test, options, reuse=False)
        decided = [best_option(options, r) for r in reused]
        decided_scratch = [best_option(options, r) for r in scratch]
        row = {
            "prompt": label,
            "prompt_characters": len(body),
            "first_item_prompt_tokens": tokens,
            "items": len(test),
            "seconds_from_scratch": round(scratch_s, 1),
            "seconds_with_prefix_cache": round(reused_s, 1),
            "speedup": round(scratch_s / reused_s, 2),
            "prompt_tokens_reused": saved_tokens,
            "max_abs_loglik_difference": max(
                abs(a - b) for r, s in zip(reused, scratch, strict=True) for a, b in zip(r, s, strict=True)
            ),
            "decisions_differing": sum(a != b for a, b in zip(decided, decided_scratch, strict=True)),
        }
        log.info("%s", row)
        rows.append(row)
    result = {
        "benchmark": "score the held-out items with and without reusing the shared prompt start",
        "command": shlex.join(["python", "bench/bench_prefix_cache.py", *(sys.argv[1:] if argv is None else argv)]),
        "task": args.task,
        "model": MODEL,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
