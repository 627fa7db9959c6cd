"""Plumbing of the optimizer shoot-out (bench/optimizers.py) with a scripted model: task loading, one split for
every method, budgets, the replay cache and the JSON/Markdown output. The real run is documented in the README."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.optimizers import parser, run_benchmark
from bench.shootout.dspy_methods import copro_shape
from bench.shootout.report import decide
from bench.shootout.tasks import bench_config, body_for, build_task, read_rows

from gradgate.core.config import ModelSpec
from gradgate.core.suites import split_items
from gradgate.errors import ConfigError
from gradgate.models.scripted import ScriptedBackend, last_user_text

HAS_DSPY = importlib.util.find_spec("dspy") is not None and importlib.util.find_spec("optuna") is not None
REPO_ROOT = Path(__file__).resolve().parents[1]

# DSPy's chat adapter lists the fields it wants back in its system message.
_DSPY_FIELDS = re.compile(r"Your output fields are:\n(.*?)(?:\n\n|\Z)", re.DOTALL)


def _expression(i: int) -> tuple[str, str]:
    a, b = bool(i % 2), bool(i % 3)
    return f"not ( {a} ) and ( {b} ) is", str((not a) and b)


@pytest.fixture
def bbh_file(tmp_path: Path) -> Path:
    examples = [{"input": _expression(i)[0] + f" [{i}]", "target": _expression(i)[1]} for i in range(24)]
    path = tmp_path / "tiny_bool.json"
    path.write_text(json.dumps({"canary": "test", "examples": examples}), encoding="utf-8")
    return path


def script(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    fields = _DSPY_FIELDS.search(system)
    if fields:  # a DSPy request: answer every output field it asks for
        names = re.findall(r"`(\w+)`", fields.group(1))
        return (
            "\n\n".join(f"[[ ## {n} ## ]]\nEvaluate the Boolean expression step by step." for n in names)
            + "\n\n[[ ## completed ## ]]"
        )
    return "<prompt>Evaluate the Boolean expression carefully.\n\n{{input}}</prompt>"


def option_scores(messages: list[dict[str, str]], options: list[str]) -> list[float]:
    # A "model" that answers right only when the prompt says "carefully" or "step by step", or shows a worked
    # example, so wording and demonstrations matter.
    text = last_user_text(messages)
    good = "carefully" in text or "step by step" in text or "\nAnswer: " in text
    expr = text.strip().rsplit("\n", 1)[-1].split(" [")[0].removesuffix(" is")
    try:
        answer = str(eval(expr.replace("( ", "(").replace(" )", ")")))
    except SyntaxError:
        answer = "True"
    pick = answer if good else "True"
    return [1.0 if o == pick else 0.0 for o in options]


def _args(bbh_file: Path, tmp_path: Path, methods: str, budget: int = 60) -> Any:
    return parser().parse_args(
        [
            "--task",
            str(bbh_file),
            "--methods",
            methods,
            "--budget-calls",
            str(budget),
            "--train",
            "6",
            "--dev",
            "6",
            "--test",
            "8",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )


def test_task_loading_writes_a_suite_and_an_exact_split(bbh_file: Path, tmp_path: Path) -> None:
    config = bench_config(
        task_model="local/smollm2-135m-instruct",
        optimizer_model="local/smollm2-135m-instruct",
        seed=3,
        sizes=(6, 6, 8),
        cache_dir="cache",
    )
    task = build_task(
        str(bbh_file),
        repo_root=REPO_ROOT,
        work_dir=tmp_path / "repo",
        sizes=(6, 6, 8),
        seed=3,
        task_model="local/smollm2-135m-instruct",
        config=config,
    )
    assert (task.name, task.scoring, task.options, task.metric) == ("tiny_bool", "loglik", ("False", "True"), "normalized")
    assert (len(task.splits.train), len(task.splits.dev), len(task.splits.test)) == (6, 6, 8)
    # The runner splits with the config's fractions; it must get exactly these items.
    again = split_items(task.target.suite.items, seed=3, train=config.optimize.split.train, dev=config.optimize.split.dev)
    assert again == task.splits
    assert task.target.prompt.body == body_for(task.instruction)
    assert task.target.prompt.variables == ["input"]
    assert task.target.suite.spec.scoring.mode == "loglik"
    # Generating API models get an extraction-tolerant metric instead of loglik.
    generated = build_task(
        str(bbh_file),
        repo_root=REPO_ROOT,
        work_dir=tmp_path / "repo2",
        sizes=(6, 6, 8),
        seed=3,
        task_model="openai/gpt-4o-mini",
        config=config,
    )
    assert (generated.scoring, generated.metric) == ("generate", "contains")


def test_bad_task_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"examples": [{"question": "x"}]}', encoding="utf-8")
    with pytest.raises(ConfigError, match="needs `input` and `target`"):
        read_rows(bad)
    with pytest.raises(ConfigError, match="neither a known task"):
        build_task(
            str(tmp_path / "missing.json"),
            repo_root=REPO_ROOT,
            work_dir=tmp_path / "r",
            sizes=(1, 1, 1),
            seed=0,
            task_model="local/smollm2-135m-instruct",
            config=bench_config(task_model="local/x", optimizer_model="local/x", seed=0, sizes=(1, 1, 1), cache_dir="c"),
        )


def test_gsm8k_rows_keep_the_final_answer(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "so 1+1=2\n#### 2"}) + "\n", encoding="utf-8")
    assert read_rows(path) == [{"input": "1+1?", "target": "2"}]


def test_decision_rule_and_copro_shape() -> None:
    improved, text, diff, p = decide([0.0] * 20, [1.0] * 20, alpha=0.1, margin=0.0, resamples=200, seed=0)
    assert improved and diff is not None and diff.mean == 1.0 and p is not None and p < 0.01, text
    improved, text, _, _ = decide([0.0, 1.0] * 5, [1.0, 0.0] * 5, alpha=0.1, margin=0.0, resamples=200, seed=0)
    assert not improved and "not better" in text
    breadth, depth = copro_shape(180, 20)
    assert breadth * depth * 20 + 2 * ((breadth - 1) + breadth * (depth - 1)) <= 180
    assert (breadth, depth) == (4, 2)


def test_gradsum_run_writes_json_and_markdown_and_reruns_identically(bbh_file: Path, tmp_path: Path) -> None:
    backend = ScriptedBackend(script, option_scores=option_scores)
    args = _args(bbh_file, tmp_path, "gradsum")
    json_path, md_path, rows = run_benchmark(args, backend=backend, command="bench test")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert [r["method"] for r in data["rows"]] == ["initial prompt", "gradsum"]
    assert data["split"] == {"train": 6, "dev": 6, "test": 8}
    assert data["wall_seconds"] > 0 and data["methods"] == ["gradsum"]  # what this invocation ran, and how long
    assert sorted(data["split_ids"]["test"]) == sorted(data["rows"][0]["scores"])
    gradsum = data["rows"][1]
    assert gradsum["calls"] <= 60, "the search stays within the shared budget"
    assert ("carefully" in gradsum["prompt"] or "step by step" in gradsum["prompt"]) and gradsum["test"]["mean"] == 1.0
    assert data["rows"][0]["test"]["mean"] < 1.0
    markdown = md_path.read_text(encoding="utf-8")
    assert "| gradsum | 1.000" in markdown and "Command: `bench test`" in markdown
    # A rerun is answered by the replay cache but counts the same calls and gives the same table.
    calls_before = len(backend.calls)
    again = ScriptedBackend(script, option_scores=option_scores)
    _, _, rows_again = run_benchmark(_args(bbh_file, tmp_path, "gradsum"), backend=again, command="bench test")
    assert again.calls == [] and calls_before > 0
    assert [(r.calls, r.test) for r in rows_again] == [(r.calls, r.test) for r in rows]
    # Rerunning another method alone keeps gradsum's row (same split, seed and budget) and says so.
    run_benchmark(_args(bbh_file, tmp_path, "demos"), backend=again, command="bench test")
    merged = json.loads(json_path.read_text(encoding="utf-8"))
    assert [r["method"] for r in merged["rows"]] == ["initial prompt", "gradsum", "demos"]
    assert merged["rows_from_an_earlier_run"] == ["gradsum"]
    same = ("prompt", "test", "scores", "calls", "tokens", "improved", "difference")  # not the wall seconds
    assert {k: merged["rows"][1][k] for k in same} == {k: gradsum[k] for k in same}
    assert "| gradsum | 1.000" in md_path.read_text(encoding="utf-8")
    # Another seed is another benchmark: nothing is kept.
    other = _args(bbh_file, tmp_path, "demos")
    other.seed = 4
    run_benchmark(other, backend=again, command="bench test")
    assert [r["method"] for r in json.loads(json_path.read_text(encoding="utf-8"))["rows"]] == ["initial prompt", "demos"]


@pytest.mark.skipif(not HAS_DSPY, reason="dspy (and optuna) not installed")
@pytest.mark.parametrize("method", ["dspy-copro", "dspy-miprov2", "dspy-miprov2-demos", "dspy-gepa", "dspy-bootstrap-rs"])
def test_dspy_methods_use_the_same_split_scorer_and_budget(bbh_file: Path, tmp_path: Path, method: str) -> None:
    backend = ScriptedBackend(script, option_scores=option_scores)
    _, _, rows = run_benchmark(_args(bbh_file, tmp_path, method, budget=80), backend=backend, command="bench test")
    row = rows[1]
    assert row.method == method and row.error is None, row.error
    assert row.calls is not None and 0 < row.calls <= 80
    assert ("step by step" in row.prompt or "\nAnswer: " in row.prompt) and row.prompt.endswith("{{input}}\n")
    assert row.test is not None and row.test.mean == 1.0
    data = json.loads((tmp_path / "out" / "optimizers-tiny_bool.json").read_text(encoding="utf-8"))
    extra = data["rows"][1]["extra"]
    # BootstrapFewShotWithRandomSearch only runs the program (gradgate's scorer): no LM call of its own
    assert extra["dspy_lm_calls"] > 0 or method == "dspy-bootstrap-rs"
    # DSPy scored only train/dev items of the shared split, never test ones, through gradgate's scorer.
    seen = set(extra["scored_item_ids"])
    assert seen and seen <= set(data["split_ids"]["train"]) | set(data["split_ids"]["dev"])
    assert set(data["split_ids"]["dev"]) <= seen


@pytest.mark.skipif(not HAS_DSPY, reason="dspy not installed")
def test_lenient_adapter_takes_the_whole_reply_when_markers_are_missing() -> None:
    import dspy
    from bench.shootout.dspy_methods import lenient_adapter

    signature = dspy.Signature("basic_instruction -> proposed_instruction, prefix")
    parsed = lenient_adapter().parse(signature, "[[ ## prefix ## ]]\nAnswer:\nBe precise and check each step.")
    assert parsed == {
        "prefix": "Answer:\nBe precise and check each step.",
        "proposed_instruction": "Answer:\nBe precise and check each step.",
    }
    assert lenient_adapter().parse(signature, "Just do it.") == {"proposed_instruction": "Just do it.", "prefix": "Just do it."}


def test_demos_and_portfolio_rows_share_the_budget_and_write_demonstrations(bbh_file: Path, tmp_path: Path) -> None:
    backend = ScriptedBackend(script, option_scores=option_scores)
    args = _args(bbh_file, tmp_path, "demos,portfolio", budget=80)
    json_path, _, rows = run_benchmark(args, backend=backend, command="bench test")
    initial, demos, portfolio = rows
    # The run's wall time spans every method's search, not only the last one's (three values rounded to 0.1 s).
    wall = json.loads(json_path.read_text(encoding="utf-8"))["wall_seconds"]
    assert wall >= (demos.seconds or 0) + (portfolio.seconds or 0) - 0.15
    assert demos.error is None and portfolio.error is None, (demos.error, portfolio.error)
    assert "<!-- gradgate:demos -->" in demos.prompt and "\nAnswer: " in demos.prompt
    assert demos.test is not None and demos.test.mean == 1.0 > (initial.test.mean if initial.test else 1.0)
    assert demos.calls is not None and demos.calls <= 80
    assert portfolio.calls is not None and 0 < portfolio.calls <= 80  # one budget for both members
    assert portfolio.extra["winner"] in ("demos", "gradsum") and set(portfolio.extra["member_calls"]) == {"demos", "gradsum"}
    assert portfolio.test is not None and portfolio.test.mean == 1.0


def test_the_search_mark_counts_phases_an_optimizer_opens_inside_the_search() -> None:
    """GReaTer holds back the dev calls in a phase of its own: the search's spend is still the end of depth 1."""
    from bench.shootout.replay import PhaseBudget

    from gradgate.core.budget import Holdback
    from gradgate.core.config import BudgetConfig

    budget = PhaseBudget(BudgetConfig(max_calls=100))
    assert budget.search_mark()["calls"] == 0  # no phase has ended yet: now
    # The runner's search, its cost holdback inside it, then an optimizer's own phase, then dev scoring after it.
    with budget.phase(Holdback(calls=30)), budget.phase(Holdback(calls=5)):
        with budget.phase(Holdback(calls=20)):
            budget.charge("optimizer", 10, 0, 0)
        budget.charge("task", 15, 0, 0)
    with budget.phase(Holdback()):  # the confirmation
        budget.charge("task", 30, 0, 0)
    assert [m["depth"] for m in budget.marks] == [3, 2, 1, 1]
    assert budget.search_mark()["calls"] == 25


