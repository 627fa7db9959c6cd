"""The pre-merge gate on real git repositories, with a scripted model whose answers depend on the prompt.

The scripted model adds the two numbers in the question correctly, unless the prompt says SLOPPY or
VAGUE, in which case it answers 0. So a head that adds SLOPPY really scores worse, and a head that
drops VAGUE really scores better.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binomtest

from gradgate.app.check_job import run_check
from gradgate.core.config import GateConfig, ModelSpec
from gradgate.core.stats import looks
from gradgate.errors import ModelError
from gradgate.gate.check import decide, spending
from gradgate.models.scripted import ScriptedBackend, last_user_text
from tests.test_changes import commit, git, prompt, write

N_ITEMS = 16
CONFIG = """\
version: 1
prompts: ['prompts/**/*.md']
gate: {min_items: 6, batch_size: 4, max_drop: 0.05, alpha: 0.05}
"""
SUITE = "metrics: [final_number]\nitems:\n" + "".join(
    f"  - {{id: q{n}, vars: {{q: 'What is {n} + {n + 3}?'}}, expected: '{2 * n + 3}'}}\n" for n in range(N_ITEMS)
)


def adder(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
    text = last_user_text(messages)
    if "SLOPPY" in text or "VAGUE" in text:
        return "The answer is 0"
    a, b = (int(x) for x in re.findall(r"(\d+) \+ (\d+)", text)[0])
    return f"The answer is {a + b}"


def backend(script: Callable[[ModelSpec, list[dict[str, str]]], str] = adder) -> ScriptedBackend:
    return ScriptedBackend(script=script)


def make_repo(root: Path, *, regress: bool = True) -> Path:
    """Base commit, then head commit: `worse` made worse (if `regress`), `better` better, `reworded` reworded,
    `same` untouched."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    files = {"gradgate.yaml": CONFIG, ".gitignore": ".gradgate/\n"}
    bodies = {"worse": "Compute {{q}}", "better": "VAGUE {{q}}", "reworded": "Add {{q}}", "same": "Sum {{q}}"}
    for pid, body in bodies.items():
        files[f"prompts/{pid}.md"] = prompt(pid, body)
        files[f"evals/{pid}.yaml"] = SUITE
    write(root, files)
    commit(root, "base")
    write(
        root,
        {
            "prompts/better.md": prompt("better", "Compute exactly {{q}}"),
            "prompts/reworded.md": prompt("reworded", "Please add {{q}}"),
        },
    )
    if regress:
        write(root, {"prompts/worse.md": prompt("worse", "SLOPPY {{q}}")})
    commit(root, "head")
    return root


def gh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    summary.touch()
    output.touch()
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(output),
        **extra,
    }


def outputs(env: dict[str, str]) -> dict[str, str]:
    lines = Path(env["GITHUB_OUTPUT"]).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def check(repo: Path, out: Path, env: dict[str, str], *, be: Any = None, **kwargs: Any) -> Any:
    args: dict[str, Any] = dict(
        repo=repo,
        base_ref="HEAD~1",
        head_ref="HEAD",
        config_path=None,
        prompt_ids=(),
        model=None,
        judge_model=None,
        out_dir=out,
        env=env,
        backend=be or backend(),
    )
    args.update(kwargs)
    return run_check(**args)


