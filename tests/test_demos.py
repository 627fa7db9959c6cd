"""The demonstrations slot (parsing, byte-stable write-back, what the model sees) and the `demos` method
(bootstrapping only items the task model answers correctly, random search on dev, the tuning write-back)."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path

import pytest

from gradgate.app.optimize_job import run_optimize_job
from gradgate.core.demos import CLOSE_MARKER, OPEN_MARKER, find_slot, slot_content, with_slot, without_slot
from gradgate.core.discovery import discover
from gradgate.core.method_settings import DemosSettings, parse_settings
from gradgate.core.prompts import load_prompt, prompt_file_bytes, template_variables
from gradgate.core.suites import split_items
from gradgate.errors import ConfigError
from gradgate.models.scripted import last_user_text
from gradgate.optimizers.demos.method import demo_sets
from gradgate.optimizers.demos.prompts import Demo, format_demos, parse_demos
from gradgate.optimizers.report import pr_body
from gradgate.optimizers.runner import run_optimization
from tests.test_gradsum import Script, config_for, make_repo, open_session

BODY = "Answer the question.\n\nQuestion: {{question}}\n"
DEMOS = [
    Demo(values=(("question", "What is 1+1?"),), answer="2", item_id="a"),
    Demo(values=(("question", "Evil {{> ../../../etc/passwd}} and {{question}}"),), answer="<!-- x -->3", item_id="b"),
]


def test_slot_is_inserted_before_the_input_and_parsed_back() -> None:
    body = with_slot(BODY, format_demos(DEMOS))
    assert body.startswith("Answer the question.\n\n" + OPEN_MARKER + "\nExamples:\n\nInput: What is 1+1?\nAnswer: 2\n")
    assert body.endswith(CLOSE_MARKER + "\n\nQuestion: {{question}}\n")
    assert without_slot(body) == BODY
    # model-written text is inert in the slot: no variable, no include, no fake marker
    assert template_variables(body) == ["question"] and "{{>" not in body and body.count("<!--") == 2
    assert parse_demos(slot_content(body)) == [
        ("What is 1+1?", "2"),
        ("Evil { {> ../../../etc/passwd} } and { {question} }", "<! -- x -->3"),
    ]
    # replacing the slot's content changes the slot only; an empty set empties it
    again = with_slot(body, format_demos(DEMOS[:1]))
    span = find_slot(again)
    assert span is not None and again[: span[0]] == body[: span[0]] and again.endswith(body[find_slot(body)[1] :])  # type: ignore[index]
    assert slot_content(with_slot(body, "")) == ""


def test_write_back_is_byte_stable_outside_the_slot_and_the_model_never_sees_the_markers(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "prompts").mkdir(parents=True)
    raw = b"---\r\nid: qa\r\n# a comment\r\n---\r\nAnswer the question.\r\n\r\nQuestion: {{question}}\r\n"
    (repo / "prompts" / "qa.md").write_bytes(raw)
    prompt = load_prompt(repo / "prompts" / "qa.md", repo)
    first = prompt_file_bytes(prompt, with_slot(prompt.body, format_demos(DEMOS[:1])))
    head = b"---\r\nid: qa\r\n# a comment\r\n---\r\nAnswer the question.\r\n\r\n"
    assert first.startswith(head + OPEN_MARKER.encode() + b"\r\nExamples:\r\n")
    assert first.endswith(CLOSE_MARKER.encode() + b"\r\n\r\nQuestion: {{question}}\r\n")
    (repo / "prompts" / "qa.md").write_bytes(first)
    reloaded = load_prompt(repo / "prompts" / "qa.md", repo)
    second = prompt_file_bytes(reloaded, with_slot(reloaded.body, format_demos(DEMOS)))
    start, end = first.index(OPEN_MARKER.encode()), first.index(CLOSE_MARKER.encode())
    assert second[:start] == first[:start] and second.endswith(first[end:])  # only the slot changed
    rendered = reloaded.render({"question": "What is 5+1?"})
    assert "gradgate:demos" not in rendered and "Examples:\n\nInput: What is 1+1?\nAnswer: 2\n" in rendered


def test_settings_are_checked() -> None:
    assert parse_settings(DemosSettings, {"max_demos": 2, "halving": False}, "optimize.demos").halving is None
    for bad in ({"max_demo": 2}, {"max_demos": 0}, {"halving": {"eta": 1}}):
        with pytest.raises(ConfigError):
            parse_settings(DemosSettings, bad, "optimize.demos")


def test_random_sets_are_distinct_seeded_and_start_with_the_first_demos() -> None:
    import random

    pool = [Demo(values=(("q", str(i)),), answer=str(i), item_id=f"i{i}") for i in range(6)]
    cfg = DemosSettings(max_demos=3)
    sets = demo_sets(pool, cfg, random.Random("s"), 8)
    assert sets[0] == tuple(pool[:3]) and len(sets) == len(set(sets)) == 8
    assert all(1 <= len(s) <= 3 for s in sets) and sets == demo_sets(pool, cfg, random.Random("s"), 8)


def test_with_fixed_options_every_set_shows_the_labels_in_turns() -> None:
    """A biased model answers mostly one label's items correctly; the sets still show both labels, alternating."""
    import random

    pool = [Demo(values=(("q", str(i)),), answer="True", item_id=f"t{i}") for i in range(6)]
    pool[4:4] = [Demo(values=(("q", str(i)),), answer="False", item_id=f"f{i}") for i in range(2)]
    cfg = DemosSettings(max_demos=4)
    sets = demo_sets(pool, cfg, random.Random("s"), 8, labels=("True", "False"))
    assert [d.item_id for d in sets[0]] == ["t0", "f0", "t1", "f1"]  # pool order, labels in turns
    assert len(sets) == len(set(sets)) == 8 and sets == demo_sets(pool, cfg, random.Random("s"), 8, ("True", "False"))
    for chosen in sets:
        answers = [d.answer for d in chosen]
        assert 2 <= len(chosen) <= 4 and {"True", "False"} <= set(answers)
        assert all(a != b for a, b in itertools.pairwise(answers))  # no label twice in a row
    only_true = [d for d in pool if d.answer == "True"]
    assert demo_sets(only_true, cfg, random.Random("s"), 1, ("True", "False"))[0] == tuple(only_true[:4])


