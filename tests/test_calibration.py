"""The judge checked against labeled examples: agreement statistics, the inconclusive rule in `check`, `eval`.

The scripted task model writes a "good" note unless the prompt says SLOPPY; the scripted judge (a reasoning
judge: the models are not local/) passes an output that says "good". Labeled examples then either agree with
that judge or, with labels flipped, disagree with it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from scipy.stats import binomtest

from gradgate.core.config import ModelSpec, load_config
from gradgate.core.discovery import discover
from gradgate.core.stats import agreement, cohen_kappa
from gradgate.errors import ConfigError
from gradgate.models.scripted import ScriptedBackend, last_user_text
from gradgate.models.session import Session
from gradgate.scoring.calibration import calibrate_judge, cannot_reach
from gradgate.scoring.scorer import Scorer
from tests.test_changes import commit, git, prompt, write
from tests.test_gate import check, gh_env

CONFIG = """\
version: 1
prompts: ['prompts/**/*.md']
models: {task: openai/gpt-4o-mini, judge: openai/gpt-4o-mini}
gate: {min_items: 6, batch_size: 6, max_drop: 0.05, alpha: 0.05}
"""
N_ITEMS = 12


def suite(labels: list[tuple[str, str]], min_agreement: float | None = None, score_untrusted: bool = False) -> str:
    judge = "judge: {scale: binary, criteria: 'A good release note.'"
    judge += f", min_agreement: {min_agreement}" if min_agreement is not None else ""
    judge += ", score_untrusted: true}" if score_untrusted else "}"
    rows = "".join(f"  - {{id: c{n}, vars: {{commit: 'change number {n}'}}}}\n" for n in range(N_ITEMS))
    examples = "".join(
        f"  - {{id: e{i}, item: c{i % N_ITEMS}, output: '{output}', verdict: {verdict}}}\n"
        for i, (output, verdict) in enumerate(labels)
    )
    return f"metrics: [judge]\n{judge}\nitems:\n{rows}judge_examples:\n{examples}"


AGREEING = [("a good note", "pass"), ("junk", "fail")] * 4
FLIPPED = AGREEING[:4] + [("a good note", "fail"), ("junk", "pass")] * 2  # the judge disagrees with 4 of 8


def script(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
    text = last_user_text(messages)
    if "Output to evaluate:" in text:  # the judge
        output = text.split("Output to evaluate:", 1)[1].split("First explain", 1)[0]
        return "It reads well.\nVERDICT: PASS" if "good" in output else "It does not.\nVERDICT: FAIL"
    return "junk" if "SLOPPY" in text else "a good note"


def make_repo(
    root: Path,
    labels: list[tuple[str, str]],
    *,
    regress: bool = True,
    min_agreement: float | None = None,
    score_untrusted: bool = False,
) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    write(
        root,
        {
            "gradgate.yaml": CONFIG,
            ".gitignore": ".gradgate/\n",
            "prompts/notes.md": prompt("notes", "Write a release note for {{commit}}"),
            "evals/notes.yaml": suite(labels, min_agreement, score_untrusted),
        },
    )
    commit(root, "base")
    body = "SLOPPY release note for {{commit}}" if regress else "Write a short release note for {{commit}}"
    write(root, {"prompts/notes.md": prompt("notes", body)})
    commit(root, "head")
    return root


def test_kappa_known_values() -> None:
    # 2x2 table a=20 (both yes), b=5, c=10, d=15: po = 0.7, pe = 0.5, kappa = 0.4.
    labels = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    preds = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(labels, preds) == pytest.approx(0.4)
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None  # one class in both: undefined
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_agreement_intervals() -> None:
    labels = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    preds = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    result = agreement(labels, preds)
    assert (result.n, result.agree, result.accuracy) == (12, 9, 0.75)
    wilson = binomtest(9, 12).proportion_ci(confidence_level=0.95, method="wilson")
    assert (result.accuracy_low, result.accuracy_high) == (pytest.approx(wilson.low), pytest.approx(wilson.high))
    assert result.kappa == pytest.approx(0.5)
    assert result.kappa_low is not None and result.kappa_high is not None
    assert -1 <= result.kappa_low < 0.5 < result.kappa_high <= 1


@pytest.mark.parametrize(("labels", "agree", "trusted"), [(AGREEING, 8, True), (FLIPPED, 4, False)])
def test_calibrate_judge_on_labeled_examples(tmp_path: Path, labels: list[tuple[str, str]], agree: int, trusted: bool) -> None:
    repo = make_repo(tmp_path / "repo", labels)
    config, _ = load_config(repo)
    backend = ScriptedBackend(script=script)
    session = Session.open(repo, config, backend=backend)
    target = discover(repo, config)[0]
    calibration = asyncio.run(calibrate_judge(Scorer(session.gateway, config, target)))
    assert calibration is not None
    assert (calibration.n, calibration.agree, calibration.trusted) == (8, agree, trusted)
    assert len(backend.calls) == 8  # one judge call per example
    # The judge saw each example's item, rendered with the prompt.
    assert "change number 3" in last_user_text(backend.calls[3][1])
    if not trusted:
        assert calibration.kappa == pytest.approx(0.0)
        assert calibration.verdict_note() == "inconclusive: the judge disagrees with 4 of 8 labeled examples"
        assert {e.id for e in calibration.examples if e.label != e.judged} == {"e4", "e5", "e6", "e7"}


def test_calibration_stops_once_the_judge_cannot_reach_min_agreement(tmp_path: Path) -> None:
    """Waves of models.concurrency (4 here): 4 disagreements of 8 leave at most 4/8 < 0.8, so the second wave is
    never sent; the next run judges the same examples (no timing in it) and the cache answers them."""
    wrong = [("a good note", "fail"), ("junk", "pass")] * 4
    repo = make_repo(tmp_path / "repo", wrong)
    config, _ = load_config(repo)
    backend = ScriptedBackend(script=script)
    session = Session.open(repo, config, backend=backend)
    calibration = asyncio.run(calibrate_judge(Scorer(session.gateway, config, discover(repo, config)[0])))
    assert calibration is not None and len(backend.calls) == 4
    assert (calibration.n, calibration.agree, calibration.not_needed, calibration.trusted) == (4, 0, 4, False)
    assert calibration.incomplete is None
    assert "4 more not judged: even agreeing on all of them, it could not reach min_agreement 0.8" in calibration.summary()
    assert [e.id for e in calibration.examples] == ["e0", "e1", "e2", "e3"]
    assert cannot_reach(2, 8, 0.8) and not cannot_reach(1, 8, 0.8) and not cannot_reach(4, 8, 0.5)
    assert not cannot_reach(8, 8, 0.0)  # min_agreement 0: every judge is trusted


def test_trusted_judge_lets_the_regression_fail_the_check(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", AGREEING)
    outcome = check(repo, tmp_path / "out", gh_env(tmp_path), be=ScriptedBackend(script=script))
    notes = outcome.summary.prompts[0]
    assert outcome.verdicts == {"notes": "regressed"} and outcome.exit_code == 1
    assert notes.judge is not None and notes.judge.trusted and notes.judge.agree == 8
    assert "judge: the judge agrees with 8 of 8 labeled examples" in outcome.markdown
    assert "[!WARNING]" not in outcome.markdown


def test_untrusted_judge_decides_nothing_and_its_items_are_not_scored(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FLIPPED)
    env = gh_env(tmp_path)
    backend = ScriptedBackend(script=script)
    outcome = check(repo, tmp_path / "out", env, be=backend)
    notes = outcome.summary.prompts[0]
    assert outcome.verdicts == {"notes": "inconclusive"} and outcome.exit_code == 0
    assert len(backend.calls) == 8  # the 8 labeled examples, judged once; no item scored on either side
    assert notes.items_scored == 0 and notes.decision is None and notes.calls == 8 and not notes.infra_failure
    assert notes.note == (
        "inconclusive: the judge disagrees with 4 of 8 labeled examples: its 12 items were not scored, since this "
        "judge's scores cannot decide the verdict (judge.score_untrusted: true scores them anyway)"
    )
    assert notes.power is not None and notes.power.n == N_ITEMS  # what the suite could detect with a trusted judge
    report = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "> [!WARNING]\n> **The judge of `notes` disagrees with 4 of 8 labeled examples**" in report
    assert "| ❔ inconclusive | 0/12 | 8 | $0 |" in report  # 8 calls, all the judge's: no base "cached"
    # The next run asks the same judge the same questions: the response cache answers, no model call.
    again = ScriptedBackend(script=script)
    assert check(repo, tmp_path / "out2", {}, be=again).verdicts == {"notes": "inconclusive"} and again.calls == []


def test_untrusted_judge_with_score_untrusted_shows_what_the_scores_say(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FLIPPED, score_untrusted=True)
    env = gh_env(tmp_path)
    outcome = check(repo, tmp_path / "out", env, be=ScriptedBackend(script=script))
    notes = outcome.summary.prompts[0]
    assert outcome.verdicts == {"notes": "inconclusive"} and outcome.exit_code == 0
    assert notes.decision is not None and notes.decision.verdict == "regressed"  # what the scores alone say
    assert "inconclusive: the judge disagrees with 4 of 8 labeled examples (the scores alone say regressed)" in (notes.note or "")
    report = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "> [!WARNING]\n> **The judge of `notes` disagrees with 4 of 8 labeled examples**" in report
    # The same labels with a lower bar: 4 of 8 is enough, and the regression stands.
    again = make_repo(tmp_path / "repo2", FLIPPED, min_agreement=0.5)
    assert check(again, tmp_path / "out2", {}, be=ScriptedBackend(script=script)).verdicts == {"notes": "regressed"}


def test_an_unchanged_verdict_is_also_withheld(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FLIPPED, regress=False, score_untrusted=True)
    outcome = check(repo, tmp_path / "out", {}, be=ScriptedBackend(script=script))
    assert outcome.verdicts == {"notes": "inconclusive"}
    assert "the scores alone say unchanged" in (outcome.summary.prompts[0].note or "")


def test_bad_labeled_examples_are_config_errors(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", AGREEING)
    write(repo, {"evals/notes.yaml": suite(AGREEING).replace("item: c3,", "item: nope,")})
    backend = ScriptedBackend(script=script)
    outcome = check(repo, tmp_path / "out", {}, be=backend, head_ref=None)
    assert outcome.exit_code == 2 and "item 'nope' is not in the suite" in (outcome.error or "")
    assert "evals/notes.yaml:judge_examples[3].item" in (outcome.error or "")
    assert backend.calls == []  # refused before any model call
    write(repo, {"evals/notes.yaml": suite(AGREEING).replace("verdict: pass}", "verdict: pass, score: 7}", 1)})
    with pytest.raises(ConfigError, match="exactly one of `verdict`"):
        discover(repo, load_config(repo)[0])


def test_eval_reports_agreement_and_what_the_suite_can_detect(tmp_path: Path) -> None:
    from gradgate.app.eval_job import run_eval

    repo = make_repo(tmp_path / "repo", FLIPPED)
    config, _ = load_config(repo)
    session = Session.open(repo, config, backend=ScriptedBackend(script=script))
    outcome = asyncio.run(run_eval(session, out_dir=tmp_path / "out"))
    data = json.loads(outcome.results_path.read_text())["prompts"][0]
    assert data["judge_agreement"]["agree"] == 4 and data["judge_agreement"]["trusted"] is False
    assert data["judge_agreement"]["disagreements"] == ["e4", "e5", "e6", "e7"]
    # 12 binary items, one look at alpha 0.05 after min_items... sequential: the best look decides.
    assert data["power"]["exact"] is True and data["power"]["detectable_drop"] == pytest.approx(0.5)
    report = outcome.report_path.read_text()
    assert "- `notes`: this suite can detect a drop of 0.500 or more (exact McNemar, 12 items" in report
    assert "⚠️ below min_agreement" in report and "agrees with 4 of 8 labeled examples" in report


def test_check_json_round_trips_for_gradgate_merge(tmp_path: Path) -> None:
    """`gradgate merge` reads each shard's check.json back into a CheckSummary: the new fields survive it."""
    from pydantic import TypeAdapter

    from gradgate.gate.report import CheckSummary, render_markdown

    repo = make_repo(tmp_path / "repo", FLIPPED)
    outcome = check(repo, tmp_path / "out", {}, be=ScriptedBackend(script=script))
    data = json.loads((tmp_path / "out" / "check.json").read_text())
    assert data["prompts"][0]["judge"]["agree"] == 4 and data["prompts"][0]["power"]["exact"] is True
    again = TypeAdapter(CheckSummary).validate_python(data)
    assert again.prompts[0].judge is not None and not again.prompts[0].judge.trusted
    assert render_markdown(again) == outcome.markdown


def test_an_example_the_judge_gives_no_verdict_for_is_a_disagreement(tmp_path: Path) -> None:
    def mute_on_junk(spec: ModelSpec, messages: list[dict[str, str]]) -> str:
        reply = script(spec, messages)
        return "I cannot say." if "VERDICT: FAIL" in reply else reply  # no verdict line, even when asked again

    repo = make_repo(tmp_path / "repo", AGREEING, min_agreement=0.6)  # reachable until the last wave is in
    config, _ = load_config(repo)
    session = Session.open(repo, config, backend=ScriptedBackend(script=mute_on_junk))
    calibration = asyncio.run(calibrate_judge(Scorer(session.gateway, config, discover(repo, config)[0])))
    assert calibration is not None
    assert (calibration.agree, calibration.n, calibration.unjudged, calibration.trusted) == (4, 8, 4, False)
    assert "4 got no verdict from the judge (counted as disagreements)" in calibration.summary()