def test_verdicts_report_outputs_and_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repo")
    env = gh_env(tmp_path)
    be = backend()
    outcome = check(repo, tmp_path / "out", env, be=be)
    assert outcome.verdicts == {"worse": "regressed", "better": "improved", "reworded": "unchanged"}
    assert outcome.exit_code == 1 and outcome.overall == "regressed"
    assert outcome.summary.unchanged == ("same",)
    assert not any("Sum " in last_user_text(m) for _, m in be.calls)  # untouched prompt never re-run
    by_id = {p.prompt_id: p for p in outcome.summary.prompts}
    worse = by_id["worse"]
    assert (worse.base_mean, worse.head_mean) == (1.0, 0.0)
    assert worse.decision is not None and worse.decision.p_value is not None and worse.decision.p_value < 0.05
    # Sequential: 6 discordant pairs are not enough at the first look's level; 10 are.
    assert worse.stopped_early and worse.items_scored == 10 and worse.items_total == N_ITEMS
    assert worse.calls == 20 and worse.base_calls == 10 and worse.calls_saved == 12
    assert by_id["reworded"].items_scored == 6  # decided at the first look
    # The gate's looks are the power report's schedule (6, 10, 14, 16 items), at the same levels.
    schedule = looks(N_ITEMS, alpha=0.05, min_items=6, batch_size=4, sequential=True)
    assert [x.n for x in schedule] == [6, 10, 14, 16]
    assert worse.looks == 2 and worse.decision.level == schedule[1].level
    reworded = by_id["reworded"].decision
    assert by_id["reworded"].looks == 1 and reworded is not None and reworded.level == schedule[0].level
    # The report, everywhere it goes.
    report = (tmp_path / "out" / "report.md").read_text()
    assert outcome.markdown == report
    assert "| [`worse`](prompts/worse.md) | 1.000 | 0.000 |" in report
    assert "❌ regressed" in report and "✅ improved" in report and "⏩" in report
    assert "Not re-run (effective content unchanged): `same`." in report
    assert Path(env["GITHUB_STEP_SUMMARY"]).read_text().strip() == report.strip()
    assert outputs(env) == {
        "verdict": "regressed",
        "regressed": "1",
        "improved": "1",
        "unchanged": "1",
        "inconclusive": "0",
        "new": "0",
        "report-path": str(tmp_path / "out" / "report.md"),
    }
    stdout = capsys.readouterr().out
    assert "::error file=prompts/worse.md,line=5,title=gradgate%3A prompt regressed::prompt worse regressed" in stdout
    assert "better" not in stdout.split("::error")[1]
    saved = json.loads((tmp_path / "out" / "check.json").read_text())
    assert saved["overall"] == "regressed" and len(saved["prompts"]) == 3


def test_base_scores_are_cached_so_a_rerun_pays_only_for_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    env = gh_env(tmp_path)
    first = check(repo, tmp_path / "out1", env)
    assert {p.prompt_id: p.base_calls for p in first.summary.prompts} == {
        "worse": 10,
        "better": 10,
        "reworded": 6,
    }
    assert "Score cache: 0 of 26 base item scores came from the cache" in first.markdown
    # A warm rerun: nothing is called at all (the response cache answers).
    be = backend()
    again = check(repo, tmp_path / "out2", env, be=be)
    assert be.calls == [] and again.verdicts == first.verdicts
    # Without the response cache, neither side costs anything: per-item scores are kept by content hash.
    for entry in (repo / ".gradgate" / "cache").iterdir():
        if entry.name != "gate-scores":
            shutil.rmtree(entry)
    be = backend()
    third = check(repo, tmp_path / "out3", env, be=be)
    assert be.calls == [] and third.verdicts == first.verdicts
    assert all(p.base_from_score_cache == p.head_from_score_cache == p.items_scored for p in third.summary.prompts)
    assert "Score cache: 26 of 26 base item scores came from the cache (and 26 head item scores)" in third.markdown


def test_after_a_merge_the_next_pull_request_pays_only_for_its_head(tmp_path: Path) -> None:
    """The head scores of one run are the base scores of the next: a later commit on top costs its head only."""
    repo = make_repo(tmp_path / "repo")
    check(repo, tmp_path / "out1", {})  # e.g. the push run on main after the merge
    shutil.rmtree(repo / ".gradgate" / "cache" / "responses", ignore_errors=True)
    for entry in (repo / ".gradgate" / "cache").iterdir():
        if entry.name != "gate-scores":
            shutil.rmtree(entry)
    write(repo, {"prompts/reworded.md": prompt("reworded", "Kindly add {{q}}")})
    commit(repo, "next pull request")
    be = backend()
    outcome = check(repo, tmp_path / "out2", {}, be=be)
    reworded = outcome.summary.prompts[0]
    assert outcome.verdicts == {"reworded": "unchanged"}
    assert reworded.base_calls == 0 and reworded.base_from_score_cache == reworded.items_scored == 6
    assert len(be.calls) == 6 and all("Kindly" in last_user_text(m) for _, m in be.calls)


