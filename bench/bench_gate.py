"""Benchmark `gradgate check` against `promptfoo eval` on the same prompts, tests and server.

    python bench/bench_gate.py [--out bench/results/gate.json] [--promptfoo-version 0.121.20]

What runs, side by side in one process tree:

1. a real OpenAI-compatible server (`transformers serve` of the embedded SmolLM2 model,
   tests/openai_server.py);
2. a temporary git repository built from examples/: a base commit, then a head commit that rewords
   every prompt;
3. `gradgate check --base HEAD~1 --head HEAD` (through `gradgate.gate.check.run_check` in a child process),
   cold (empty caches) and warm (second run);
4. `promptfoo eval` (npm package, pinned) on generated promptfooconfigs with the head prompts, the same
   tests (assertions translated: final number, chosen letter, llm-rubric for the judge suite) and the
   same server, cold (empty PROMPTFOO_CACHE_PATH) and warm.

Per run: wall seconds, LLM calls (counted by the server's access log, and as each tool reports them)
and the peak RSS of the child process (ru_maxrss from wait4). Note the asymmetry, reported in the JSON:
promptfoo scores only the head; gradgate scores base and head (paired) but stops early once the verdict
is settled.

promptfoo is installed with npm into a cache folder outside the repository ($GRADGATE_BENCH_NODE or
<tmp>/gradgate-bench-node). Figures are noisy on a shared 2-core machine: compare runs made together.
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
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_PROMPTFOO = "0.121.20"
# Head edits: each prompt reworded, so each one is re-scored by the gate.
# transformers serve (without continuous batching) hung on concurrent requests here: one at a time, both tools.
HEAD_EDITS = {
    "math.md": ("Think step by step, then finish", "Answer briefly and finish"),
    "ticket-triage.md": (
        "Classify the customer message into one team.",
        "Which team should handle this message?",
    ),
    "release-note.md": ("one short release-note sentence", "one short, friendly release-note sentence"),
}
NOTE = (
    "promptfoo scores only the head versions (one pass over every test); gradgate scores base and head on "
    "paired items and stops each prompt once its verdict is settled. LLM calls are counted from the server's "
    "access log (llm-rubric grading calls included for promptfoo, judge calls for gradgate)."
)
GATE_RUNNER = """
import json, os, sys
from pathlib import Path
from gradgate.app.check_job import run_check
o = run_check(repo=Path(sys.argv[1]), base_ref="HEAD~1", head_ref="HEAD", config_path=None, prompt_ids=(),
              model=None, judge_model=None, out_dir=Path(sys.argv[2]), env={}, comment=False)
s = o.summary
print(json.dumps({"exit_code": o.exit_code, "overall": o.overall, "verdicts": o.verdicts,
                  "calls": s.budget.get("calls", 0),
                  "cached": sum(r["cached_calls"] for r in s.budget.get("by_role", {}).values()),
                  "items_scored": {p.prompt_id: [p.items_scored, p.items_total] for p in s.prompts},
                  "calls_saved_estimate": sum(p.calls_saved for p in s.prompts)}))
