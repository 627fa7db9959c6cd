"""GReaTer on the embedded model: per-step wall time by phase, peak memory, held-out accuracy before and after.

    python bench/bench_greater.py                       # boolean_expressions, 16 items, 128 new tokens, 2 steps
    python bench/bench_greater.py --task object_counting --steps 3 --test 40

Reads a BBH task from ../shared/data/bbh/<task>.json ({"examples": [{"input", "target"}]}); exits 0 with a note
when that folder is absent. Train items come first in a seeded shuffle, held-out items after them. Accuracy is
measured the way GReaTer scores answers: greedy reasoning, the extraction phrase built from the training answers,
a few greedy answer tokens, normalized match. Writes bench/results/greater.json (atomically) with the resolved config
(GReaTer's defaults otherwise: mistake-rate selection, label bans, growth at the end). The held-out experiment with
curves and the significance rule is bench/greater_eval.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `bench.greater_eval` importable
    sys.path.insert(0, str(REPO_ROOT))
SHARED_BBH = REPO_ROOT.parent / "shared" / "data" / "bbh"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "greater.json"
DEFAULT_BODY = "Question: {{question}}\nThink step by step, then give the final answer."

log = logging.getLogger("bench_greater")


@dataclass
class Item:
    vars: dict[str, Any]
    expected: str | None


def load_task(task: str) -> list[Item] | None:
    path = Path(task) if task.endswith(".json") else SHARED_BBH / f"{task}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Item({"question": ex["input"]}, str(ex["target"])) for ex in data["examples"]]


def rss_mb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.Process().memory_info().rss) / 2**20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_json(path: Path, payload: dict[str, Any]) -> None:
    from gradgate.core.files import atomic_write_text  # imported late: torch's thread settings come first

    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="boolean_expressions", help="BBH task name or a path to a task .json")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--body", default=DEFAULT_BODY, help="prompt body with a {{question}} placeholder")
    parser.add_argument("--train", type=int, default=16, help="training items (GReaTer's max_items)")
    parser.add_argument("--test", type=int, default=0, help="held-out items for accuracy (0: skip; see greater_eval.py)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128, help="reasoning tokens per item")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    load_at_start = os.getloadavg()
    items = load_task(args.task)
    if items is None:
        print(f"task {args.task!r} not found (looked in ../shared/data/bbh); nothing to measure")
        return 0

    import torch
    from bench.greater_eval import evaluate

    from gradgate.optimizers.greater.search import GreaterSearch, GreaterStep
    from gradgate.optimizers.greater.settings import GreaterConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    random.Random(args.seed).shuffle(items)
    train, test = items[: args.train], items[args.train : args.train + args.test]
    cfg = GreaterConfig(steps=args.steps, max_items=args.train, max_new_tokens=args.new_tokens, seed=args.seed)
    opt = GreaterSearch(cfg)

    started = time.perf_counter()
    opt.load(args.model)
    load_seconds = time.perf_counter() - started
    rss_after_load = rss_mb()

    golds = [str(it.expected) for it in train]  # the phrase the search builds from its training answers
    before = evaluate(opt, prompt_body=args.body, items=test, model_name=args.model, golds=golds) if test else None
    steps: list[dict[str, Any]] = []
    step_started = [time.perf_counter(), cpu_seconds()]

    def on_step(step: GreaterStep) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        # CPU seconds of this process: on a shared machine wall time also counts other processes' load.
        steps.append(
            {"step": step.step, "wall_seconds": now - step_started[0], "cpu_seconds": cpu - step_started[1], **asdict(step)}
        )
        step_started[:] = [now, cpu]

    tracemalloc.start()
    step_started[:] = [time.perf_counter(), cpu_seconds()]
    result = opt.run(prompt_body=args.body, train=train, model_name=args.model, budget=None, on_step=on_step)
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after_steps = rss_mb()
    after = evaluate(opt, prompt_body=result.best_prompt, items=test, model_name=args.model, golds=golds) if test else None

    payload = {
        "task": Path(args.task).stem,  # the name, not this machine's path to the data file
        "model": args.model,
        "initial_prompt": args.body,
        "best_prompt": result.best_prompt,
        "train_items": len(train),
        "test_items": len(test),
        "heldout_accuracy_before": before.accuracy if before else None,
        "heldout_accuracy_after": after.accuracy if after else None,
        "train_score_before": result.initial_score,
        "train_score_after": result.best_score,
        "train_accuracy_before": result.initial_accuracy,
        "train_accuracy_after": result.best_accuracy,
        "model_load_seconds": load_seconds,
        "step_wall_seconds": [s["wall_seconds"] for s in steps],
        "step_cpu_seconds": [s["cpu_seconds"] for s in steps],
        "steps": steps,
        "calls": result.calls,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "memory": {
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            "rss_after_load_mb": rss_after_load,
            "rss_after_steps_mb": rss_after_steps,
            "python_heap_peak_mb_during_steps": python_peak / 2**20,  # tracemalloc: Python objects, not tensors
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "config": dict(result.config),  # resolved: steps, extraction phrase, labels
        "stopped": "budget" if result.stopped_by_budget else "steps",
    }
    write_json(args.out, payload)
    for s in steps:
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in s["phase_seconds"].items())
        change = f"{s['old_token']!r} -> {s['new_token']!r}"
        print(f"step {s['step']}: {s['wall_seconds']:.1f}s wall, {s['cpu_seconds']:.1f}s CPU ({phases})  {change}")
    print(f"held-out accuracy {payload['heldout_accuracy_before']} -> {payload['heldout_accuracy_after']}")
    print(f"peak RSS {payload['memory']['peak_rss_mb']:.0f} MiB; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
