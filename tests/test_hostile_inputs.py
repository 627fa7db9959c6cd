"""Hostile input is normal input: configs, prompt files and suites come from pull requests.

Property-based tests generate malformed files (deep nesting, wrong types, odd unicode, BOM, NUL, CRLF,
huge numbers, empty files) and assert that the loaders either succeed or raise a gradgate
`ConfigError`, never any other exception. CLI-level runs assert exit 2, a message naming the file,
no traceback, and no model call.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradgate.core.config import Config, load_config
from gradgate.core.discovery import discover
from gradgate.core.prompts import load_prompt
from gradgate.core.suites import load_suite
from gradgate.errors import ConfigError
from gradgate.scoring.metrics import parse_metrics
from tests.conftest import script_sessions

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    # repo_dir is a factory: every example makes its own repository.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
GIT_CANARY = "ghs" + "_gitconfigcanary0123456789abcdef"  # fake; built from parts (no token-shaped literal)

# -- strategies ---------------------------------------------------------------------------------------

WEIRD_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\ufeff", "\r\n", "[/]", "{{> ../.git/config}}", "é", "\u2028", "9" * 5000, ".inf", "~"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    WEIRD_TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
CONFIG_KEYS = ["version", "prompts", "suites_dir", "models", "judge", "metrics", "budget", "gate", "optimize", "cache_dir"]
MODEL_KEYS = ["model", "api_base", "api_key_env", "temperature", "max_tokens"]
SUITE_KEYS = ["description", "metrics", "judge", "scoring", "max_tokens", "system", "items", "dataset"]
METRIC = st.one_of(
    st.sampled_from(["exact", "regex", "judge", "bleu", ""]),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["regex", "contains", "json_schema", 3, None])},
        optional={
            "pattern": st.one_of(st.sampled_from(["(", "^a", "", "a{99999999999}"]), SCALARS),
            "weight": SCALARS,
            "value": SCALARS,
            "schema": VALUES,
        },
    ),
)
ROW = st.one_of(
    VALUES,
    st.fixed_dictionaries(
        {"vars": st.one_of(st.dictionaries(st.text(max_size=5), SCALARS, max_size=3), VALUES)},
        optional={"expected": SCALARS, "id": SCALARS, "assert": st.one_of(st.lists(METRIC, max_size=2), METRIC, SCALARS)},
    ),
)


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """`text` with a BOM, CRLF newlines, an inserted oddity or a cut, each maybe."""
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    if draw(st.booleans()):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:at] + draw(st.one_of(WEIRD_TEXT, st.text(max_size=6), st.just(deep(2000)))) + text[at:]
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    data = draw(st.dictionaries(st.sampled_from(CONFIG_KEYS), VALUES, max_size=4))
    if draw(st.booleans()):
        data["models"] = {"task": draw(st.dictionaries(st.sampled_from(MODEL_KEYS), SCALARS, max_size=3))}
    if draw(st.booleans()):
        data["metrics"] = draw(st.lists(METRIC, max_size=3))
    return draw(mutated(dump(data)))


@st.composite
def prompt_texts(draw: st.DrawFn) -> str:
    meta = draw(st.dictionaries(st.sampled_from(["id", "description", "suite", "variables", "tags", "x"]), VALUES, max_size=3))
    include = draw(
        st.sampled_from(
            ["inc.md", "../.git/config", ".git/config", "a\x00b", "/etc/passwd", "../../x", "sub/.GIT/config", "self.md"]
        )
    )
    body = f"Hi {{{{name}}}} {{{{> {include}}}}}\n" + draw(st.text(max_size=30))
    head = f"---\n{dump(meta)}---\n" if meta or draw(st.booleans()) else ""
    return draw(mutated(head + body))


@st.composite
def suite_files(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(["yaml", "jsonl", "csv"]))
    if kind == "yaml":
        data: Any = draw(st.dictionaries(st.sampled_from(SUITE_KEYS), VALUES, max_size=3))
        data["items"] = draw(st.lists(ROW, max_size=3))
        if draw(st.booleans()):
            data["metrics"] = draw(st.lists(METRIC, max_size=2))
        return "s.yaml", draw(mutated(dump(data)))
    if kind == "jsonl":
        lines = [json.dumps(row, allow_nan=True, default=str) for row in draw(st.lists(ROW, max_size=3))] + draw(
            st.lists(st.sampled_from(['{"a": "\\ud800"}', '{"n": ' + "9" * 5000 + "}", deep(5000), "NaN", "{oops"]), max_size=1)
        )
        return "s.jsonl", draw(mutated("\n".join(lines)))
    header = draw(st.sampled_from(["id,question,expected", "question", "", "a,a", "\ufeffid,x"]))
    rows = draw(st.lists(st.text(max_size=12), max_size=3))
    return "s.csv", draw(mutated("\n".join([header, *rows])))


@pytest.fixture
def repo_dir() -> Iterator[Callable[[], Path]]:
    """A factory of fresh temporary repositories (hypothesis runs many examples per test)."""
    holders: list[tempfile.TemporaryDirectory[str]] = []

    def make() -> Path:
        holder = tempfile.TemporaryDirectory()
        holders.append(holder)
        root = Path(holder.name).resolve()
        (root / ".git").mkdir()
        (root / ".git" / "config").write_text(f"[http]\n\textraheader = AUTHORIZATION: basic {GIT_CANARY}\n")
        return root

    yield make
    for holder in holders:
        holder.cleanup()


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


# -- properties ---------------------------------------------------------------------------------------


@SETTINGS
@given(text=config_texts())
def test_any_config_loads_or_is_a_config_error(repo_dir: Callable[[], Path], text: str) -> None:
    root = repo_dir()
    path = write(root, "gradgate.yaml", text)
    try:
        config, _ = load_config(root, path)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, Config)
    for spec in (config.models.task, config.models.judge):
        assert spec.api_base is None or spec.api_base.startswith(("http://", "https://"))
    assert math.isfinite(config.models.timeout_seconds)
    with contextlib.suppress(ConfigError):  # an unknown metric name is the scorer's to refuse, before any call
        parse_metrics(list(config.metrics), "gradgate.yaml:metrics")


@SETTINGS
@given(text=prompt_texts())
def test_any_prompt_file_loads_or_is_a_config_error(repo_dir: Callable[[], Path], text: str) -> None:
    root = repo_dir()
    write(root, "prompts/inc.md", "included")
    write(root, "prompts/sub/.GIT/config", GIT_CANARY)
    path = write(root, "prompts/self.md", text)
    try:
        prompt = load_prompt(path, root)
    except ConfigError as exc:
        assert str(exc)
        return
    assert GIT_CANARY not in prompt.expanded
    assert prompt.suite is None or isinstance(prompt.suite, str)
    assert not prompt.expanded.startswith("\ufeff") and not prompt.body.startswith("---\ufeff")


@SETTINGS
@given(suite=suite_files())
def test_any_suite_loads_or_is_a_config_error(repo_dir: Callable[[], Path], suite: tuple[str, str]) -> None:
    root = repo_dir()
    name, text = suite
    path = write(root, f"evals/{name}", text)
    try:
        loaded = load_suite(path, root)
        loaded.content_hash()
        json.dumps([item.vars for item in loaded.items], default=str).encode("utf-8")  # no lone surrogates
        parse_metrics(list(loaded.spec.metrics), f"{name}:metrics")
        for item in loaded.items:
            parse_metrics(list(item.assertions), f"{name}:assert")
    except ConfigError as exc:
        assert str(exc)
        return
    assert all(not key.startswith("\ufeff") for item in loaded.items for key in item.vars)


# -- targeted cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("models: " + deep(3000), "nests"),
        ("a: &a [*a, *a]\nmodels: *a", "itself"),
        ("budget: {max_calls: " + "9" * 5000 + "}", "too many digits"),
        ("models: {timeout_seconds: .inf}", "timeout_seconds"),
        ("models: {task: {model: x/y, api_base: not a url}}", "api_base"),
        ("models: {task: {model: x/y, api_key_env: sk-abc123}}", "api_key_env"),
        ("prompts: ['']", "prompts"),
        ("prompts: ['/etc/*']", "absolute"),
        ('cache_dir: "a\\0b"', "cache_dir"),
        ("cache_dir: /tmp/x", "absolute"),
        ("metrics: [{type: regex, pattern: 5}]", "metrics[0].pattern"),
        ("metrics: [{type: regex, pattern: '('}]", "invalid regular expression"),
        ("metrics: [{type: exact, weight: .nan}]", "metrics[0].weight"),
        ("metrics: [{type: exact, weight: 0}]", "weight"),
        ("metrics: [{type: exact, weight: -1}]", "weight"),
        ("judge: {pass_threshold: .nan}", "pass_threshold"),
        ("a: 2024-13-45", "not valid YAML"),
        ("a: !!timestamp nope", "not valid YAML"),
        ('a: "\\ud800"', "surrogate"),
    ],
)
def test_config_defects_are_config_errors_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, "gradgate.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, path)
    assert needle in str(info.value) and "gradgate.yaml" in str(info.value)


def test_a_cache_dir_symlinked_outside_or_into_git_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".gradgate").mkdir(parents=True)
    (repo / ".gradgate" / "cache").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="outside the repository"):
        load_config(repo)
    (repo / ".gradgate" / "cache").unlink()
    (repo / ".git").mkdir()
    (repo / ".gradgate" / "cache").symlink_to(repo / ".git")
    with pytest.raises(ConfigError, match=r"\.git"):
        load_config(repo)
    write(repo, "gradgate.yaml", "cache_dir: .git/gradgate")
    with pytest.raises(ConfigError, match=r"\.git"):
        load_config(repo)


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ("suite: 5", "suite"),
        ("suite: [a]", "suite"),
        ("suite: {a: 1}", "suite"),
        ("suite: true", "suite"),
        ("suite: ''", "suite"),
        ('suite: "evals/a\\0.yaml"', "NUL"),
        ("description: [1]", "description"),
        ("tags: a", "tags"),
        ("id: " + deep(2000), "nests"),
        ("x: " + "1" * 5000, "too many digits"),
        ("'[/]': 1", "unknown front matter"),
    ],
)
def test_front_matter_defects_name_file_and_key(tmp_path: Path, meta: str, needle: str) -> None:
    path = write(tmp_path, "prompts/p.md", f"---\n{meta}\n---\nHi")
    with pytest.raises(ConfigError) as info:
        load_prompt(path, tmp_path)
    assert needle in str(info.value) and "prompts/p.md" in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("a.jsonl", '{"n": ' + "1" * 5000 + "}\n", "too many digits"),
        ("a.jsonl", deep(100_000) + "\n", "nests"),
        ("a.jsonl", '{"q": "\\udc80"}\n', "surrogate"),
        ("a.jsonl", '{"q": NaN}\n', "not valid JSON"),
        ("a.yaml", "items: [{vars: {1: x}}]", "not text"),
        ("a.yaml", "metrics: [{type: regex, pattern: [a]}]\nitems: [{vars: {q: x}}]", "metrics[0].pattern"),
        ("a.yaml", "items: [{vars: {q: x}, assert: [{type: contains, value: x, weight: .inf}]}]", "assert[0].weight"),
        ("a.yaml", "items: " + deep(5000), "nests"),
    ],
)
def test_suite_defects_name_file_and_key(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = write(tmp_path, f"evals/{name}", text)
    with pytest.raises(ConfigError) as info:
        load_suite(path, tmp_path)
    assert needle in str(info.value) and f"evals/{name}" in str(info.value)


def test_a_csv_saved_with_two_byte_order_marks_names_its_first_column_plainly(tmp_path: Path) -> None:
    # Found by test_any_suite_loads_or_is_a_config_error: one mark was stripped, the second named the column.
    path = write(tmp_path, "evals/s.csv", "\ufeff\ufeffquestion,expected\n0,1\n")
    [item] = load_suite(path, tmp_path).items
    assert item.vars == {"question": "0"} and item.expected == "1"


def test_jsonl_lines_split_only_at_newlines(tmp_path: Path) -> None:
    path = write(tmp_path, "evals/a.jsonl", '{"q": "a\u2028b\x85c\u2029", "expected": "x"}\r\n\n')
    [item] = load_suite(path, tmp_path).items
    assert item.vars == {"q": "a\u2028b\x85c\u2029"}


@pytest.mark.parametrize("include", ["../.git/config", ".git/config", "../.GIT/config", "x/../../.git/config", "a\x00b"])
def test_includes_never_read_the_git_directory(tmp_path: Path, include: str) -> None:
    write(tmp_path, ".git/config", GIT_CANARY)
    path = write(tmp_path, "prompts/p.md", f"Hi {{{{> {include}}}}}")
    with pytest.raises(ConfigError) as info:
        load_prompt(path, tmp_path)
    assert "prompts/p.md" in str(info.value) and GIT_CANARY not in str(info.value)


def test_symlinks_into_git_are_refused_for_prompts_includes_and_suites(tmp_path: Path) -> None:
    write(tmp_path, ".git/config", GIT_CANARY)
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "link.md").symlink_to(tmp_path / ".git" / "config")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "link.csv").symlink_to(tmp_path / ".git" / "config")
    write(tmp_path, "prompts/p.md", "---\nsuite: evals/link.csv\n---\nHi {{> link.md}}")
    with pytest.raises(ConfigError, match=r"\.git"):
        load_prompt(tmp_path / "prompts" / "p.md", tmp_path)
    with pytest.raises(ConfigError, match=r"\.git"):
        load_suite(tmp_path / "evals" / "link.csv", tmp_path)
    with pytest.raises(ConfigError, match=r"\.git"):
        discover(tmp_path, Config(prompts=["prompts/link.md"]))


def test_globs_skip_files_inside_git(tmp_path: Path) -> None:
    write(tmp_path, ".git/notes.md", "not a prompt")
    write(tmp_path, "p.md", "---\nsuite: s.jsonl\n---\nHi")
    write(tmp_path, "s.jsonl", '{"expected": "x"}\n')
    targets = discover(tmp_path, Config(prompts=["**/*.md"]))
    assert [t.prompt.rel_path for t in targets] == ["p.md"]


# -- the command line -----------------------------------------------------------------------------------

GOOD_PROMPT = "Hi {{name}}"
GOOD_SUITE = "items: [{vars: {name: x}, expected: x}]"


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every Session gets a scripted backend; returns its list of calls (must stay empty on bad input)."""
    from gradgate.models.scripted import ScriptedBackend

    backend = ScriptedBackend(lambda spec, messages: "x")
    script_sessions(monkeypatch, backend)
    return backend.calls


