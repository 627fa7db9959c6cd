"""The mutation library: every entry keeps the prompt's variables and text; options come from the suite;
mutation candidates compete in GRAD-SUM when the editor writes nothing useful."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gradgate.core.discovery import discover
from gradgate.core.prompts import template_variables
from gradgate.models.scripted import last_user_text
from gradgate.optimizers import mutations
from gradgate.optimizers.mutations import LIBRARY, TaskFacts, apply, facts_for, propose
from tests.test_gradsum import Script, config_for, make_repo, optimize

BODY = "Use the context.\n\nContext: {{context}}\nQuestion: {{question}}\n"
FACTS = TaskFacts(options=("True", "False"), numeric=False, task="Evaluate Boolean expressions.")


@pytest.mark.parametrize("mutation", LIBRARY, ids=lambda m: m.name)
def test_every_entry_adds_one_line_and_keeps_the_variables(mutation: mutations.Mutation) -> None:
    facts = TaskFacts(options=("True", "False"), numeric=True, task="Evaluate Boolean expressions.")
    mutated = apply(BODY, mutation, facts)
    assert mutated is not None and template_variables(mutated) == ["context", "question"]
    added = [line for line in mutated.splitlines() if line not in BODY.splitlines()]
    assert len(added) == 1 and mutated.replace(added[0] + "\n", "", 1) == BODY
    assert mutation.doc and apply(mutated, mutation, facts) is None  # never added twice
    if mutation.place == "before_input":
        assert mutated.index(added[0]) < mutated.index("Context: {{context}}")


def test_lines_are_filled_from_the_suite_and_skipped_without_their_data() -> None:
    assert apply(BODY, mutations.BY_NAME["answer-only-options"], FACTS) == BODY.rstrip() + (
        '\nAnswer only with "True" or "False", nothing else.\n'
    )
    assert apply(BODY, mutations.BY_NAME["role-expert"], FACTS).startswith(  # type: ignore[union-attr]
        "You are a careful expert. Your task: Evaluate Boolean expressions.\nUse the context."
    )
    bare = TaskFacts()
    assert apply(BODY, mutations.BY_NAME["answer-options"], bare) is None
    assert apply(BODY, mutations.BY_NAME["final-number"], bare) is None
    braces = TaskFacts(task="Fill {{question}} in")
    role = apply(BODY, mutations.BY_NAME["role-expert"], braces)
    assert role is not None and role.split("\n")[0] == "You are a careful expert. Your task: Fill { {question} } in"
    drawn = propose(BODY, FACTS, count=4, rng=random.Random(1), exclude=())
    assert len(drawn) == 4 and len({t for t, _ in drawn}) == 4 and drawn == propose(BODY, FACTS, count=4, rng=random.Random(1))


def test_facts_come_from_scoring_options_or_few_expected_answers(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    target = discover(repo, config_for())[0]
    facts = facts_for(target.suite, "Add one.")
    assert facts.numeric and facts.options == () and facts.task == "Add one."  # 24 distinct numbers: no options


def test_a_mutation_wins_when_the_editor_writes_only_paraphrases(tmp_path: Path) -> None:
    """The task model is right only when told to think step by step; the editor only paraphrases."""

    class StepScript(Script):
        def __call__(self, spec, messages):  # type: ignore[no-untyped-def, override]
            role = spec.model.split("/")[1]
            if role == "task":
                self.asked["task"].append(messages)
                text = last_user_text(messages)
                n = int(text.split("What is ")[1].split("+")[0])
                return str(n + 1) if "step by step" in text.lower() else "0"
            return super().__call__(spec, messages)

    script = StepScript(lambda m: "<prompt>Answer this question.\n\nQuestion: {{question}}</prompt>")
    settings = {"iterations": 1, "beam_width": 1, "candidates_per_prompt": 1, "mutations": 11, "halving": True}
    result, session = optimize(make_repo(tmp_path / "repo"), script, tmp_path / "out", {})
    assert not result.improved  # the paper's GRAD-SUM (helper default: no mutations) finds nothing
    from tests.test_gradsum import open_session

    session = open_session(make_repo(tmp_path / "repo2"), script)
    import asyncio

    from gradgate.optimizers.runner import run_optimization

    target = discover(session.repo, session.config)[0]
    found = asyncio.run(run_optimization(session, target, "gradsum", out_dir=tmp_path / "o2", seed=0, settings=settings))
    mutated = [c for c in found.candidates if c.origin == "mutation"]
    assert len(mutated) >= 5 and all(template_variables(c.text) == ["question"] for c in mutated)
    assert found.best.origin == "mutation" and "step by step" in found.best.text.lower() and found.improved


@pytest.mark.parametrize(
    ("expected", "options", "numeric"),
    [
        (["True", "False"] * 3, ("False", "True"), False),
        (["(A)", "(B)", "(C)"] * 2, ("A", "B", "C"), False),  # labels written as GReaTer's answer phrase lists them
        ([".5", "+5", "1,000", "-2"], (), True),
        ([f"label{n}" for n in range(11)] * 2, tuple(sorted(f"label{n}" for n in range(11))), False),
        (["a long answer that is no label at all, really"] * 2 + ["short"] * 2, (), False),
    ],
)
def test_mutations_read_options_and_numbers_as_the_answer_phrase_does(
    tmp_path: Path, expected: list[str], options: tuple[str, ...], numeric: bool
) -> None:
    from gradgate.scoring.answers import is_numeric, label_set

    repo = make_repo(tmp_path / "repo")
    items = "\n".join(f'  - {{id: q{i}, vars: {{question: "q{i}"}}, expected: "{e}"}}' for i, e in enumerate(expected))
    (repo / "evals" / "qa.yaml").write_text(f"metrics: [exact]\nitems:\n{items}\n")
    facts = facts_for(discover(repo, config_for())[0].suite)
    assert facts.options == options and facts.numeric == numeric == is_numeric(expected)
    if options:
        assert facts.options == label_set(expected)  # the labels GReaTer's extraction phrase lists
