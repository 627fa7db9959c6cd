"""Benchmark the embedded models in process: load time, generation tokens/s (batch 1 and batched), concurrent
sampled requests, scoring.

    python bench/bench_local_models.py [--model smollm2-135m-instruct] [--batch 8] [--out FILE.json]

The converted folder is created first if missing (its time is reported as ``convert_s``, else null). Load time
is measured in a fresh child process so torch's import cost and the disk read are both counted. `--batch`
sampled requests with seeds 0..n-1 are sent one by one, then from n threads at once (as the gateway sends GPO's
samples), where they run as one batch; the replies must be the same both ways. Figures are noisy on a shared
2-core machine (the 1-minute load average is recorded with them): compare runs made together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
QUESTION = [{"role": "user", "content": "What color is the sky on a clear day?"}]


def child_load_seconds(model: str) -> float:
    code = (
        "import time; t = time.perf_counter(); "
        "from gradgate.models.local import load_causal_lm; "
        f"load_causal_lm({model!r}); print(time.perf_counter() - t)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from gradgate.models import local as lm

    start = time.perf_counter()
    lm.converted_model_dir(args.model)
    convert_s: float | None = time.perf_counter() - start
    if convert_s is not None and convert_s < 1.0:  # the folder existed: found in milliseconds, nothing converted
        convert_s = None
    load_s = child_load_seconds(args.model)

    lm.generate(args.model, STORY, max_tokens=4)  # warm-up: first calls pay one-off allocation costs
    start = time.perf_counter()
    one = lm.generate(args.model, STORY, max_tokens=args.tokens, stop=[])
    b1 = one.completion_tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    rows = lm.generate_batch(args.model, [STORY] * args.batch, max_tokens=args.tokens, stop=[])
    batched = sum(r.completion_tokens for r in rows) / (time.perf_counter() - start)

    def sample(seed: int) -> str:
        return lm.generate(args.model, STORY, max_tokens=args.tokens, temperature=1.0, seed=seed, stop=[]).text

    start = time.perf_counter()
    one_by_one = [sample(seed) for seed in range(args.batch)]
    one_by_one_s = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(args.batch) as pool:
        concurrent = list(pool.map(sample, range(args.batch)))
    concurrent_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = lm.score_options(args.model, QUESTION, ["blue", "green", "potato", "a clear bright blue"])
    score_s = time.perf_counter() - start

    import torch

    result = {
        "command": " ".join(["python", "bench/bench_local_models.py", *sys.argv[1:]]),
        "model": args.model,
        "convert_s": None if convert_s is None else round(convert_s, 1),
        "load_s_fresh_process": round(load_s, 2),
        "generate_tokens_per_s_batch1": round(b1, 1),
        f"generate_tokens_per_s_batch{args.batch}": round(batched, 1),
        f"sampled_{args.batch}_one_by_one_s": round(one_by_one_s, 1),
        f"sampled_{args.batch}_concurrent_s": round(concurrent_s, 1),
        "sampled_replies_identical": concurrent == one_by_one,
        "score_4_options_s": round(score_s, 3),
        "scores": [round(s, 2) for s in scores],
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
