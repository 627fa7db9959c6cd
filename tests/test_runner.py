"""The shared runner: budget stop and hold-back, test confirmation, the job's artifacts, a real run."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gradgate.app.optimize_job import branch_for, run_optimize_job
from gradgate.core.config import parse_config
from gradgate.core.discovery import discover
from gradgate.core.prompts import load_prompt
from gradgate.errors import ConfigError, UsageError
from gradgate.models.scripted import ScriptedBackend
from gradgate.models.session import Session
from gradgate.optimizers.base import OptimizeContext, Optimizer
from gradgate.optimizers.gradsum.prompts import GRADIENT_SYSTEM
from gradgate.optimizers.runner import run_optimization
from tests.test_gradsum import GOOD, HALF, LOST, Script, make_repo, open_session, optimize, sequence_editor

SEARCH = {"iterations": 10, "beam_width": 1, "candidates_per_prompt": 2}


def test_a_budget_stop_keeps_the_best_so_far_and_still_confirms_on_test(tmp_path: Path) -> None:
    script = Script(sequence_editor(HALF, GOOD))
    result, session = optimize(make_repo(tmp_path / "repo"), script, tmp_path / "out", SEARCH, budget={"max_calls": 60})
    assert session.budget.calls <= 60  # never exceeded, the confirmation included
    assert result.stopped_reason and "60 calls" in result.stopped_reason
    assert result.best.text.startswith("GOOD")
    assert result.test_original is not None and result.test_best is not None  # the held-back calls were there
    assert result.improved and result.test_used == "mcnemar-exact" and result.p_value is not None
    assert result.usage.calls == session.budget.calls and result.budget["calls"] == session.budget.calls


@pytest.mark.parametrize("limit", [1, 17, 25, 40, 59])
def test_no_limit_is_ever_exceeded(tmp_path: Path, limit: int) -> None:
    script = Script(sequence_editor(HALF, GOOD))
    session = open_session(make_repo(tmp_path / "repo"), script, budget={"max_calls": limit})
    target = discover(session.repo, session.config)[0]
    try:
        result = asyncio.run(run_optimization(session, target, "gradsum", out_dir=tmp_path / "out", seed=0, settings=SEARCH))
    except Exception as exc:  # only "nothing could be scored" may end without a result
        assert "before the original prompt was scored" in str(exc)
    else:
        assert result.stopped_reason
    assert session.budget.calls <= limit


def test_decision_needs_statistical_support_and_the_margin(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    one = {"iterations": 1, "beam_width": 1, "candidates_per_prompt": 1}
    half, _ = optimize(repo, Script(sequence_editor(HALF)), tmp_path / "a", one)
    # HALF answers the even items: 4 of the 6 test items (q8, q14, q18, q10) flip to correct, exact McNemar
    # p = 2 / 2**4 = 0.125, not below alpha 0.1
    assert half.p_value == pytest.approx(0.125)
    assert not half.improved and "without statistical support" in half.decision
    margin, _ = optimize(repo, Script(sequence_editor(HALF)), tmp_path / "b", one, optimize={"margin": 0.7})
    assert not margin.improved and "margin" in margin.decision
    loose, _ = optimize(repo, Script(sequence_editor(GOOD)), tmp_path / "c", one)
    # 6 test items all flip to correct: p = 2 / 2**6 = 0.03125 < 0.1
    assert loose.improved and "beats the original" in loose.decision and loose.p_value == pytest.approx(0.03125)
    assert loose.difference is not None and loose.difference.mean == 1.0
    assert loose.dev_original is not None and loose.dev_best is not None and loose.dev_best.mean == 1.0


def test_a_suite_too_small_to_decide_anything_is_refused_before_any_call(tmp_path: Path) -> None:
    """12 items split 6/3/3: even a prompt right on all 3 test items has p = 0.25; the refusal says what is needed."""
    script = Script(sequence_editor(GOOD))
    with pytest.raises(ConfigError) as small:
        run_job(make_repo(tmp_path / "small", n_items=12), script, tmp_path / "a", methods=["gradsum"])
    message = str(small.value)
    assert "12 items split 6/3/3" in message and "alpha 0.1 needs at least 5" in message
    assert "at least 17" in (small.value.hint or "") and small.value.exit_code == 2
    # 24 items leave 6 test items: enough for alpha 0.1, not for alpha 0.01 (8 test items, 29 in all)
    with pytest.raises(ConfigError, match=r"alpha 0\.01 needs at least 8") as strict:
        run_job(make_repo(tmp_path / "strict"), script, tmp_path / "b", methods=["gradsum"], optimize={"alpha": 0.01})
    assert "at least 29" in (strict.value.hint or "")
    with pytest.raises(ConfigError, match="can never be beaten"):
        run_job(make_repo(tmp_path / "margin"), script, tmp_path / "c", methods=["gradsum"], optimize={"margin": 1.0})
    assert sum(len(v) for v in script.asked.values()) == 0


def test_scale_scores_use_the_paired_bootstrap(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    suite = repo / "evals" / "qa.yaml"
    suite.write_text(suite.read_text().replace("metrics: [normalized]", "metrics: [judge]\njudge: {scale: 1-10}"))
    script = Script(sequence_editor(GOOD))

    def judge(messages: list[dict[str, str]]) -> str:
        output = messages[1]["content"].split("Output to evaluate:")[1]
        return "Looks right.\nSCORE: 9" if "\n0\n" not in output else "Wrong number.\nSCORE: 2"

    original_call = script.__call__

    def routed(spec: Any, messages: list[dict[str, str]]) -> str:
        return judge(messages) if spec.model == "fake/judge" else original_call(spec, messages)

    session = Session.open(
        repo,
        parse_config(
            {
                "models": {
                    "task": "fake/task",
                    "judge": "fake/judge",
                    "optimizer": "fake/optimizer",
                    "editor": "fake/editor",
                },
                "optimize": {"alpha": 0.1},
            },
            "t",
        ),
        backend=ScriptedBackend(routed),
        use_cache=False,
        roles=("task", "judge", "optimizer", "editor"),
    )
    target = discover(repo, session.config)[0]
    result = asyncio.run(
        run_optimization(
            session,
            target,
            "gradsum",
            out_dir=tmp_path / "out",
            seed=0,
            settings={"iterations": 1, "beam_width": 1, "candidates_per_prompt": 1},
        )
    )
    assert result.test_used == "paired-bootstrap" and result.p_value is None
    assert result.improved and result.difference is not None and result.difference.mean == pytest.approx(7 / 9)
    # the judge's explanation reached the gradient request
    assert any("Wrong number." in m[1]["content"] for m in script.asked["optimizer"] if m[0]["content"] == GRADIENT_SYSTEM)


class Fixed(Optimizer):
    """A method that proposes one fixed candidate: the runner knows nothing about the method."""

    name: ClassVar[str] = "fixed"
    needs_expected: ClassVar[bool] = True

    async def optimize(self, ctx: OptimizeContext) -> None:
        await ctx.evaluate(
            GOOD.removeprefix("<prompt>").removesuffix("</prompt>") + "\n",
            step=1,
            parent="c0000",
            origin="edit",
        )


@pytest.fixture
def fixed_method(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradgate.optimizers import registry

    monkeypatch.setattr(registry, "METHODS", {**registry.METHODS, "fixed": f"{__name__}:Fixed"})


def run_job(repo: Path, script: Script, out: Path, *, methods: list[str], env: dict[str, str] | None = None, **kw: Any) -> Any:
    session = open_session(repo, script, **{k: v for k, v in kw.items() if k in ("budget", "optimize")})
    return asyncio.run(
        run_optimize_job(
            session,
            prompt_ids=(),
            methods=methods,
            out_dir=out,
            seed=0,
            write=kw.get("write", False),
            open_pr=False,
            env=env or {},
        )
    )


def test_the_job_writes_report_gradients_results_and_the_prompt(tmp_path: Path, fixed_method: None) -> None:
    repo = make_repo(tmp_path / "repo")
    before = (repo / "prompts" / "qa.md").read_text()
    out = tmp_path / "out"
    github_output, summary = tmp_path / "gh-output", tmp_path / "summary.md"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(github_output), "GITHUB_STEP_SUMMARY": str(summary)}
    outcome = run_job(
        repo,
        Script(sequence_editor(HALF, LOST)),
        out,
        methods=["gradsum", "fixed"],
        env=env,
        write=True,
        optimize={"gradsum": {"iterations": 1, "beam_width": 1, "candidates_per_prompt": 2}},
    )
    assert outcome.exit_code == 0 and [r.method for r in outcome.results] == ["gradsum", "fixed"]
    fixed = outcome.results[1]
    assert fixed.improved and outcome.written == ("prompts/qa.md",)
    after = (repo / "prompts" / "qa.md").read_text()
    assert after.startswith(before.split("---\n", 2)[0] + "---\n") and after.split("---\n", 2)[2] == fixed.best.text
    assert load_prompt(repo / "prompts" / "qa.md", repo).body == fixed.best.text
    report = (out / "report.md").read_text()
    assert "| qa | gradsum |" in report and "| qa | fixed |" in report and "Budget used" in report
    gradients = (out / "gradients.md").read_text()
    assert "## qa / gradsum" in gradients and "SUMMARY: the prompt should ask" in gradients
    assert "rejected: lost template variable(s): question" in gradients
    data = json.loads((out / "result.json").read_text())
    assert [r["method"] for r in data["results"]] == ["gradsum", "fixed"] and data["results"][1]["improved"]
    assert f"report-path={out / 'report.md'}" in github_output.read_text()
    assert "gradgate optimize" in summary.read_text()


def test_no_result_at_all_exits_3_with_a_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outcome = run_job(
        make_repo(tmp_path / "repo"),
        Script(sequence_editor(GOOD)),
        out,
        methods=["gradsum"],
        budget={"max_calls": 3},
    )
    assert outcome.exit_code == 3 and not outcome.results and outcome.failures
    report = (out / "report.md").read_text()
    assert "before the original prompt was scored" in report and "; raise the budget (gradgate.yaml `budget:`" in report


def test_usage_and_config_errors_come_before_any_call(tmp_path: Path, fixed_method: None) -> None:
    repo = make_repo(tmp_path / "repo")
    suite = repo / "evals" / "qa.yaml"
    suite.write_text(re.sub(r', expected: "\d+"', "", suite.read_text().replace("[normalized]", "[judge]")))
    script = Script(sequence_editor(GOOD))
    with pytest.raises(ConfigError, match="needs an expected answer"):
        run_job(repo, script, tmp_path / "out", methods=["fixed"])
    with pytest.raises(UsageError, match="unknown optimization method"):
        run_job(repo, script, tmp_path / "out", methods=["nope"])
    with pytest.raises(ConfigError, match=r"optimize\.gradsum\.beams: Extra inputs are not permitted"):
        run_job(repo, script, tmp_path / "out", methods=["gradsum"], optimize={"gradsum": {"beams": 2}})
    assert sum(len(v) for v in script.asked.values()) == 0


def test_branch_names_are_stable_valid_and_short() -> None:
    assert branch_for(["qa", "math"]) == branch_for(["math", "qa"]) == "gradgate/tune-math-qa"
    assert branch_for(["a..b"]) == "gradgate/tune-a-b"
    long = branch_for([f"prompt-{i}" for i in range(20)])
    assert len(long) < 80 and long != branch_for([f"prompt-{i}" for i in range(21)])


@pytest.mark.slow
def test_a_real_run_on_the_embedded_model(tmp_path: Path) -> None:
    """GRAD-SUM end to end on the embedded 135M model (a weak rewriter: any outcome is fine, the run must be
    complete, within budget and honest about what it found)."""
    if os.environ.get("GRADGATE_SKIP_SLOW") == "1":
        pytest.skip("GRADGATE_SKIP_SLOW=1")
    repo = tmp_path / "repo"
    make_repo(repo, n_items=20)  # 10/5/5: the fewest test items alpha 0.1 can decide on
    suite = repo / "evals" / "qa.yaml"
    suite.write_text(suite.read_text().replace("metrics: [normalized]", "metrics: [final_number]\nmax_tokens: 16"))
    config = parse_config(
        {
            "models": {"optimizer": {"model": "local/smollm2-135m-instruct", "max_tokens": 48}},
            "budget": {"max_calls": 40, "max_seconds": 240},
            "optimize": {
                "gradsum": {
                    "iterations": 2,
                    "beam_width": 1,
                    "candidates_per_prompt": 1,
                    "train_batch": 3,
                    "max_gradient_items": 2,
                    "gradient_max_tokens": 48,
                    "edit_max_tokens": 64,
                }
            },
        },
        "test",
    )
    session = Session.open(repo, config, roles=("task", "judge", "optimizer", "editor"))
    outcome = asyncio.run(
        run_optimize_job(session, methods=["gradsum"], out_dir=tmp_path / "out", seed=0, write=False, open_pr=False, env={})
    )
    assert outcome.exit_code == 0
    [result] = outcome.results
    assert session.budget.calls <= 40 and result.usage.calls > 5
    assert result.candidates[0].id == "c0000" and result.candidates[0].dev_score is not None
    # the optimizer model wrote gradients for the failing train items (unless nothing failed)
    assert result.gradients or result.candidates[0].dev_score == 1.0
    assert result.improved == ("beats the original" in result.decision)  # the flag and the sentence agree
    assert result.best_is_original == ("nothing to propose" in result.decision)
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "qa" / "gradsum" / "trajectory.json").exists()


def test_a_job_whose_search_the_budget_stopped_still_exits_0_and_says_so(tmp_path: Path) -> None:
    outcome = run_job(
        make_repo(tmp_path / "repo"),
        Script(sequence_editor(HALF, GOOD)),
        tmp_path / "out",
        methods=["gradsum"],
        budget={"max_calls": 60},
        optimize={"gradsum": SEARCH},
    )
    assert outcome.exit_code == 0 and outcome.results[0].improved
    assert "ended the search of qa/gradsum early" in outcome.message
    assert "The search stopped early" in (tmp_path / "out" / "report.md").read_text()


def test_lost_placeholders_are_rejected_by_default_and_repaired_on_request(tmp_path: Path) -> None:
    one = {"iterations": 1, "beam_width": 1, "candidates_per_prompt": 1}
    repo = make_repo(tmp_path / "repo")
    rejected, _ = optimize(repo, Script(sequence_editor(LOST)), tmp_path / "a", one)
    assert [c.rejected for c in rejected.candidates if c.origin != "initial"] == ["lost template variable(s): question"]
    repaired, _ = optimize(repo, Script(sequence_editor(LOST)), tmp_path / "b", one, optimize={"repair_placeholders": True})
    [candidate] = [c for c in repaired.candidates if c.origin != "initial"]
    assert candidate.rejected is None and candidate.dev_score is not None
    assert candidate.text.endswith("Question: {{question}}\n") and "repaired" in (candidate.note or "")


def test_the_report_says_when_a_ranked_answer_follows_a_label_prior(tmp_path: Path, fixed_method: None) -> None:
    from rich.console import Console

    from gradgate.app.progress import print_optimize_table
    from gradgate.core.suites import split_items
    from tests.test_gradsum import config_for

    repo = make_repo(tmp_path / "repo", n_items=60)
    # Ranked options; "True" is right on half of the items.
    items = "\n".join(
        f'  - {{id: q{i}, vars: {{question: "Is {i} a multiple of 2?"}}, expected: "{i % 2 == 0}"}}' for i in range(60)
    )
    (repo / "evals" / "qa.yaml").write_text(f'scoring: {{mode: loglik, options: ["False", "True"]}}\nitems:\n{items}\n')

    def ranked(messages: list[dict[str, str]], options: list[str]) -> list[float]:
        text = messages[-1]["content"]
        if "GOOD" not in text:
            return [1.0, 0.0]  # the original answers "False" whatever the input says
        n = int(text.split("Is ")[1].split(" ")[0])
        return [0.0, 1.0] if n % 2 == 0 else [1.0, 0.0]  # the fixed candidate reads the input

    backend = ScriptedBackend(Script(sequence_editor(GOOD)), option_scores=ranked)
    session = Session.open(repo, config_for(), backend=backend, use_cache=False, roles=("task", "judge", "optimizer", "editor"))
    out = tmp_path / "out"
    outcome = asyncio.run(run_optimize_job(session, methods=["fixed"], out_dir=out, seed=0, write=False, open_pr=False, env={}))
    [result] = outcome.results
    test = split_items(discover(repo, session.config)[0].suite.items, seed=0, train=0.5, dev=0.25).test
    n, expected = len(test), sum(1 for i in test if int(i.id[1:]) % 2 != 0)
    assert result.test_best is not None and result.test_best.mean == 1.0 and expected < n
    said = f"the original answers 'False' on {n} of {n} test items (the suite expects it on {expected})"
    assert result.label_prior is not None and result.label_prior.startswith(said + ": where one option dominates")
    assert result.best.id not in result.label_prior  # the candidate that reads the input has no skew
    assert f"Label prior: {said}" in (out / "report.md").read_text()
    assert f"Label prior: {said}".replace("'", "&#x27;") in (out / "report.html").read_text()
    assert json.loads((out / "result.json").read_text())["results"][0]["label_prior"] == result.label_prior
    console = Console(record=True, width=400)
    print_optimize_table(outcome.results, console)
    assert f"qa / fixed: {said}" in console.export_text()


def test_when_nothing_reaches_test_the_label_prior_is_read_on_dev(tmp_path: Path, fixed_method: None) -> None:
    """A search that found nothing under a label prior says so from the original's dev answers (cached: no call)."""
    from gradgate.core.suites import split_items
    from tests.test_gradsum import config_for

    repo = make_repo(tmp_path / "repo", n_items=60)
    items = "\n".join(
        f'  - {{id: q{i}, vars: {{question: "Is {i} a multiple of 2?"}}, expected: "{i % 2 == 0}"}}' for i in range(60)
    )
    (repo / "evals" / "qa.yaml").write_text(f'scoring: {{mode: loglik, options: ["False", "True"]}}\nitems:\n{items}\n')
    calls: list[str] = []

    def ranked(messages: list[dict[str, str]], options: list[str]) -> list[float]:
        calls.append(messages[-1]["content"])
        return [1.0, 0.0]  # every prompt answers "False": no candidate beats the original

    spent: dict[bool, int] = {}
    for use_cache in (False, True):
        calls.clear()
        backend = ScriptedBackend(Script(sequence_editor(GOOD)), option_scores=ranked)
        session = Session.open(
            repo, config_for(), backend=backend, use_cache=use_cache, roles=("task", "judge", "optimizer", "editor")
        )
        out = tmp_path / f"out-{use_cache}"
        outcome = asyncio.run(
            run_optimize_job(session, methods=["fixed"], out_dir=out, seed=0, write=False, open_pr=False, env={})
        )
        [result] = outcome.results
        spent[use_cache] = len(calls)
        assert result.best_is_original and result.test_best is None
        if not use_cache:  # it would cost a dev scoring: skipped
            assert result.label_prior is None
            continue
        dev = split_items(discover(repo, session.config)[0].suite.items, seed=0, train=0.5, dev=0.25).dev
        n, expected = len(dev), sum(1 for i in dev if int(i.id[1:]) % 2 != 0)
        said = f"the original answers 'False' on {n} of {n} dev items (the suite expects it on {expected})"
        assert result.label_prior is not None and result.label_prior.startswith(said + ": where one option dominates")
        assert f"Label prior: {said}" in (out / "report.md").read_text()
    assert spent[True] <= spent[False]  # the dev answers read back came from the cache: no call beyond the search's
