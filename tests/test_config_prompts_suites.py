"""Config, prompt files, suites, discovery and splits: formats, round trips and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradgate.core.config import (
    Config,
    apply_env_overrides,
    json_schema,
    load_config,
    override_models,
    parse_config,
    shipped_schema_text,
)
from gradgate.core.discovery import discover
from gradgate.core.prompts import contains_include, include_targets, load_prompt, write_prompt_body
from gradgate.core.suites import load_suite, split_items
from gradgate.errors import ConfigError, PathOutsideRepoError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_shipped_schema_matches_the_models() -> None:
    assert json.loads(shipped_schema_text()) == json_schema()


def test_defaults_without_a_config(tmp_path: Path) -> None:
    config, path = load_config(tmp_path)
    assert path is None
    assert config.models.task.model == "local/smollm2-135m-instruct"
    assert config.prompts[0].startswith("prompts/")


def test_config_errors_name_file_key_and_hint(tmp_path: Path) -> None:
    write(tmp_path / "gradgate.yaml", "models:\n  task: {model: x, temprature: 0.1}\ngate:\n  alpha: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    text = str(info.value)
    assert "gradgate.yaml: models.task.temprature" in text and "spelling" in text
    assert "gate.alpha" in text


def test_malformed_yaml_reports_the_line(tmp_path: Path) -> None:
    write(tmp_path / "gradgate.yaml", "models:\n  task: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(tmp_path)


def test_model_strings_coerce_to_specs() -> None:
    config = parse_config({"models": {"judge": "openai/gpt-4o-mini"}}, "x")
    assert config.models.judge.model == "openai/gpt-4o-mini"
    assert config.models.for_role("editor") == config.models.optimizer


def test_the_editor_follows_the_overridden_optimizer() -> None:
    """No `models.editor`: the editor is the optimizer, after GRADGATE_API_BASE and --optimizer-model alike."""
    config = parse_config({"models": {"optimizer": "openai/from-yaml"}}, "x")
    env = {"GRADGATE_API_BASE": "http://127.0.0.1:8000/v1"}
    models = override_models(apply_env_overrides(config, env), optimizer="openai/from-cli").models
    assert models.editor is None and models.for_role("editor") == models.optimizer
    assert (models.optimizer.model, models.optimizer.api_base) == ("openai/from-cli", "http://127.0.0.1:8000/v1")
    env["GRADGATE_OPTIMIZER_MODEL"] = "openai/from-env"
    editor = apply_env_overrides(config, env).models.for_role("editor")
    assert (editor.model, editor.api_base) == ("openai/from-env", "http://127.0.0.1:8000/v1")
    # The editor's own override starts from the (overridden) optimizer's spec.
    env["GRADGATE_EDITOR_MODEL"] = "openai/editor-env"
    models = apply_env_overrides(config, env).models
    assert models.editor is not None and (models.editor.model, models.editor.api_base) == (
        "openai/editor-env",
        env["GRADGATE_API_BASE"],
    )
    assert models.optimizer.model == "openai/from-env"
    # A configured editor is its own model: the optimizer's override leaves it, the API base reaches it.
    own = parse_config({"models": {"optimizer": "openai/from-yaml", "editor": "openai/editor-yaml"}}, "x")
    models = override_models(
        apply_env_overrides(own, {"GRADGATE_API_BASE": env["GRADGATE_API_BASE"]}), optimizer="openai/cli"
    ).models
    assert (
        models.for_role("editor").model == "openai/editor-yaml" and models.for_role("editor").api_base == env["GRADGATE_API_BASE"]
    )
    assert apply_env_overrides(config, {}) is config and override_models(config, optimizer=None) is config


PROMPT = (
    "---\r\nid: greet\r\n# a comment kept byte for byte\r\ndescription: Say hello.\r\n---\r\nHello {{name}}!\r\nBe brief.\r\n"
)


def test_prompt_front_matter_and_variables(tmp_path: Path) -> None:
    path = write(tmp_path / "prompts" / "greet.md", PROMPT.encode())
    prompt = load_prompt(path, tmp_path)
    assert prompt.id == "greet" and prompt.description == "Say hello."
    assert prompt.variables == ["name"]
    # Line endings are normalized for the model; the file keeps its own (see the write-back test).
    assert prompt.render({"name": "Ada"}) == "Hello Ada!\nBe brief.\n"
    with pytest.raises(ConfigError, match="name"):
        prompt.render({})


def test_write_back_changes_only_the_body(tmp_path: Path) -> None:
    path = write(tmp_path / "prompts" / "greet.md", PROMPT.encode())
    prompt = load_prompt(path, tmp_path)
    write_prompt_body(prompt, "Greet {{name}} warmly.\nOne line only.\n")
    raw = path.read_bytes()
    head = PROMPT.split("---\r\n", 2)
    assert raw.startswith(("---\r\n" + head[1] + "---\r\n").encode())
    assert raw.endswith(b"Greet {{name}} warmly.\r\nOne line only.\r\n")
    assert load_prompt(path, tmp_path).body == "Greet {{name}} warmly.\nOne line only.\n"


def test_includes_expand_and_are_tracked(tmp_path: Path) -> None:
    write(tmp_path / "prompts" / "parts" / "style.md", "Answer in {{lang}}.")
    path = write(tmp_path / "prompts" / "q.md", "Q: {{q}}\n{{> parts/style.md}}\n")
    prompt = load_prompt(path, tmp_path)
    assert prompt.expanded == "Q: {{q}}\nAnswer in {{lang}}.\n"
    assert prompt.variables == ["q", "lang"]
    assert prompt.includes == ((tmp_path / "prompts" / "parts" / "style.md").resolve(),)


def test_include_outside_the_repository_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write(tmp_path / "secret.txt", "secret")
    path = write(repo / "prompts" / "q.md", "{{> ../../secret.txt}}")
    with pytest.raises(PathOutsideRepoError):
        load_prompt(path, repo)


def test_symlinked_suite_outside_the_repository_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    outside = write(tmp_path / "elsewhere.yaml", "items: [{vars: {q: x}}]")
    (repo / "evals").mkdir(parents=True)
    (repo / "evals" / "q.yaml").symlink_to(outside)
    write(repo / "prompts" / "q.md", "{{q}}")
    with pytest.raises(PathOutsideRepoError, match="outside the repository"):
        discover(repo, Config())


def test_include_syntax_is_detected() -> None:
    assert contains_include("Answer briefly. {{> ../.git/config}}")
    assert contains_include("{{>\n  parts/style.md }}")
    assert not contains_include("Hi {{name}}, use {{ lang }} and {{>}} or { {> x}}")
    assert include_targets("a {{> x.md}} b {{>y/z.md}}") == ["x.md", "y/z.md"]


def test_a_git_include_is_refused_naming_the_prompt_and_the_include(tmp_path: Path) -> None:
    write(tmp_path / ".git" / "config", "[http]\n\textraheader = AUTHORIZATION: basic c2VjcmV0")
    path = write(tmp_path / "prompts" / "q.md", "Q {{> ../.git/config}}")
    with pytest.raises(ConfigError) as info:
        load_prompt(path, tmp_path)
    assert "prompts/q.md" in str(info.value) and "{{> ../.git/config}}" in str(info.value)
    assert "c2VjcmV0" not in str(info.value)


@pytest.mark.parametrize("bom", ["\ufeff", "\ufeff\ufeff"], ids=["one mark", "two marks"])
def test_a_bom_is_not_content(tmp_path: Path, bom: str) -> None:
    path = write(tmp_path / "prompts" / "greet.md", (bom + "---\nid: hello\n---\nHi {{name}}\n").encode())
    prompt = load_prompt(path, tmp_path)
    assert prompt.id == "hello" and prompt.body == "Hi {{name}}\n"
    write_prompt_body(prompt, "Hello {{name}}\n")  # the BOM and the front matter stay as they were
    assert path.read_bytes() == (bom + "---\nid: hello\n---\nHello {{name}}\n").encode()
    csv_suite = load_suite(write(tmp_path / "a.csv", bom + "id,q,expected\none,1+1,2\n"), tmp_path)
    jsonl_suite = load_suite(write(tmp_path / "b.jsonl", bom + '{"id": "one", "q": "1+1", "expected": "2"}\n'), tmp_path)
    yaml_suite = load_suite(write(tmp_path / "c.yaml", bom + "items: [{id: one, vars: {q: '1+1'}, expected: '2'}]\n"), tmp_path)
    assert csv_suite.items == jsonl_suite.items == yaml_suite.items
    assert csv_suite.items[0].vars == {"q": "1+1"}
    write(tmp_path / "gradgate.yaml", bom + "suites_dir: tests\n")
    assert load_config(tmp_path)[0].suites_dir == "tests"


def test_suite_formats_agree(tmp_path: Path) -> None:
    yaml_suite = load_suite(write(tmp_path / "a.yaml", "items:\n  - {id: one, vars: {q: '1+1'}, expected: '2'}\n"), tmp_path)
    jsonl_suite = load_suite(write(tmp_path / "b.jsonl", '{"id": "one", "q": "1+1", "expected": "2"}\n'), tmp_path)
    csv_suite = load_suite(write(tmp_path / "c.csv", "id,q,expected\none,1+1,2\n"), tmp_path)
    assert yaml_suite.items == jsonl_suite.items == csv_suite.items


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.jsonl", '{"q": 1}\n{not json}\n', "line 2 is not valid JSON"),
        ("bad.csv", "q,expected\n1,2,3\n", "different number of fields"),
        ("bad.yaml", "items: [\n", "not valid YAML"),
        ("empty.yaml", "items: []\n", "no rows"),
        ("unknown.yaml", "itemz: []\n", "itemz"),
        ("bad.txt", "x", "unsupported suite format"),
    ],
)
def test_malformed_suites_get_clear_messages(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_suite(write(tmp_path / name, text), tmp_path)


def test_dataset_suite_from_a_local_jsonl(tmp_path: Path) -> None:
    write(
        tmp_path / "data" / "gsm.jsonl",
        '{"question": "2+2?", "answer": "think... #### 4"}\n{"question": "3+3?", "answer": "so #### 6"}\n',
    )
    suite = load_suite(
        write(
            tmp_path / "s.yaml",
            "dataset:\n  path: data/gsm.jsonl\n  vars: {q: question}\n  expected: answer\n  expected_after: '####'\n",
        ),
        tmp_path,
    )
    assert [i.expected for i in suite.items] == ["4", "6"]
    assert suite.items[0].vars == {"q": "2+2?"}


def test_splits_are_deterministic_disjoint_and_complete() -> None:
    from gradgate.core.suites import Item

    items = [Item(id=str(i), vars={}) for i in range(20)]
    a = split_items(items, seed=1, train=0.5, dev=0.25)
    b = split_items(list(reversed(items)), seed=1, train=0.5, dev=0.25)
    c = split_items(items, seed=2, train=0.5, dev=0.25)
    assert a == b and a != c
    ids = [i.id for part in (a.train, a.dev, a.test) for i in part]
    assert sorted(ids) == sorted(i.id for i in items) and len(a.train) == 10 and len(a.test) == 5
    tiny = split_items(items[:1], seed=0, train=0.5, dev=0.25)
    assert len(tiny.train) + len(tiny.dev) + len(tiny.test) == 1


def test_discovery_of_the_examples() -> None:
    shipped = Path(__file__).resolve().parents[1] / "examples"
    config, _ = load_config(shipped)
    targets = discover(shipped, config)
    assert [t.prompt.id for t in targets] == ["capitals", "release-note", "ticket-triage"]
    with pytest.raises(ConfigError, match="unknown prompt id"):
        discover(shipped, config, ["nope"])


def test_prompt_without_a_suite_gets_a_hint(tmp_path: Path) -> None:
    write(tmp_path / "prompts" / "lonely.md", "Hi {{x}}")
    with pytest.raises(ConfigError, match=r"evals/lonely\.yaml"):
        discover(tmp_path, Config())