def run_cli(*args: str) -> tuple[int, str]:
    from gradgate.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("files", "args", "needles"),
    [
        ({".git/config": GIT_CANARY, "prompts/a.md": "Hi {{> ../.git/config}}"}, [], ["prompts/a.md", ".git"]),
        ({"prompts/a.md": "Hi {{> a\x00b}}"}, [], ["prompts/a.md", "NUL"]),
        ({"prompts/a.md": "\ufeff---\nsuite: 42\n---\nHi"}, [], ["prompts/a.md:suite"]),
        ({"prompts/a.md": "---\n'[/]': x\n---\nHi"}, [], ["prompts/a.md", "[/]"]),
        ({"gradgate.yaml": "models: " + deep(3000)}, [], ["gradgate.yaml", "nests"]),
        ({"gradgate.yaml": "prompts: ['']"}, [], ["gradgate.yaml", "prompts"]),
        ({"gradgate.yaml": "prompts: ['/etc/*.conf']"}, [], ["gradgate.yaml", "absolute"]),
        ({"gradgate.yaml": "models: {timeout_seconds: .inf}"}, [], ["gradgate.yaml", "timeout_seconds"]),
        ({"gradgate.yaml": "models: {task: {model: a/b, api_base: 'not a url'}}"}, [], ["gradgate.yaml", "api_base"]),
        ({"gradgate.yaml": 'cache_dir: "c\\0"'}, [], ["gradgate.yaml", "cache_dir"]),
        (
            {"prompts/a.md": GOOD_PROMPT, "evals/a.yaml": "metrics: [{type: regex, pattern: 7}]\n" + GOOD_SUITE},
            [],
            ["evals/a.yaml"],
        ),
        ({"prompts/a.md": GOOD_PROMPT, "evals/a.yaml": "metrics: [{type: exact, weight: 0}]\n" + GOOD_SUITE}, [], ["weight"]),
        ({"prompts/a.md": GOOD_PROMPT, "evals/a.jsonl": '{"name": ' + "7" * 5000 + "}"}, [], ["evals/a.jsonl", "digits"]),
        ({"prompts/a.md": GOOD_PROMPT, "evals/a.jsonl": '{"name": "\\ud800"}'}, [], ["evals/a.jsonl", "surrogate"]),
        ({"prompts/a.md": GOOD_PROMPT, "evals/a.yaml": GOOD_SUITE, "out": "a file"}, ["--out", "{root}/out"], ["--out"]),
        ({"prompts/a.md": GOOD_PROMPT, "evals/a.yaml": GOOD_SUITE}, ["--out", "/dev/null"], ["--out", "/dev/null"]),
        ({"prompts/a.md": GOOD_PROMPT, "evals/a.yaml": GOOD_SUITE}, ["--out", "/proc/self/x"], ["--out"]),
        ({"prompts/a.md": GOOD_PROMPT, "evals/a.yaml": GOOD_SUITE}, ["--prompt", "[/]"], ["unknown prompt", "[/]"]),
    ],
)
def test_bad_input_exits_2_before_any_model_call(
    tmp_path: Path, scripted: list[Any], files: dict[str, str], args: list[str], needles: list[str]
) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    code, output = run_cli("eval", "--repo", str(tmp_path), *[a.format(root=tmp_path) for a in args])
    assert code == 2, output
    assert "Traceback" not in output and "internal error" not in output
    for needle in needles:
        assert needle in output, output
    assert GIT_CANARY not in output
    assert scripted == []