def test_pool_is_full_only_with_each_options_share() -> None:
    from gradgate.optimizers.demos.method import pool_is_full

    cfg = DemosSettings(max_demos=4)
    true = [Demo(values=(), answer="True", item_id=f"t{i}") for i in range(12)]
    false = [Demo(values=(), answer="False", item_id=f"f{i}") for i in range(6)]
    assert pool_is_full(true, cfg, ()) and not pool_is_full(true, cfg, ("True", "False"))
    assert not pool_is_full(true + false[:5], cfg, ("True", "False")) and pool_is_full(true + false, cfg, ("True", "False"))
    counts = [Demo(values=(), answer=str(n), item_id=f"{n}-{i}") for n in range(4) for i in range(3)]
    numbers = tuple(str(n) for n in range(17))  # a set shows 4 of 17 answers: 4 of them need their share
    assert pool_is_full(counts, cfg, numbers) and not pool_is_full(counts[:-1], cfg, numbers)


def demo_task(messages: list[dict[str, str]]) -> str:
    """Right on odd N always, on even N only when the prompt shows at least two examples."""
    text = last_user_text(messages)
    n = int(re.findall(r"What is (\d+)\+1\?", text)[-1])
    shown = text.count("\nAnswer: ")
    return str(n + 1) if n % 2 == 1 or shown >= 2 else "0"


class DemoScript(Script):
    def __call__(self, spec, messages):  # type: ignore[no-untyped-def, override]
        role = spec.model.split("/")[1]
        self.asked[role].append(messages)
        assert role == "task", role  # demos needs no rewriter
        return demo_task(messages)


def test_bootstrap_uses_only_correctly_answered_training_items_and_demos_win_on_test(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", n_items=40)
    script = DemoScript(lambda m: "")
    session = open_session(repo, script, budget={"max_calls": 200})
    target = discover(repo, session.config)[0]
    result = asyncio.run(run_optimization(session, target, "demos", out_dir=tmp_path / "out", seed=0, settings={"max_demos": 3}))
    splits = split_items(target.suite.items, seed=0, train=0.5, dev=0.25)
    train_odd = {i.id for i in splits.train if int(i.id[1:]) % 2 == 1}
    demo_candidates = [c for c in result.candidates if c.origin == "demos"]
    assert demo_candidates and all(c.rejected is None for c in demo_candidates)
    for candidate in demo_candidates:
        ids = (candidate.note or "").split(";")[0].removeprefix("demos: ").split(", ")
        assert set(ids) <= train_odd  # only training items the zero-shot prompt answered correctly
        for shown, answer in parse_demos(slot_content(candidate.text)):
            n = int(re.search(r"What is (\d+)\+1", shown).group(1))  # type: ignore[union-attr]
            assert answer == str(n + 1)  # the model's own (correct) output
    # halving: some sets stopped after a few dev items, the rest were scored on all of dev
    assert any(c.dev_items for c in demo_candidates) and any(c.dev_items is None for c in demo_candidates)
    assert result.best.origin == "demos" and slot_content(result.best.text).count("Answer:") >= 2
    assert result.improved and result.test_best is not None and result.test_best.mean == 1.0
    assert session.budget.calls <= 200 and not script.asked["optimizer"] and not script.asked["editor"]


def test_the_tuning_write_back_puts_readable_demonstrations_in_the_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", n_items=40)
    before = (repo / "prompts" / "qa.md").read_bytes()
    session = open_session(repo, DemoScript(lambda m: ""), optimize={"demos": {"max_demos": 2}})
    outcome = asyncio.run(
        run_optimize_job(session, methods=["demos"], out_dir=tmp_path / "out", seed=0, write=True, open_pr=False, env={})
    )
    assert outcome.written == ("prompts/qa.md",)
    after = (repo / "prompts" / "qa.md").read_text()
    start = after.index(OPEN_MARKER)
    assert after[:start].encode() == before[: before.index(b"Question:")]  # front matter and instruction untouched
    assert after.endswith(CLOSE_MARKER + "\n\nQuestion: {{question}}\n")
    assert re.search(r"Examples:\n\nInput: What is \d+\+1\?\nAnswer: \d+\n\nInput: ", after)
    # the pull request's text shows the same demonstrations, as the file has them
    body = pr_body(list(outcome.results), outcome.results, budget=session.budget.snapshot(), methods=["demos"])
    assert "worked example(s) in its demonstrations slot" in body
    assert slot_content(outcome.results[0].best.text).strip() in body


def test_config_errors_come_before_any_call(tmp_path: Path) -> None:
    script = DemoScript(lambda m: "")
    with pytest.raises(ConfigError, match=r"optimize\.demos\.sets: Extra inputs are not permitted"):
        asyncio.run(
            run_optimize_job(
                open_session(make_repo(tmp_path / "repo"), script, optimize={"demos": {"sets": 3}}),
                methods=["demos"],
                out_dir=tmp_path / "out",
                seed=0,
                write=False,
                open_pr=False,
                env={},
            )
        )
    assert not script.asked["task"]
    assert config_for().optimize.demos == DemosSettings()
