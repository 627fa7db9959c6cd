"""The demonstrations slot (parsing, byte-stable write-back, what the model sees) and the `demos` method
(bootstrapping only items the task model answers correctly, random search on dev, the tuning write-back)."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gradgate.app.optimize_job import run_optimize_job
from gradgate.cli import main
from gradgate.core.demos import (
    CLOSE_MARKER,
    OPEN_MARKER,
    find_slot,
    marker_lines,
    slot_content,
    slot_problem,
    strip_slot_markers,
    with_slot,
    without_slot,
)
from gradgate.core.discovery import discover
from gradgate.core.method_settings import DemosSettings, parse_settings
from gradgate.core.prompts import load_prompt, prompt_file_bytes, template_variables
from gradgate.core.suites import split_items
from gradgate.errors import ConfigError
from gradgate.models.scripted import ScriptedBackend, last_user_text
from gradgate.optimizers.demos.method import demo_sets
from gradgate.optimizers.demos.prompts import Demo, format_demos, parse_demos
from gradgate.optimizers.report import pr_body
from gradgate.optimizers.runner import run_optimization
from tests.conftest import script_sessions
from tests.gitutil import git, isolated_git  # noqa: F401 - isolated_git is an autouse fixture
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


# -- the slot's marker lines come from pull requests: zero or one well-formed slot, else exit 2 before any call --

HEAD = "---\nid: qa\ndescription: Add one to a number.\nsuite: evals/qa.yaml\n---\n"  # make_repo's: 5 lines
OPEN, CLOSE = OPEN_MARKER, CLOSE_MARKER
MALFORMED = {  # body, the file line of the offending marker (the body starts on line 6)
    "twice": (f"Q\n{OPEN}\nx\n{CLOSE}\n{OPEN}\ny\n{CLOSE}\n\nQuestion: {{{{question}}}}\n", 10),
    "unclosed": (f"Q\n{OPEN}\nold\nQuestion: {{{{question}}}}\n", 7),
    "nested": (f"Q\n{OPEN}\n{OPEN}\nx\n{CLOSE}\n{CLOSE}\nQuestion: {{{{question}}}}\n", 8),
    "close_only": (f"Q\n{CLOSE}\nold\nQuestion: {{{{question}}}}\n", 7),
    "reversed": (f"Q\n{CLOSE}\nQuestion: {{{{question}}}}\n{OPEN}\nend\n", 7),
    "spaced_close": (f"Q\n{OPEN}\nx\n<!-- / gradgate:demos -->\nQuestion: {{{{question}}}}\n", 9),
    "other_case_inside": (f"Q\n{OPEN}\nx\n<!-- GradGate:Demos -->\n{CLOSE}\nQuestion: {{{{question}}}}\n", 9),
    "inline": (f"Q {OPEN}\nx\n{CLOSE}\nQuestion: {{{{question}}}}\n", 6),
}


def demos_repo(root: Path, body: str, **files: str) -> Path:
    """make_repo's prompt and suite with `body`, a gradgate.yaml for the scripted models, committed with real git."""
    repo = make_repo(root, n_items=40, body=body)
    (repo / "gradgate.yaml").write_text(
        "models: {task: fake/task, judge: fake/judge, optimizer: fake/optimizer, editor: fake/editor, max_retries: 0}\n"
        "budget: {max_calls: 200}\noptimize: {alpha: 0.1, demos: {max_demos: 2}}\n"
    )
    for rel, text in files.items():
        (repo / rel).write_text(text)
    git(repo, "init", "--quiet", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "initial")
    return repo


