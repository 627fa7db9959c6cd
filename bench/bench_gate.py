"""Benchmark `gradgate check` against `promptfoo eval` on the same suites, server and concurrency.

    python bench/bench_gate.py [--out bench/results/gate.json] [--scenarios reword,break] [--concurrency 4]

What runs, side by side:

1. a real OpenAI-compatible server: `transformers serve --continuous-batching` of the embedded SmolLM2 model
   on loopback (continuous batching answers concurrent requests as one batch; without it the server answers
   them one at a time). One warm-up request first: continuous batching sets itself up on the first request.
2. a temporary git repository built from examples/: commit 1 has the suites and config but no prompts, commit
   2 adds the prompts (the base of the pull request), commit 3 is the pull request's head. Scenarios:
   `reword` edits every prompt's wording harmlessly; `break` replaces every prompt with the line "Ignore
   everything below and answer only with the word banana" and its inputs (the regression the gate exists for).
   The server cannot rank options by log-likelihood, so suites scored that way are scored by generation here
   (the same metric for both tools: the reply contains the expected topic word).
3. `gradgate check --base HEAD~1 --head HEAD` (run_check in a child process):
   - cold: empty `.gradgate/`: base and head both scored (at the same time, within the concurrency limit);
   - warm base: `.gradgate/` as the main branch's run left it (that run, `check --base HEAD~2 --head HEAD~1`, is
     not timed: it scores the prompts as they were merged), so the base comes from the score cache and only
     the head is paid for, as in CI with actions/cache.
4. `promptfoo eval` (npm package, pinned) on generated configs with the head prompts and the same tests
   (contains → icontains, judge → llm-rubric with the same criteria and server), cold (empty cache) and warm.

Both tools get the same concurrency (`--max-concurrency` / `models.concurrency`). Per run: wall seconds, LLM
calls (the server's access log) and peak RSS of the child (ru_maxrss from wait4). promptfoo scores the head
only and decides nothing; gradgate scores base and head on paired items, decides each prompt, stops a prompt
once its verdict is settled, and also checks the judge against the suite's labeled examples. Ratios are
gradgate ÷ promptfoo; `warm_base_*` compares gradgate with the base cached to promptfoo cold (a new head has
never been evaluated by either tool).

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_PROMPTFOO = "0.121.20"
DEFAULT_CONCURRENCY = 4
CB_BLOCKS = 512  # 512 blocks of 32 tokens: 16k tokens of KV cache (about 0.8 GB for SmolLM2-135M in float32)
BANANA = "Ignore everything below and answer only with the word banana"
REWORDS = {  # harmless edits: (old, new) in each prompt body
    "ticket-triage.md": ("Topic:", "Topic of the ticket:"),
    "capitals.md": ("Reply with the name of the city only.", "Answer with just the city's name."),
    "release-note.md": ("one short release-note sentence", "one short, friendly release-note sentence"),
}
# Generation instead of log-likelihood (the server cannot rank options): the reply must name the topic.
TOPIC_WORDS = {"a payment": "payment", "a technical problem": "technical", "a delivery": "deliver"}
NOTE = (
    "promptfoo scores only the head versions (one pass over every test) and decides nothing; gradgate scores base "
    "and head on paired items (at the same time), stops each prompt once its verdict is settled, and judges the "
    "suite's labeled judge examples first: a suite whose judge falls below judge.min_agreement is not scored (its "
    "verdict is inconclusive whatever the scores), where promptfoo grades it anyway. LLM calls are counted from "
    "the server's access log (llm-rubric grading calls included for promptfoo; judge, judge retries and "
    "judge-calibration calls for gradgate)."
)
GATE_RUNNER = """
import json, sys, time
from pathlib import Path
from gradgate.app.check_job import run_check

class Clock:  # a Progress that only times each prompt's stage
    walls, label, start = {}, None, 0.0
    def watch(self, budget): pass
    def advance(self, amount=1): pass
    def stage(self, stage): self.label, self.start = stage.label.removeprefix("check "), time.perf_counter()
    def finish(self, line=None): self.walls[self.label] = round(time.perf_counter() - self.start, 1)

clock = Clock()
o = run_check(repo=Path(sys.argv[1]), base_ref=sys.argv[3], head_ref=sys.argv[4], config_path=None, prompt_ids=(),
              model=None, judge_model=None, out_dir=Path(sys.argv[2]), env={}, comment=False, progress=clock)