def test_the_recorded_command_names_no_path_of_this_machine() -> None:
    from bench.shootout.report import portable_command

    argv = ["--task", "/data/shared/bbh/navigate.json", "--out", "/tmp/x", "--cache-dir=/tmp/c", "--methods", "greater"]
    assert portable_command("python bench/optimizers.py", argv) == "python bench/optimizers.py --task navigate --methods greater"
    assert portable_command("p", ["--task=/a/b/web_of_lies.json", "--seed", "1"]) == "p --task=web_of_lies --seed 1"


def test_summary_says_when_a_task_ran_only_some_rows() -> None:
    from bench.shootout_summary import table

    def row(method: str, mean: float, improved: bool = False) -> dict[str, Any]:
        return {"method": method, "test": {"mean": mean}, "difference": {"mean": mean - 0.5}, "improved": improved}

    full = {
        "task": "full",
        "rows": [row("initial prompt", 0.5), *(row(m, 0.5) for m in ("gradsum", "gpo", "greater", "demos", "portfolio"))]
        + [row(m, 0.4) for m in ("dspy-miprov2", "dspy-miprov2-demos", "dspy-copro", "dspy-gepa", "dspy-bootstrap-rs")],
    }
    partial = {"task": "part", "rows": [row("initial prompt", 0.5), row("demos", 0.6, True), row("dspy-gepa", 0.7)]}
    text = table([full, partial])
    assert "| full | gradsum (0.500) | no | yes |" in text
    assert "| part | demos (0.600) | yes | no (1 of 5 gradgate, 1 of 5 DSPy rows run) |" in text
    assert "| gpo | +0.000 | — |" in text  # a method a task did not run is a dash, not a zero