def test_base_and_head_are_scored_at_once_and_stay_paired_item_by_item(tmp_path: Path) -> None:
    """Calls of both versions overlap (within the concurrency limit); each finishes after a random delay, so
    a pairing by arrival order would mix items up. Base is right on even items, head where n % 3 != 0."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    config = CONFIG.replace("alpha: 0.05}", "alpha: 0.05, sequential: false}") + "models: {concurrency: 3}\n"
    write(root, {"gradgate.yaml": config, "prompts/p.md": prompt("p", "BASE {{q}}"), "evals/p.yaml": SUITE})
    commit(root, "base")
    write(root, {"prompts/p.md": prompt("p", "HEAD {{q}}")})
    commit(root, "head")
    rng = random.Random(7)
    in_flight: list[str] = []
    overlaps: list[tuple[int, bool]] = []

    class Slow(ScriptedBackend):
        async def complete(self, spec: ModelSpec, messages: list[dict[str, str]], **kwargs: Any) -> Any:
            text = last_user_text(messages)
            side = "base" if text.startswith("BASE") else "head"
            in_flight.append(side)
            overlaps.append((len(in_flight), len(set(in_flight)) == 2))
            await asyncio.sleep(rng.random() / 200)
            in_flight.remove(side)
            return await super().complete(spec, messages, **kwargs)

    def script(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
        text = last_user_text(messages)
        n = int(re.findall(r"What is (\d+) \+", text)[0])
        right = n % 2 == 0 if text.startswith("BASE") else n % 3 != 0
        return f"The answer is {2 * n + 3 if right else -1}"

    outcome = check(root, tmp_path / "out", {}, be=Slow(script=script))
    p = outcome.summary.prompts[0]
    assert max(size for size, _ in overlaps) == 3  # never above models.concurrency
    assert any(both for _, both in overlaps)  # base and head calls were in flight together
    regressions = sum(1 for n in range(N_ITEMS) if n % 2 == 0 and n % 3 == 0)
    improvements = sum(1 for n in range(N_ITEMS) if n % 2 == 1 and n % 3 != 0)
    assert p.decision is not None and p.decision.n == N_ITEMS
    assert p.decision.p_value == pytest.approx(binomtest(regressions, regressions + improvements, 0.5).pvalue)
    assert p.decision.mean_diff == pytest.approx((improvements - regressions) / N_ITEMS)
    assert (p.base_calls, p.calls) == (N_ITEMS, 2 * N_ITEMS)


def test_no_fail_on_regression_and_no_sequential(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "gradgate.yaml").write_text(CONFIG.replace("alpha: 0.05}", "alpha: 0.05, sequential: false}"))
    outcome = check(repo, tmp_path / "out", {}, head_ref=None, fail_on_regression=False)
    assert outcome.exit_code == 0 and outcome.overall == "regressed"
    assert all(p.items_scored == N_ITEMS and not p.stopped_early and p.looks == 1 for p in outcome.summary.prompts)


def test_no_changes_costs_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    be = backend()
    outcome = check(repo, tmp_path / "out", gh_env(tmp_path), be=be, base_ref="HEAD", head_ref=None)
    assert outcome.exit_code == 0 and outcome.overall == "no-changes" and be.calls == []
    assert "no prompt changed" in outcome.markdown


def test_new_prompt_is_scored_on_head_only_and_is_not_a_regression(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", regress=False)
    write(repo, {"prompts/fresh.md": prompt("fresh", "SLOPPY {{q}}"), "evals/fresh.yaml": SUITE})
    outcome = check(repo, tmp_path / "out", {}, head_ref=None, prompt_ids=("fresh",))
    assert outcome.verdicts == {"fresh": "new"} and outcome.exit_code == 0 and outcome.overall == "no-changes"
    fresh = outcome.summary.prompts[0]
    assert fresh.head_mean == 0.0 and fresh.items_scored == N_ITEMS and fresh.base_mean is None


def test_bad_ref_is_exit_2_with_the_summary_written(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    env = gh_env(tmp_path)
    outcome = check(repo, tmp_path / "out", env, base_ref="no-such-branch")
    assert outcome.exit_code == 2 and outcome.overall == "error"
    assert "does not name a commit" in (outcome.error or "")
    assert "fetch-depth: 0" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert outputs(env)["verdict"] == "error"


def test_budget_exhausted_before_a_decision_is_exit_3(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", regress=False)
    # The budget is not part of any prompt's effective content, so only `better` and `reworded` re-run.
    (repo / "gradgate.yaml").write_text(CONFIG + "budget: {max_calls: 5}\n")
    env = gh_env(tmp_path)
    outcome = check(repo, tmp_path / "out", env, head_ref=None)
    assert outcome.exit_code == 3
    assert all(p.infra_failure for p in outcome.summary.prompts)
    assert "budget ran out" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()


def test_model_failure_is_exit_3_with_the_summary_written(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")

    def broken(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
        raise ModelError("the model server refused the connection", hint="start it")

    env = gh_env(tmp_path)
    outcome = check(repo, tmp_path / "out", env, be=backend(broken))
    assert outcome.exit_code == 3 and "refused the connection" in (outcome.error or "")
    assert "refused the connection" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()


def test_repeats_score_distinct_samples(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", regress=False)
    (repo / "gradgate.yaml").write_text(CONFIG.replace("alpha: 0.05}", "alpha: 0.05, repeats: 3}"))
    outcome = check(repo, tmp_path / "out", {}, head_ref=None, prompt_ids=("better",))
    better = outcome.summary.prompts[0]
    # The config change re-runs the prompt; each item is scored 3 times in each version.
    assert better.calls == 3 * 2 * better.items_scored
    assert better.noise is not None and better.noise.base_flip_rate == better.noise.head_flip_rate == 0.0


def test_flip_rates_per_item_and_per_side(tmp_path: Path) -> None:
    """A model that answers q3 and q5 right only on every other call of the head: those items flip."""
    repo = make_repo(tmp_path / "repo", regress=False)
    (repo / "gradgate.yaml").write_text(CONFIG.replace("alpha: 0.05}", "alpha: 0.05, repeats: 2, sequential: false}"))
    seen: dict[str, int] = {}

    def flaky(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
        text = last_user_text(messages)
        seen[text] = seen.get(text, 0) + 1
        if text.startswith("Compute exactly") and re.search(r"What is (3|5) \+", text) and seen[text] % 2 == 0:
            return "The answer is 0"
        return adder(spec, messages)

    outcome = check(repo, tmp_path / "out", {}, head_ref=None, prompt_ids=("better",), be=backend(flaky))
    noise = outcome.summary.prompts[0].noise
    assert noise is not None and noise.repeats == 2
    # Base: VAGUE answers 0 every time, no flips; head: 2 of 16 items flip on every pair of repeats.
    assert noise.base_flip_rate == 0.0 and noise.head_flip_rate == pytest.approx(2 / N_ITEMS)
    assert {item for item, _, _ in noise.flaky} == {"q3", "q5"} and noise.flaky_items == 2
    assert all(head == 1.0 and base == 0.0 for _, base, head in noise.flaky)
    assert "flip rate over 2 repeats: base 0.000, head 0.125; flaky items (base/head): q" in outcome.markdown


def test_inconclusive_says_how_many_items_would_decide(tmp_path: Path) -> None:
    """A head worse on 3 of 16 items: not enough to decide; the report says what would be."""
    repo = make_repo(tmp_path / "repo", regress=False)

    def slightly_worse(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
        text = last_user_text(messages)
        if text.startswith("Please add") and re.search(r"What is (1|2|4) \+", text):
            return "The answer is 0"
        return adder(spec, messages)

    outcome = check(repo, tmp_path / "out", {}, prompt_ids=("reworded",), be=backend(slightly_worse))
    reworded = outcome.summary.prompts[0]
    assert reworded.verdict == "inconclusive" and reworded.items_scored == N_ITEMS
    power = reworded.power
    assert power is not None and power.needed_items is not None and power.needed_items > N_ITEMS
    needed = power.needed_items
    assert f"undecided: about {needed} paired items would decide the observed change (the suite has 16: add {needed - 16})" in (
        outcome.markdown
    )
    assert "this suite can detect a drop of 0.500 or more (exact McNemar, 16 items" in outcome.markdown


def test_spending_function() -> None:
    values = [spending(t / 10, 0.05) for t in range(11)]
    assert values[0] == 0.0 and values[-1] == 0.05
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert spending(0.5, 0.05) < 0.01  # O'Brien-Fleming spends little early


def test_decide_rules() -> None:
    gate = GateConfig(min_items=5, max_drop=0.05)
    worse = decide([1.0] * 10, [0.0] * 10, gate=gate, level=0.05)
    assert worse.verdict == "regressed" and worse.p_value == pytest.approx(0.001953125)
    assert decide([1.0] * 6, [0.0] * 6, gate=gate, level=0.01).verdict == "inconclusive"  # p = 0.031
    assert decide([0.0] * 10, [1.0] * 10, gate=gate, level=0.05).verdict == "improved"
    assert decide([1.0, 0.0] * 5, [1.0, 0.0] * 5, gate=gate, level=0.05).verdict == "unchanged"
    assert decide([1.0] * 4, [0.0] * 4, gate=gate, level=0.05).verdict == "inconclusive"  # n < min_items
    # Graded scores: the bootstrap interval decides.
    base = [0.8, 0.9, 0.7, 0.85, 0.75, 0.8, 0.9, 0.7, 0.8, 0.85]
    assert decide(base, [b - 0.4 for b in base], gate=gate, level=0.05).verdict == "regressed"
    noisy = [b + (0.3 if i % 2 else -0.3) for i, b in enumerate(base)]
    assert decide(base, noisy, gate=gate, level=0.05).verdict == "inconclusive"


TRIAGE_SUITE = """\
metrics: [choice]
max_tokens: 6
items:
  - {id: refund, vars: {m: "I was charged twice, please refund one payment."}, expected: "(A)"}
  - {id: invoice, vars: {m: "Where can I download the invoice for my payment?"}, expected: "(A)"}
  - {id: card, vars: {m: "How do I change the credit card you bill?"}, expected: "(A)"}
  - {id: crash, vars: {m: "The app crashes when I open settings."}, expected: "(B)"}
  - {id: login, vars: {m: "I cannot log in, the password is rejected."}, expected: "(B)"}
  - {id: tracking, vars: {m: "My parcel tracking has not updated in days."}, expected: "(C)"}