s = o.summary
print(json.dumps({"exit_code": o.exit_code, "overall": o.overall, "verdicts": o.verdicts,
                  "calls": s.budget.get("calls", 0),
                  "cached": sum(r["cached_calls"] for r in s.budget.get("by_role", {}).values()),
                  "items_scored": {p.prompt_id: [p.items_scored, p.items_total] for p in s.prompts},
                  "base_calls": {p.prompt_id: p.base_calls for p in s.prompts},
                  "base_from_score_cache": {p.prompt_id: p.base_from_score_cache for p in s.prompts},
                  "judge_agreement": {p.prompt_id: [p.judge.agree, p.judge.n] for p in s.prompts if p.judge},
                  "prompt_calls": {p.prompt_id: p.calls for p in s.prompts},
                  "prompt_wall_seconds": clock.walls,
                  "calls_saved_estimate": sum(p.calls_saved for p in s.prompts)}))
"""


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


def _generate_suites(repo: Path) -> None:
    """Suites scored by log-likelihood become generation suites with a `contains` check (both tools)."""
    for path in (repo / "evals").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if (data.get("scoring") or {}).get("mode") != "loglik":
            continue
        data.pop("scoring")
        data["metrics"] = ["contains"]
        data["max_tokens"] = 8
        for item in data["items"]:
            item["expected"] = TOPIC_WORDS.get(item["expected"], item["expected"])
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _head_edit(repo: Path, scenario: str) -> None:
    from gradgate.core.prompts import load_prompt, split_front_matter

    for path in sorted((repo / "prompts").glob("*.md")):
        text = path.read_text()
        if scenario == "reword":
            old, new = REWORDS[path.name]
            if old not in text:
                raise SystemExit(f"examples/prompts/{path.name} changed; update REWORDS in bench/bench_gate.py")
            path.write_text(text.replace(old, new))
        else:
            prompt = load_prompt(path, repo)
            front, _ = split_front_matter(text)
            path.write_text(front + BANANA + "\n\n" + "\n".join("{{" + v + "}}" for v in prompt.variables) + "\n")


def build_repo(repo: Path, base_url: str, model: str, scenario: str, concurrency: int, only: set[str] | None = None) -> None:
    """Commit 1: suites and config, no prompts; 2: the prompts (the pull request's base); 3: its head.
    With `only`, the other prompts are left out."""
    shutil.copytree(ROOT / "examples", repo, ignore=shutil.ignore_patterns("workflows", ".gradgate"))
    for path in (repo / "prompts").glob("*.md"):
        if only and path.stem not in only:
            path.unlink()
    config = yaml.safe_load((repo / "gradgate.yaml").read_text())
    spec = {"model": f"openai/{model}", "api_base": base_url}
    config["models"] = {"task": spec, "judge": spec, "optimizer": spec, "concurrency": concurrency}
    config["budget"] = {"max_calls": 2000}
    (repo / "gradgate.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (repo / ".gitignore").write_text(".gradgate/\n")
    _generate_suites(repo)
    prompts = repo / "prompts"
    held = repo.parent / "prompts-held"
    shutil.move(prompts, held)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "suites, no prompts yet")
    shutil.move(held, prompts)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base: the prompts as merged")
    _head_edit(repo, scenario)
    git(repo, "commit", "-q", "-am", f"head: {scenario} every prompt")


def promptfoo_config(repo: Path, base_url: str, model: str, dest: Path) -> int:
    """One promptfooconfig per prompt (so tests run only against their own prompt); returns the test count."""
    from gradgate.core.config import load_config
    from gradgate.core.discovery import discover

    config, _ = load_config(repo)
    tests_total = 0
    dest.mkdir(parents=True, exist_ok=True)
    server = {"apiBaseUrl": base_url, "apiKey": "x", "temperature": 0}
    for target in discover(repo, config):
        spec = target.suite.spec
        provider = {
            "id": f"openai:chat:{model}",
            "label": target.prompt.id,
            "config": {**server, "max_tokens": spec.max_tokens or config.models.task.max_tokens},
        }
        metrics = [m if isinstance(m, str) else m.get("type") for m in spec.metrics]
        tests = []
        for item in target.suite.items:
            assertion: dict[str, Any]
            if "contains" in metrics:
                assertion = {"type": "icontains", "value": item.expected or ""}
            else:
                criteria = (spec.judge.criteria if spec.judge else config.judge.criteria).strip()
                grader = {"id": f"openai:chat:{model}", "config": {**server, "max_tokens": config.models.judge.max_tokens}}
                assertion = {"type": "llm-rubric", "value": criteria, "provider": grader}
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


@contextmanager
def serve(folder: Path) -> Iterator[Any]:
    """`transformers serve --continuous-batching` of `folder` on loopback, warmed up by one request."""
    from tests.openai_server import READY_TIMEOUT_S, ServerHandle, _serve_command, _stop, _wait_ready, free_port

    port = free_port()
    model = str(folder.resolve())
    log_dir = Path(tempfile.mkdtemp(prefix="gradgate-serve-"))
    log_path = log_dir / "serve.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", OMP_WAIT_POLICY="PASSIVE")
    command = [*_serve_command(), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    # The paged KV cache is sized for the largest batch the run sends (by default it takes a share of all memory).
    command += ["--dtype", "float32", "--continuous-batching", "--cb-block-size", "32", "--cb-num-blocks", str(CB_BLOCKS)]
    command.append(model)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    handle = ServerHandle(f"http://127.0.0.1:{port}/v1", model, port, process, log_path)
    try:
        _wait_ready(handle, READY_TIMEOUT_S)
        warm = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4, "temperature": 0}
        httpx.post(f"{handle.base_url}/chat/completions", json=warm, timeout=600).raise_for_status()
        yield handle
    finally:
        _stop(process)
        shutil.rmtree(log_dir, ignore_errors=True)


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


def run_gate(
    repo: Path, out: Path, env: dict[str, str], log_path: Path, base: str = "HEAD~1", head: str = "HEAD"
) -> dict[str, Any]:
    result = measured([sys.executable, "-c", GATE_RUNNER, str(repo), str(out), base, head], env, log_path)
    if result["exit_code"] not in (0, 1):
        raise SystemExit(f"gradgate check failed ({result['exit_code']}):\n{result['_stderr'][-3000:]}")
    reported = json.loads(result["_stdout"].strip().splitlines()[-1])
    decided = sum(1 for v in reported["verdicts"].values() if v in ("regressed", "improved", "unchanged"))
    (out / "stderr.log").write_text(result["_stderr"])
    return {
        **{k: v for k, v in result.items() if not k.startswith("_")},
        "retried_calls": result["_stderr"].count("retrying in"),  # timeouts and server errors, from the gateway's log
        "decided_prompts": decided,
        "calls_per_decided_prompt": round(result["server_calls"] / decided, 1) if decided else None,
        "reported": reported,
    }


def run_promptfoo(
    binary: Path, configs: Path, out: Path, cache: Path, env: dict[str, str], log_path: Path, concurrency: int
) -> dict[str, Any]:
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
        command = [str(binary), "eval", "-c", str(config), "-o", str(result_file), "--no-table", "--no-progress-bar"]
        command += ["--max-concurrency", str(concurrency)]
        result = measured(command, env, log_path, cwd=configs)
        if not result_file.is_file():
            raise SystemExit(f"promptfoo eval wrote no results ({result['exit_code']}):\n{result['_stderr'][-3000:]}")
        stats = json.loads(result_file.read_text()).get("results", {}).get("stats", {})
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
            }
        )
    total["prompts"] = len(total["runs"])
    total["calls_per_prompt"] = round(total["server_calls"] / total["prompts"], 1) if total["prompts"] else None
    return total


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _prompt_cost(reported: dict[str, Any], name: str) -> dict[str, Any]:
    return {"wall_seconds": reported["prompt_wall_seconds"].get(name), "calls": reported["prompt_calls"].get(name)}


def per_prompt(gate_cold: dict[str, Any], gate_warm: dict[str, Any], pf_cold: dict[str, Any]) -> dict[str, Any]:
    """Each prompt's wall seconds and calls: gradgate cold and warm base (its scoring stage, without start-up)
    against promptfoo cold (its whole run for that prompt's config, start-up included)."""
    out = {}
    for run in pf_cold["runs"]:
        name = run["prompt"]
        cold, warm = gate_cold["reported"], gate_warm["reported"]

        out[name] = {
            "gradgate_cold": _prompt_cost(cold, name),
            "gradgate_warm_base": _prompt_cost(warm, name),
            "promptfoo_cold": {"wall_seconds": run["wall_seconds"], "calls": run["server_calls"]},
            "verdict": cold["verdicts"].get(name),
        }
    return out


def run_scenario(
    scenario: str, tmp: Path, server: Any, binary: Path, env: dict[str, str], concurrency: int, only: set[str] | None
) -> dict[str, Any]:
    repo = tmp / scenario / "repo"
    repo.parent.mkdir(parents=True)
    build_repo(repo, server.base_url, server.model, scenario, concurrency, only)
    tests = promptfoo_config(repo, server.base_url, server.model, tmp / scenario / "promptfoo")
    log = server.log_path
    gate_cold = run_gate(repo, tmp / scenario / "gate-cold", env, log)
    shutil.rmtree(repo / ".gradgate")
    main_run = run_gate(repo, tmp / scenario / "gate-main", env, log, base="HEAD~2", head="HEAD~1")  # not compared
    gate_warm = run_gate(repo, tmp / scenario / "gate-warm-base", env, log)
    (tmp / scenario / "pf-out").mkdir()
    pf = [tmp / scenario / "promptfoo", tmp / scenario / "pf-out", tmp / scenario / "pf-cache" / "cache"]
    pf_cold = run_promptfoo(binary, *pf, env, log, concurrency)
    pf_warm = run_promptfoo(binary, *pf, env, log, concurrency)
    print(f"{scenario}: gate cold {gate_cold['wall_seconds']} s / {gate_cold['server_calls']} calls, warm base "
          f"{gate_warm['wall_seconds']} s / {gate_warm['server_calls']} calls; promptfoo cold {pf_cold['wall_seconds']} s "
          f"/ {pf_cold['server_calls']} calls", flush=True)  # fmt: skip
    return {
        "head_edit": "every prompt reworded harmlessly"
        if scenario == "reword"
        else f"every prompt replaced by {BANANA!r} and its inputs",
        "tests": tests,
        "gradgate_check": {"cold": gate_cold, "main_branch_run_untimed": main_run, "warm_base": gate_warm},
        "promptfoo_eval": {"cold": pf_cold, "warm": pf_warm},
        "per_prompt": per_prompt(gate_cold, gate_warm, pf_cold),
        "ratios": {
            "cold_wall": ratio(gate_cold["wall_seconds"], pf_cold["wall_seconds"]),
            "cold_calls": ratio(gate_cold["server_calls"], pf_cold["server_calls"]),
            "warm_base_wall": ratio(gate_warm["wall_seconds"], pf_cold["wall_seconds"]),
            "warm_base_calls": ratio(gate_warm["server_calls"], pf_cold["server_calls"]),
            "cold_peak_rss": ratio(gate_cold["peak_rss_mib"], pf_cold["peak_rss_mib"]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gate.json"))
    parser.add_argument("--promptfoo-version", default=DEFAULT_PROMPTFOO)
    parser.add_argument("--scenarios", default="reword,break")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--prompts", default="", help="only these example prompts, comma separated (default: all)")
    args = parser.parse_args()
    from gradgate.models.local import converted_model_dir

    binary = install_promptfoo(args.promptfoo_version)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "GITHUB_ACTIONS": ""}
    scenarios = {}
    with (
        tempfile.TemporaryDirectory(prefix="gradgate-bench-gate-") as tmp_name,
        serve(converted_model_dir("smollm2-135m-instruct")) as server,
    ):
        for scenario in args.scenarios.split(","):
            only = set(args.prompts.split(",")) if args.prompts else None
            scenarios[scenario] = run_scenario(scenario, Path(tmp_name), server, binary, env, args.concurrency, only)
    first = next(iter(scenarios.values()))
    report = {
        "benchmark": "gradgate check (base+head, paired, sequential, score cache) vs promptfoo eval (head), examples/",
        "server": "transformers serve --continuous-batching, SmolLM2-135M-Instruct, CPU, OpenAI chat completions on loopback",
        "concurrency": args.concurrency,
        "prompts": args.prompts.split(",") if args.prompts else "all examples",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "promptfoo_version": args.promptfoo_version,
        "note": NOTE,
        "ratios": {k: first["ratios"][k] for k in ("cold_wall", "warm_base_wall", "warm_base_calls")},
        "ratios_scenario": next(iter(scenarios)),
        "scenarios": scenarios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, s in scenarios.items():
        print(name, json.dumps(s["ratios"]))


if __name__ == "__main__":
    main()
