"""Benchmark `gradgate eval` on examples/ with the embedded model: items per second and peak memory,
cold (empty response cache, model already converted) and warm (everything from the cache).

    python bench/bench_eval.py [--out bench/results/eval.json]

Each run is a separate `gradgate eval` process, so peak RSS is that process's own (ru_maxrss of the
waited child). Figures are noisy on a shared 2-core machine: compare runs made together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_eval(repo: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradgate", "eval", "--repo", str(repo), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"gradgate eval exited {code}: {proc.stderr.read() if proc.stderr else ''}")
    results = json.loads((out / "results.json").read_text())
    items = sum(p["n_scored"] for p in results["prompts"])
    return {
        "wall_seconds": round(wall, 2),
        "items": items,
        "items_per_second": round(items / wall, 3),
        "llm_calls": results["budget"]["calls"],
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(ROOT / "examples", repo, ignore=shutil.ignore_patterns("workflows", ".gradgate"))
        cold = run_eval(repo, Path(tmp) / "cold")
        warm = run_eval(repo, Path(tmp) / "warm")
    report = {
        "benchmark": "gradgate eval on examples/ (embedded local/smollm2-135m-instruct)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "cold": cold,
        "warm": warm,
        "warm_speedup": round(cold["wall_seconds"] / warm["wall_seconds"], 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
