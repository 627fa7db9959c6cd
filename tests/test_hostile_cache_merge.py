"""The caches and shard results are untrusted input too: real git repositories, the real command line.

A pull request can commit files under `cache_dir` (the keys are computable), so a cache holding any file git
tracks is refused with exit 2 before the first model call; a malformed cache entry of any kind is a miss (the
reply is computed again), never a crash. `gradgate merge` reports a tampered shard budget with exit 2 naming
the file and the key.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gradgate.core.budget import BudgetTracker
from gradgate.core.config import Config, ModelSpec
from gradgate.models.gateway import Gateway, ResponseCache
from gradgate.models.scripted import ScriptedBackend, last_user_text
from tests.conftest import script_sessions
from tests.gitutil import git, isolated_git  # noqa: F401 - isolated_git: autouse fixture

N_ITEMS = 6
CONFIG = "version: 1\nprompts: ['prompts/**/*.md']\ngate: {min_items: 4, batch_size: 4, max_drop: 0.05, alpha: 0.05}\n"
SUITE = "metrics: [final_number]\nitems:\n" + "".join(
    f"  - {{id: q{n}, vars: {{q: 'What is {n} + {n + 3}?'}}, expected: '{2 * n + 3}'}}\n" for n in range(N_ITEMS)
)
MODELS = ["--model", "scripted/task", "--judge-model", "scripted/judge"]
FORGED = "FORGED-REPLY"


def adder(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
    a, b = (int(x) for x in re.findall(r"(\d+) \+ (\d+)", last_user_text(messages))[0])
    return f"The answer is {a + b}"


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedBackend:
    """Every Session the CLI opens gets this scripted backend; its `calls` are every real model call."""
    for name in ("GITHUB_ACTIONS", "GITHUB_EVENT_PATH", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    backend = ScriptedBackend(adder)
    script_sessions(monkeypatch, backend)
    return backend


def run_cli(*args: str) -> tuple[int, str]:
    from gradgate.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


def make_repo(root: Path, *, config: str = CONFIG, gitignore: str | None = ".gradgate/\n", init: bool = True) -> str:
    """Two prompts on the adder suite, committed (the base), then both reworded in the working tree (the head,
    uncommitted). Returns the base commit ('' without git)."""
    files = {"gradgate.yaml": config, "evals/add.yaml": SUITE, "evals/sum.yaml": SUITE}
    files |= {"prompts/add.md": _prompt("add", "Add {{q}}"), "prompts/sum.md": _prompt("sum", "Sum {{q}}")}
    if gitignore is not None:
        files[".gitignore"] = gitignore
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    base = ""
    if init:
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "base")
        base = git(root, "rev-parse", "HEAD")
    (root / "prompts/add.md").write_text(_prompt("add", "Please add {{q}}"), encoding="utf-8")
    (root / "prompts/sum.md").write_text(_prompt("sum", "Please sum {{q}}"), encoding="utf-8")
    return base


def _prompt(pid: str, body: str) -> str:
    return f"---\nid: {pid}\nsuite: evals/{pid}.yaml\n---\n{body}\n"


def eval_args(repo: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--repo", str(repo), "--out", str(out), *MODELS, *extra]


def outputs(results: Path) -> list[str]:
    data = json.loads(results.read_text(encoding="utf-8"))
    return [item["output"] for prompt in data["prompts"] for item in prompt["items"]]


def cache_files(repo: Path, cache_dir: str = ".gradgate/cache") -> list[Path]:
    return sorted(p for p in (repo / cache_dir).rglob("*.json") if "gate-scores" not in p.parts)


def assert_clean(output: str) -> None:
    assert "Traceback" not in output and "internal error" not in output, output


# -- committed cache files ------------------------------------------------------------------------------


def _forge(entry: Path) -> None:
    data = json.loads(entry.read_text(encoding="utf-8"))
    entry.write_text(json.dumps({**data, "text": FORGED}), encoding="utf-8")


@pytest.mark.parametrize("command", ["eval", "check", "optimize"])
def test_a_committed_cache_exits_2_before_any_model_call(tmp_path: Path, scripted: ScriptedBackend, command: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    base = make_repo(repo)
    code, output = run_cli(*eval_args(repo, tmp_path / "first"))
    assert code == 0 and cache_files(repo), output
    for entry in cache_files(repo):
        _forge(entry)  # well-formed replies, keys computed from the requests: what a pull request can commit
    git(repo, "add", "-f", ".gradgate/cache")
    git(repo, "commit", "-q", "-m", "warm the cache")
    scripted.calls.clear()
    out = tmp_path / "out"
    args = {
        "eval": eval_args(repo, out),
        "check": ["check", "--base", base, "--repo", str(repo), "--out", str(out), "--no-comment", *MODELS],
        "optimize": ["optimize", "--repo", str(repo), "--out", str(out), *MODELS, "--optimizer-model", "scripted/opt"],
    }[command]
    code, output = run_cli(*args)
    assert code == 2, output
    assert_clean(output)
    assert "cache_dir" in output and "committed" in output and "git rm -r --cached '.gradgate/cache'" in output, output
    assert scripted.calls == []
    assert FORGED not in output
    if command == "eval":
        assert not (out / "results.json").exists()


def test_a_committed_file_in_a_configured_cache_dir_names_it(tmp_path: Path, scripted: ScriptedBackend) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    make_repo(repo, config=CONFIG + "cache_dir: replies\n", gitignore=None)
    (repo / "replies" / "ab").mkdir(parents=True)
    (repo / "replies" / "ab" / "abcd.json").write_text("{}", encoding="utf-8")
    git(repo, "add", "replies")
    code, output = run_cli(*eval_args(repo, tmp_path / "out"))  # staged is enough: the next commit holds it
    assert code == 2 and "cache_dir" in output and "replies/ab/abcd.json" in output, output
    assert_clean(output)
    assert scripted.calls == []


def test_an_ignored_cache_is_used_and_a_directory_without_git_is_not_checked(tmp_path: Path, scripted: ScriptedBackend) -> None:
    for name, init in (("repo", True), ("plain", False)):
        repo = tmp_path / name
        repo.mkdir()
        make_repo(repo, init=init)
        for run in (1, 2):
            scripted.calls.clear()
            code, output = run_cli(*eval_args(repo, tmp_path / f"{name}-out{run}"))
            assert code == 0, output
            assert len(scripted.calls) == (2 * N_ITEMS if run == 1 else 0)  # the second run: all from the cache


# -- malformed cache entries ----------------------------------------------------------------------------

REPLY = {"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.0, "model": "scripted/task"}
MALFORMED: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "undecodable": lambda entry: b"\xff\xfe",
    "too deep": lambda entry: b"[" * 100_000,
    "wrong types": lambda entry: b'{"text": 5, "prompt_tokens": "x"}',
    "a field missing": lambda entry: json.dumps({"text": FORGED}).encode(),
    "not an object": lambda entry: b"[]",
    "a bool for a count": lambda entry: json.dumps({**REPLY, "text": FORGED, "prompt_tokens": True}).encode(),
    "negative tokens": lambda entry: json.dumps({**REPLY, "text": FORGED, "completion_tokens": -1}).encode(),
    "NaN cost": lambda entry: json.dumps({**REPLY, "text": FORGED, "cost_usd": float("nan")}).encode(),
    "an unknown key": lambda entry: json.dumps({**entry, "text": FORGED, "extra": 1}).encode(),
    "another model's reply": lambda entry: json.dumps({**entry, "text": FORGED, "model": "other/model"}).encode(),
    "a lone surrogate": lambda entry: json.dumps({**entry, "text": "\ud800"}).encode(),
    "truncated": lambda entry: json.dumps({**entry, "text": FORGED}).encode()[:-3],
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_cache_entry_is_a_miss(tmp_path: Path, scripted: ScriptedBackend, kind: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    make_repo(repo)
    code, output = run_cli(*eval_args(repo, tmp_path / "first"))
    assert code == 0, output
    expected = outputs(tmp_path / "first" / "results.json")
    entries = cache_files(repo)
    assert len(entries) == 2 * N_ITEMS
    for entry in entries:
        entry.write_bytes(MALFORMED[kind](json.loads(entry.read_text(encoding="utf-8"))))

    scripted.calls.clear()
    code, output = run_cli(*eval_args(repo, tmp_path / "again"))
    assert code == 0, output
    assert_clean(output)
    assert len(scripted.calls) == 2 * N_ITEMS  # every reply computed again
    assert outputs(tmp_path / "again" / "results.json") == expected
    assert FORGED not in (tmp_path / "again" / "results.json").read_text(encoding="utf-8")
    # One warning, naming a file relative to the repository.
    assert output.count("malformed response cache entry") == 1, output
    assert re.search(r"malformed response cache entry \.gradgate/cache/[0-9a-f]{2}/[0-9a-f]{64}\.json", output), output

    scripted.calls.clear()  # the entries were written again, well-formed: the next run is free
    code, output = run_cli(*eval_args(repo, tmp_path / "third"))
    assert code == 0 and scripted.calls == [] and "malformed response cache entry" not in output, output


@pytest.mark.parametrize(
    "stored",
    [
        [float("nan"), 1.0, 2.0],  # NaN log-likelihood
        [0.0],  # fewer scores than options
        ["0", 1.0, 2.0],
        [True, 1.0, 2.0],
    ],
)
def test_a_malformed_loglik_entry_is_a_miss(tmp_path: Path, stored: list[Any]) -> None:
    backend = ScriptedBackend(adder, option_scores=lambda messages, options: [0.0, -1.0, float("-inf")])
    cache = ResponseCache(tmp_path / "cache")
    gateway = Gateway(Config().models, budget=BudgetTracker(), cache=cache, backend=backend)
    messages = [{"role": "user", "content": "Pick one"}]
    first = asyncio.run(gateway.score_options("judge", messages, ["a", "b", "c"]))
    assert first == [0.0, -1.0, float("-inf")]
    assert asyncio.run(gateway.score_options("judge", messages, ["a", "b", "c"])) == first and len(backend.calls) == 1
    [entry] = (tmp_path / "cache").rglob("*.json")
    entry.write_text(json.dumps({"scores": stored}), encoding="utf-8")
    assert asyncio.run(gateway.score_options("judge", messages, ["a", "b", "c"])) == first
    assert len(backend.calls) == 2


# -- the gate's score cache -----------------------------------------------------------------------------


def _scores(transform: Callable[[list[Any]], Any]) -> Callable[[dict[str, Any]], bytes]:
    def rewrite(data: dict[str, Any]) -> bytes:
        return json.dumps({"items": {key: transform(value) for key, value in data["items"].items()}}).encode()

    return rewrite


SCORE_MALFORMED: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "undecodable": lambda data: b"\xff\xfe",
    "too deep": lambda data: b"[" * 100_000,
    "not an object": lambda data: b"[1, 2]",
    "items not a mapping": lambda data: b'{"items": [1]}',
    "a string mean": _scores(lambda v: ["x", v[1], v[2]]),
    "a NaN mean": _scores(lambda v: [float("nan"), v[1], v[2]]),
    "a mean above 1": _scores(lambda v: [7.0, v[1], v[2]]),
    "more passes than samples": _scores(lambda v: [v[0], v[2] + 1, v[2]]),
    "no samples": _scores(lambda v: [v[0], 0, 0]),
    "a short entry": _scores(lambda v: v[:2]),
}


@pytest.mark.parametrize("kind", list(SCORE_MALFORMED))
def test_a_malformed_score_cache_file_is_a_miss(tmp_path: Path, scripted: ScriptedBackend, kind: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    base = make_repo(repo)
    args = ["check", "--base", base, "--repo", str(repo), "--no-comment", *MODELS]
    code, output = run_cli(*args, "--out", str(tmp_path / "first"))
    assert code == 0, output
    first_calls = len(scripted.calls)
    verdicts = {p["prompt_id"]: p["verdict"] for p in json.loads((tmp_path / "first" / "check.json").read_text())["prompts"]}
    assert verdicts == {"add": "unchanged", "sum": "unchanged"}
    # Only the score cache is left: every item must come from it, or from the model again.
    for entry in cache_files(repo):
        entry.unlink()
    scored = sorted((repo / ".gradgate" / "cache" / "gate-scores").glob("*.json"))
    assert scored
    for path in scored:
        path.write_bytes(SCORE_MALFORMED[kind](json.loads(path.read_text(encoding="utf-8"))))

    scripted.calls.clear()
    code, output = run_cli(*args, "--out", str(tmp_path / "again"))
    assert code == 0, output
    assert_clean(output)
    check = json.loads((tmp_path / "again" / "check.json").read_text())
    assert {p["prompt_id"]: p["verdict"] for p in check["prompts"]} == verdicts
    assert len(scripted.calls) == first_calls > 0  # base and head of both prompts, scored again
    assert all(p["base_from_score_cache"] == p["head_from_score_cache"] == 0 for p in check["prompts"])
    assert output.count("malformed score cache file") == 1, output
    assert re.search(r"malformed score cache file \.gradgate/cache/gate-scores/[0-9a-f]{64}\.json", output), output


# -- tampered shard results -----------------------------------------------------------------------------


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(budget: dict[str, Any]) -> None:
        *parents, last = path
        for key in parents:
            budget = budget[key]
        budget[last] = value

    return change


def _drop(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def change(budget: dict[str, Any]) -> None:
        *parents, last = path
        for key in parents:
            budget = budget[key]
        del budget[last]

    return change


TAMPERED: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_set(("calls",), "abc"), "budget.calls"),
    (_set(("by_role",), [1]), "budget.by_role"),
    (_set(("by_role", "task", "calls"), "x"), "budget.by_role.task.calls"),
    (_set(("seconds",), "nan"), "budget.seconds"),
    (_set(("seconds",), float("nan")), "budget.seconds"),
    (_set(("cost_usd",), float("inf")), "budget.cost_usd"),
    (_set(("tokens",), -5), "budget.tokens"),
    (_set(("calls",), True), "budget.calls"),
    (_set(("limits", "max_calls"), "ten"), "budget.limits.max_calls"),
    (_set(("stopped_reason",), 7), "budget.stopped_reason"),
    (_drop(("by_role", "task", "cached_calls")), "budget.by_role.task.cached_calls"),
    (_drop(("tokens",)), "budget.tokens"),
]


@pytest.fixture
def eval_shards(tmp_path: Path, scripted: ScriptedBackend) -> list[Path]:
    repo = tmp_path / "repo"
    repo.mkdir()
    make_repo(repo)
    shards = [tmp_path / f"s{k}" for k in (1, 2)]
    for k, out in enumerate(shards, start=1):
        code, output = run_cli(*eval_args(repo, out, "--shard", f"{k}/2"))
        assert code == 0, output
    return shards


@pytest.mark.parametrize(("tamper", "key"), TAMPERED)
def test_a_tampered_eval_shard_budget_exits_2_naming_file_and_key(
    tmp_path: Path, eval_shards: list[Path], tamper: Callable[[dict[str, Any]], None], key: str
) -> None:
    results = eval_shards[0] / "results.json"
    data = json.loads(results.read_text(encoding="utf-8"))
    assert data["budget"]["by_role"]["task"]["calls"] > 0
    tamper(data["budget"])
    results.write_text(json.dumps(data), encoding="utf-8")  # NaN and Infinity written as JSON allows them
    code, output = run_cli("merge", *map(str, eval_shards), "--out", str(tmp_path / "merged"))
    assert code == 2, output
    assert_clean(output)
    assert f"{results}:{key}" in output, output
    assert "nan s" not in output
    assert not (tmp_path / "merged" / "results.json").exists()


def test_untampered_shards_still_merge(tmp_path: Path, eval_shards: list[Path]) -> None:
    code, output = run_cli("merge", *map(str, eval_shards), "--out", str(tmp_path / "merged"))
    assert code == 0, output
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())["budget"]
    assert merged["calls"] == 2 * N_ITEMS and merged["by_role"]["task"]["cached_calls"] == 0


def test_a_tampered_check_shard_budget_exits_2_naming_file_and_key(tmp_path: Path, scripted: ScriptedBackend) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    base = make_repo(repo)
    shards = [tmp_path / f"c{k}" for k in (1, 2)]
    for k, out in enumerate(shards, start=1):
        args = ["check", "--base", base, "--repo", str(repo), "--out", str(out), "--no-comment", "--shard", f"{k}/2"]
        code, output = run_cli(*args, *MODELS)
        assert code == 0, output
    summary = shards[1] / "check.json"
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert data["budget"]
    data["budget"]["by_role"] = {"task": {**data["budget"]["by_role"]["task"], "cost_usd": "free"}}
    summary.write_text(json.dumps(data), encoding="utf-8")
    code, output = run_cli("merge", *map(str, shards), "--out", str(tmp_path / "merged"), "--no-comment")
    assert code == 2, output
    assert_clean(output)
    assert f"{summary}:budget.by_role.task.cost_usd" in output, output