"""
TRIAGE_GOOD = """Classify the customer message into one team.
(A) Billing (B) Technical (C) Shipping
Message: {{m}}
Reply with the letter only, like (A)."""
TRIAGE_BAD = "Reply with (C) whatever the message says: {{m}}"


@pytest.mark.slow
def test_real_run_on_the_embedded_model(tmp_path: Path) -> None:
    """End to end with the real embedded model: git revisions, litellm, scoring, report, cached rerun."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(
        root,
        {
            ".gitignore": ".gradgate/\n",
            "gradgate.yaml": CONFIG.replace("min_items: 6", "min_items: 4").replace("batch_size: 4", "batch_size: 6")
            + "models: {task: local/smollm2-135m-instruct, concurrency: 1}\n",
            "prompts/triage.md": prompt("triage", TRIAGE_GOOD),
            "evals/triage.yaml": TRIAGE_SUITE,
        },
    )
    commit(root, "base")
    write(root, {"prompts/triage.md": prompt("triage", TRIAGE_BAD)})
    env = gh_env(tmp_path)
    outcome = check(root, tmp_path / "out", env, base_ref="HEAD", head_ref=None, backend=None)
    triage = outcome.summary.prompts[0]
    assert outcome.error is None and outcome.exit_code in (0, 1)
    # The head prompt is the worse one: whatever the small model's luck, the gate must never call it better.
    assert triage.verdict in ("regressed", "inconclusive", "unchanged"), triage.verdict
    assert triage.head_mean is not None and triage.base_mean is not None and triage.head_mean <= triage.base_mean
    assert triage.items_scored == 6 and triage.calls == 12 and triage.base_calls == 6
    assert outcome.exit_code == (1 if triage.verdict == "regressed" else 0)
    assert "| [`triage`](prompts/triage.md) |" in (tmp_path / "out" / "report.md").read_text()
    again = check(root, tmp_path / "out2", env, base_ref="HEAD", head_ref=None, backend=None)
    assert again.summary.prompts[0].calls == 0 and again.verdicts == outcome.verdicts