def test_a_cache_symlink_outside_the_repository_exits_2(tmp_path: Path, scripted: list[Any]) -> None:
    repo = tmp_path / "repo"
    write(repo, "prompts/a.md", GOOD_PROMPT)
    write(repo, "evals/a.yaml", GOOD_SUITE)
    (repo / ".gradgate").mkdir()
    (repo / ".gradgate" / "cache").symlink_to(tmp_path)
    code, output = run_cli("eval", "--repo", str(repo), "--out", str(tmp_path / "out"))
    assert code == 2 and "cache_dir" in output and "outside the repository" in output, output
    assert scripted == []


@pytest.mark.parametrize(
    "budget", [["--budget-calls", "0"], ["--budget-tokens", "0"], ["--budget-usd", "nan"], ["--budget-seconds", "inf"]]
)
def test_empty_or_non_finite_budgets_are_refused(tmp_path: Path, scripted: list[Any], budget: list[str]) -> None:
    write(tmp_path, "prompts/a.md", GOOD_PROMPT)
    write(tmp_path, "evals/a.yaml", GOOD_SUITE)
    code, output = run_cli("optimize", "--repo", str(tmp_path), "--out", str(tmp_path / "out"), *budget)
    assert code == 2 and budget[0] in output and "Traceback" not in output, output
    assert scripted == []


def test_the_real_entry_point_refuses_a_git_include(tmp_path: Path) -> None:
    write(tmp_path, ".git/config", GIT_CANARY)
    write(tmp_path, "prompts/a.md", "Hi {{> ../.git/config}}")
    result = subprocess.run(
        [sys.executable, "-m", "gradgate", "eval", "--repo", str(tmp_path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "prompts/a.md" in result.stderr and ".git" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and GIT_CANARY not in result.stderr + result.stdout