"""
FINAL_NUMBER_JS = (
    "const m = String(output).replace(/,/g, '').match(/-?\\d+(?:\\.\\d+)?/g);"
    " return m !== null && parseFloat(m[m.length - 1]) === parseFloat('{expected}');"
)
CHOICE_JS = "const m = String(output).match(/\\(?\\b([A-Z])\\b\\)?/); return m !== null && '(' + m[1] + ')' === '{expected}';"


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


def build_repo(repo: Path, base_url: str, model: str) -> None:
    shutil.copytree(ROOT / "examples", repo, ignore=shutil.ignore_patterns("workflows", ".gradgate"))
    config = yaml.safe_load((repo / "gradgate.yaml").read_text())
    spec = {"model": f"openai/{model}", "api_base": base_url}
    config["models"] = {"task": spec, "judge": spec, "optimizer": spec, "concurrency": 1}
    config["budget"] = {"max_calls": 1000}
    (repo / "gradgate.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (repo / ".gitignore").write_text(".gradgate/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    for name, (old, new) in HEAD_EDITS.items():
        path = repo / "prompts" / name
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"examples/prompts/{name} changed; update HEAD_EDITS in bench/bench_gate.py")
        path.write_text(text.replace(old, new))
    git(repo, "commit", "-q", "-am", "head: reword every prompt")


def promptfoo_config(repo: Path, base_url: str, model: str, dest: Path) -> int:
    """One promptfooconfig per prompt (so tests run only against their own prompt); returns the test count."""
    from gradgate.core.config import load_config
    from gradgate.core.discovery import discover

    config, _ = load_config(repo)
    tests_total = 0
    dest.mkdir(parents=True, exist_ok=True)
    for target in discover(repo, config):
        spec = target.suite.spec
        provider = {
            "id": f"openai:chat:{model}",
            "label": target.prompt.id,
            "config": {
                "apiBaseUrl": base_url,
                "apiKey": "x",
                "temperature": 0,
                "max_tokens": spec.max_tokens or config.models.task.max_tokens,
            },
        }
        metrics = [m if isinstance(m, str) else m.get("type") for m in spec.metrics]
        tests = []
        for item in target.suite.items:
            assertion: dict[str, Any]
            if "final_number" in metrics:
                assertion = {
                    "type": "javascript",
                    "value": FINAL_NUMBER_JS.replace("{expected}", item.expected or ""),
                }
            elif "choice" in metrics:
                assertion = {
                    "type": "javascript",
                    "value": CHOICE_JS.replace("{expected}", item.expected or ""),
                }
            else:
                criteria = (spec.judge.criteria if spec.judge else config.judge.criteria).strip()
                assertion = {
                    "type": "llm-rubric",
                    "value": criteria,
                    "provider": {
                        "id": f"openai:chat:{model}",
                        "config": {
                            "apiBaseUrl": base_url,
                            "apiKey": "x",
                            "temperature": 0,
                            "max_tokens": 256,
                        },
                    },
                }
            tests.append({"description": item.id, "vars": item.vars, "assert": [assertion]})
        tests_total += len(tests)
        doc = {
            "description": f"{target.prompt.id} (head)",
            "prompts": [target.prompt.expanded],
            "providers": [provider],
            "tests": tests,
        }
        (dest / f"{target.prompt.id}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return tests_total


def install_promptfoo(version: str) -> Path:
    prefix = Path(os.environ.get("GRADGATE_BENCH_NODE") or Path(tempfile.gettempdir()) / "gradgate-bench-node")
    binary = prefix / "node_modules" / ".bin" / "promptfoo"
    installed = prefix / "node_modules" / "promptfoo" / "package.json"
    if not (binary.exists() and installed.is_file() and json.loads(installed.read_text())["version"] == version):
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"promptfoo@{version}"],
            check=True,
            capture_output=True,
        )
    return binary


def server_calls(log_path: Path) -> int:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace").count("POST /v1/chat/completions")
    except OSError:
        return 0


def measured(command: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> dict[str, Any]:
    """Run `command`; wall time, peak RSS of the child (wait4), calls seen by the server, stdout."""
    before = server_calls(log_path)
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    time.sleep(0.5)  # let the server flush its access log
    return {
        "wall_seconds": round(wall, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "server_calls": server_calls(log_path) - before,
        "exit_code": proc.returncode,
        "_stdout": stdout,
        "_stderr": stderr,
    }


def run_gate(repo: Path, out: Path, env: dict[str, str], log_path: Path) -> dict[str, Any]:
    result = measured([sys.executable, "-c", GATE_RUNNER, str(repo), str(out)], env, log_path)
    if result["exit_code"] not in (0, 1):
        raise SystemExit(f"gradgate check failed ({result['exit_code']}):\n{result['_stderr'][-3000:]}")
    reported = json.loads(result["_stdout"].strip().splitlines()[-1])
    return {**{k: v for k, v in result.items() if not k.startswith("_")}, "reported": reported}


def run_promptfoo(binary: Path, configs: Path, out: Path, cache: Path, env: dict[str, str], log_path: Path) -> dict[str, Any]:
    env = {
        **env,
        "PROMPTFOO_DISABLE_TELEMETRY": "1",
        "PROMPTFOO_DISABLE_UPDATE": "1",
        "PROMPTFOO_CACHE_PATH": str(cache),
        "PROMPTFOO_CONFIG_DIR": str(cache.parent / "promptfoo-home"),
        "PROMPTFOO_DISABLE_SHARING": "1",
        "OPENAI_API_KEY": "x",
    }
    total: dict[str, Any] = {"wall_seconds": 0.0, "peak_rss_mib": 0.0, "server_calls": 0, "runs": []}
    for config in sorted(configs.glob("*.yaml")):
        result_file = out / f"{config.stem}.json"
        command = [
            str(binary),
            "eval",
            "-c",
            str(config),
            "-o",
            str(result_file),
            "--no-table",
            "--no-progress-bar",
            "--max-concurrency",
            "1",
        ]
        result = measured(command, env, log_path, cwd=configs)
        if not result_file.is_file():
            raise SystemExit(f"promptfoo eval wrote no results ({result['exit_code']}):\n{result['_stderr'][-3000:]}")
        data = json.loads(result_file.read_text())
        stats = data.get("results", {}).get("stats", {})
        total["wall_seconds"] = round(total["wall_seconds"] + result["wall_seconds"], 2)
        total["peak_rss_mib"] = max(total["peak_rss_mib"], result["peak_rss_mib"])
        total["server_calls"] += result["server_calls"]
        total["runs"].append(
            {
                "prompt": config.stem,
                "wall_seconds": result["wall_seconds"],
                "server_calls": result["server_calls"],
                "exit_code": result["exit_code"],
                "successes": stats.get("successes"),
                "failures": stats.get("failures"),
                "errors": stats.get("errors"),
                "token_usage": stats.get("tokenUsage"),
            }
        )
    return total


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gate.json"))
    parser.add_argument("--promptfoo-version", default=DEFAULT_PROMPTFOO)
    args = parser.parse_args()
    from tests.openai_server import start_openai_server

    from gradgate.models.local import converted_model_dir

    binary = install_promptfoo(args.promptfoo_version)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "GITHUB_ACTIONS": ""}
    with (
        tempfile.TemporaryDirectory(prefix="gradgate-bench-gate-") as tmp_name,
        start_openai_server(converted_model_dir("smollm2-135m-instruct")) as server,
    ):
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        build_repo(repo, server.base_url, server.model)
        n_tests = promptfoo_config(repo, server.base_url, server.model, tmp / "promptfoo")
        gate_cold = run_gate(repo, tmp / "gate-cold", env, server.log_path)
        gate_warm = run_gate(repo, tmp / "gate-warm", env, server.log_path)
        (tmp / "pf-out").mkdir()
        pf_cold = run_promptfoo(binary, tmp / "promptfoo", tmp / "pf-out", tmp / "pf-cache" / "cache", env, server.log_path)
        pf_warm = run_promptfoo(binary, tmp / "promptfoo", tmp / "pf-out", tmp / "pf-cache" / "cache", env, server.log_path)
    report = {
        "benchmark": "gradgate check (base+head, paired, sequential) vs promptfoo eval (head), examples/",
        "server": "transformers serve, SmolLM2-135M-Instruct, CPU, OpenAI chat completions on loopback",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "promptfoo_version": args.promptfoo_version,
        "tests": n_tests,
        "note": NOTE,
        "gradgate_check": {"cold": gate_cold, "warm": gate_warm},
        "promptfoo_eval": {"cold": pf_cold, "warm": pf_warm},
        "ratios_gradgate_over_promptfoo": {
            phase: {
                "wall_seconds": ratio(g["wall_seconds"], p["wall_seconds"]),
                "llm_calls": ratio(g["server_calls"], p["server_calls"]),
                "peak_rss_mib": ratio(g["peak_rss_mib"], p["peak_rss_mib"]),
            }
            for phase, g, p in (("cold", gate_cold, pf_cold), ("warm", gate_warm, pf_warm))
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for phase, values in report["ratios_gradgate_over_promptfoo"].items():
        print(
            f"{phase}: gradgate/promptfoo wall {values['wall_seconds']}, calls {values['llm_calls']}, "
            f"peak RSS {values['peak_rss_mib']}"
        )


if __name__ == "__main__":
    main()