@pytest.fixture
def scripted_cli(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every Session the CLI opens answers with DemoScript; returns the list of model calls."""
    backend = ScriptedBackend(DemoScript(lambda m: ""))
    script_sessions(monkeypatch, backend)
    return backend.calls


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_slot_is_refused_at_load_naming_the_file_and_the_marker_line(tmp_path: Path, case: str) -> None:
    body, line = MALFORMED[case]
    repo = make_repo(tmp_path / "repo", body=body)
    with pytest.raises(ConfigError) as caught:
        load_prompt(repo / "prompts" / "qa.md", repo)
    assert caught.value.where == f"prompts/qa.md:{line}" and f"line {line} " in caught.value.message
    assert caught.value.hint is not None and "at most one demonstrations slot" in caught.value.hint
    assert slot_problem(body, first_line=6) is not None


@pytest.mark.parametrize(("case", "command"), [(c, "optimize") for c in MALFORMED] + [("unclosed", "eval")])
def test_a_malformed_slot_exits_2_before_any_model_call_and_nothing_is_written(
    tmp_path: Path, scripted_cli: list[Any], case: str, command: str
) -> None:
    body, line = MALFORMED[case]
    repo = demos_repo(tmp_path / "repo", body)
    before = (repo / "prompts" / "qa.md").read_bytes()
    extra = ["--method", "demos", "--write"] if command == "optimize" else []
    code, output = run_cli(command, "--repo", str(repo), "--out", str(tmp_path / "out"), *extra)
    assert code == 2, output
    assert f"prompts/qa.md:{line}" in output and "demonstrations slot" in output and "Traceback" not in output
    assert scripted_cli == []
    assert (repo / "prompts" / "qa.md").read_bytes() == before
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


def test_an_included_file_cannot_bring_or_complete_a_marker(tmp_path: Path, scripted_cli: list[Any]) -> None:
    """The slot lives in the prompt file (the only file write-back changes); an included file is shared."""
    in_part = demos_repo(
        tmp_path / "a", "Q\n{{> part.md}}\nQuestion: {{question}}\n", **{"prompts/part.md": f"Shared.\n{OPEN}\nx\n{CLOSE}\n"}
    )
    code, output = run_cli("optimize", "--repo", str(in_part), "--out", str(tmp_path / "out"), "--method", "demos", "--write")
    assert code == 2 and "prompts/part.md:2" in output and "prompts/qa.md includes this file" in output, output
    completed = make_repo(tmp_path / "b", body="Q\n<!-- gradgate:{{> part.md}} -->\nx\n{{question}}\n")
    (completed / "prompts" / "part.md").write_text("demos")
    with pytest.raises(ConfigError) as caught:  # no marker line in either file, one once expanded
        load_prompt(completed / "prompts" / "qa.md", completed)
    assert caught.value.where == "prompts/qa.md:7" and "include" in caught.value.message
    assert scripted_cli == []


WELL_FORMED = {
    "no slot": "Answer the question.\n\nQuestion: {{question}}\n",
    "one slot": f"Answer the question.\n\n{OPEN}\nExamples:\n\nInput: old\nAnswer: old\n{CLOSE}\n\nQuestion: {{{{question}}}}\n",
    "spaced markers": "Answer.\n\n  <!--gradgate:demos-->\t\nExamples:\n\n<!--  /gradgate:demos  -->\n\nQuestion: {{question}}\n",
}


@pytest.mark.parametrize("case", list(WELL_FORMED))
def test_a_well_formed_slot_or_none_loads_and_writes_back_byte_stably(tmp_path: Path, scripted_cli: list[Any], case: str) -> None:
    body = WELL_FORMED[case]
    repo = demos_repo(tmp_path / "repo", body.replace("\n", "\r\n"))  # CRLF on disk: kept outside the slot
    before = (repo / "prompts" / "qa.md").read_bytes()
    prompt = load_prompt(repo / "prompts" / "qa.md", repo)
    assert prompt.body == body and slot_problem(prompt.body) is None
    assert "gradgate" not in prompt.render({"question": "What is 1+1?"})  # marker lines, spaced or not, never sent
    code, output = run_cli("optimize", "--repo", str(repo), "--out", str(tmp_path / "out"), "--method", "demos", "--write")
    assert code == 0 and "wrote prompts/qa.md" in output, output
    after = (repo / "prompts" / "qa.md").read_bytes()
    assert [m.kind for m in marker_lines(after.decode())] == ["open", "close"]
    start, end = after.index(b"gradgate:demos"), after.index(b"/gradgate:demos")
    if find_slot(body) is None:  # inserted before the question, then a blank line
        assert after[: after.index(b"<!--")] + after[after.index(b"\r\n", end) + 4 :] == before
    else:  # only the bytes between the marker lines changed
        old_end = before.index(b"/gradgate:demos")
        assert after[: after.index(b"\r\n", start)] == before[: before.index(b"\r\n", start)]
        assert after[after.rindex(b"\r\n", 0, end) :] == before[before.rindex(b"\r\n", 0, old_end) :]
    reloaded = load_prompt(repo / "prompts" / "qa.md", repo)
    assert re.search(r"Input: What is \d+\+1\?\nAnswer: \d+\n", slot_content(reloaded.body)) and scripted_cli


def test_a_model_written_body_gets_exactly_one_slot() -> None:
    """Candidates are not loaded files: CRLF newlines, or stray marker lines a rewriter left (never sent to a model)."""
    crlf = f"Q\r\n{OPEN}\r\nold\r\n{CLOSE}\r\n\r\nQuestion: {{{{question}}}}\r\n"
    assert with_slot(crlf, "new\n") == f"Q\r\n{OPEN}\r\nnew\n{CLOSE}\r\n\r\nQuestion: {{{{question}}}}\r\n"
    assert without_slot(crlf) == "Q\r\nQuestion: {{question}}\r\n"
    written = f"Q\nold\n{OPEN}\nnew\n{CLOSE}\n\nQuestion: {{{{question}}}}\n"  # what a model sees of the rest: unchanged
    for stray in (
        f"Q\n{OPEN}\nold\nQuestion: {{{{question}}}}\n",
        f"Q\n{OPEN}\n{OPEN}\nold\n{CLOSE}\n{CLOSE}\nQuestion: {{{{question}}}}\n",
        f"Q\n{CLOSE}\nold\n{OPEN}\nQuestion: {{{{question}}}}\n",
    ):
        assert with_slot(stray, "new\n") == written and strip_slot_markers(stray) == "Q\nold\nQuestion: {{question}}\n"
    assert [m.kind for m in marker_lines(written)] == ["open", "close"] and slot_problem(written) is None