def test_label_prior_reads_prior_and_signal_apart() -> None:
    from bench.label_prior import best_shift, describe

    options = ("False", "True")
    # Every item leans to "False" by 2 nats; the true items lean 1 nat less: a prior that hides a perfect signal.
    gold = ["True", "False", "True", "False"]
    scores = [[0.0, -1.0], [0.0, -2.0], [0.0, -1.0], [0.0, -2.0]]
    row = describe("p", scores, gold, options, fit=scores)
    assert row["accuracy"] == 0.5 and row["predicted"] == {"False": 4} and row["majority_share"] == 1.0
    assert row["auc"] == 1.0 and row["best_shift"] == 1.0
    assert row["calibrated"] == 1.0  # the mean over the fit items sits between the two groups
    # No signal: margins unrelated to the answer, so no threshold beats the majority label.
    assert sum(best_shift([1.0, 1.0, 2.0, 2.0], [True, False, True, False])) == 2  # of 4: the majority label's share
    flat = describe("q", [[0.0, -1.0], [0.0, -1.0]], ["True", "False"], options, fit=[[0.0, -1.0]])
    assert flat["auc"] == 0.5 and flat["best_shift"] == 0.5


def test_the_dspy_loop_closes_without_a_pending_task_traceback() -> None:
    """litellm leaves a logging worker waiting on the bench's event loop; closing the loop cancels it first, as
    asyncio.run does, instead of Python printing "Task was destroyed but it is pending!" and a traceback at exit."""
    script = (
        "import asyncio, gc\n"
        "from bench.shootout.dspy_methods import LoopThread\n"
        "loop = LoopThread()\n"
        "async def leave_a_waiting_task():\n"
        "    asyncio.get_running_loop().create_task(asyncio.Queue().get())\n"
        "loop.run(leave_a_waiting_task())\n"
        "loop.close()\n"
        "del loop\n"
        "gc.collect()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Task was destroyed" not in done.stderr and "Traceback" not in done.stderr, done.stderr
