"""Provider faults against a real OpenAI-compatible server on loopback (tests/fault_server.py).

The gateway with the real litellm backend must retry 429/5xx/garbage/empty/hung/dropped replies, refuse
an unbounded Retry-After, and give up as an infrastructure error; `gradgate eval` (the real CLI, in a
subprocess) must exit 3 with its partial results written, never call the server more often than the
budget allows, and exit 2 before any call when an API key variable is unset.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradgate.app.eval_job import EvalOutcome, run_eval
from gradgate.core.budget import BudgetTracker
from gradgate.core.config import BudgetConfig, ModelsConfig, load_config
from gradgate.core.retry_after import parse_retry_after
from gradgate.errors import MissingPackageError, ModelError
from gradgate.models.gateway import Gateway
from gradgate.models.litellm_backend import LiteLLMBackend
from gradgate.models.session import Session
from tests.fault_server import FaultServer

MSG = [{"role": "user", "content": "Say ok."}]
ITEMS = 6


def models_for(server: FaultServer, **settings: Any) -> dict[str, Any]:
    spec = {"model": "openai/fault", "api_base": server.base_url}
    return {"task": spec, "judge": spec, "timeout_seconds": 1, "max_retries": 2, "max_retry_wait_seconds": 5, **settings}


def gateway_for(server: FaultServer, **settings: Any) -> tuple[Gateway, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:  # the waits are asserted, not spent
        sleeps.append(seconds)

    models = ModelsConfig.model_validate(models_for(server, **settings))
    return Gateway(models, budget=BudgetTracker(BudgetConfig()), backend=LiteLLMBackend(), sleep=sleep), sleeps


# -- the gateway over real HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "503", "garbage", "empty", "nocontent", "drop", "hang"])
def test_a_provider_fault_is_retried(fault: str) -> None:
    plan = [fault] if fault == "hang" else [fault, fault]  # a hang costs a whole timeout
    with FaultServer(plan) as server:
        gateway, sleeps = gateway_for(server)
        reply = asyncio.run(gateway.complete("task", MSG))
    assert reply.text == "ok"
    assert server.faults == [*plan, "ok"] and gateway.budget.calls == server.calls == len(plan) + 1
    assert gateway.budget.usage["task"].retries == len(plan)
    if fault == "429":
        assert sleeps == [1.0, 1.0]  # the server's Retry-After, honoured


def test_faults_past_max_retries_are_an_infrastructure_error() -> None:
    with FaultServer(then="503") as server:
        gateway, sleeps = gateway_for(server)
        with pytest.raises(ModelError, match="did not answer after 3 attempts") as caught:
            asyncio.run(gateway.complete("task", MSG))
    assert caught.value.exit_code == 3 and server.calls == 3 and len(sleeps) == 2


def test_a_retry_after_over_the_cap_fails_without_waiting() -> None:
    with FaultServer(then="429", retry_after="100000") as server:
        gateway, sleeps = gateway_for(server)
        with pytest.raises(ModelError, match=r"asked to wait 100000 s before a retry, more than models\.max_retry_wait"):
            asyncio.run(gateway.complete("task", MSG))
    assert server.calls == 1 and sleeps == []


def test_a_provider_whose_package_is_missing_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """litellm reports a provider's failed import as an APIConnectionError: not retried, exit 2 naming the package."""
    import litellm

    class NeedsAbsentSdk(litellm.CustomLLM):  # type: ignore[misc]
        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            import gradgate_absent_sdk  # type: ignore[import-not-found]  # noqa: F401

    provider = {"provider": "needs-absent-sdk", "custom_handler": NeedsAbsentSdk()}
    monkeypatch.setattr(litellm, "custom_provider_map", [*litellm.custom_provider_map, provider])
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    models = ModelsConfig.model_validate({"task": "needs-absent-sdk/model", "max_retries": 4})
    gateway = Gateway(models, budget=BudgetTracker(BudgetConfig()), backend=LiteLLMBackend(), sleep=sleep)
    with pytest.raises(MissingPackageError) as caught:
        asyncio.run(gateway.complete("task", MSG))
    assert caught.value.exit_code == 2 and "'gradgate_absent_sdk'" in caught.value.message
    assert "pip install gradgate_absent_sdk" in (caught.value.hint or "")
    assert gateway.budget.calls == 1 and sleeps == []


def test_retry_after_forms() -> None:
    soon = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert 20 < (parse_retry_after({"retry-after": soon}) or 0) <= 30
    assert parse_retry_after({"retry-after": "inf"}) == float("inf")
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({"retry-after": "nan"}) is None
    assert parse_retry_after(None) is None and parse_retry_after({}) is None


# -- the real CLI ---------------------------------------------------------------------------------------------------

PROMPT = "---\nid: echo\n---\nSay ok. ({{n}})\n"


def make_repo(root: Path, server: FaultServer, budget: dict[str, Any] | None = None, **models: Any) -> Path:
    repo = root / "repo"
    (repo / "prompts").mkdir(parents=True)
    (repo / "evals").mkdir()
    (repo / "prompts" / "echo.md").write_text(PROMPT, encoding="utf-8")
    items = [{"id": f"i{n}", "vars": {"n": str(n)}, "expected": "ok"} for n in range(ITEMS)]
    (repo / "evals" / "echo.yaml").write_text(yaml.safe_dump({"metrics": ["exact"], "items": items}), encoding="utf-8")
    # One call at a time (a fixed order of faults) and short back-offs (the waits are real here).
    config = {"models": models_for(server, **{"concurrency": 1, "max_retry_wait_seconds": 0.2, **models}), "budget": budget or {}}
    (repo / "gradgate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return repo


def run_eval_cli(repo: Path, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k not in unset}
    environment.update(HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_PROXY="127.0.0.1")
    command = [sys.executable, "-m", "gradgate", "eval", "--repo", str(repo), "--out", str(repo / "out"), "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)


def results(repo: Path) -> dict[str, Any]:
    return json.loads((repo / "out" / "results.json").read_text(encoding="utf-8"))


def eval_in_process(repo: Path) -> EvalOutcome:
    """The eval job as the CLI runs it, without a new interpreter (litellm takes seconds to import)."""
    config, _ = load_config(repo)
    session = Session.open(repo, config, use_cache=False)
    return asyncio.run(run_eval(session, out_dir=repo / "out"))


def test_server_killed_mid_run_exit_3_with_partial_results(tmp_path: Path) -> None:
    with FaultServer(["ok", "ok", "ok", "kill"]) as server:
        repo = make_repo(tmp_path, server)
        done = run_eval_cli(repo)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and "did not answer after 3 attempts" in done.stderr
    data = results(repo)
    [prompt] = data["prompts"]
    assert data["complete"] is False and "did not answer" in data["error"]
    assert (prompt["n_scored"], prompt["n_items"], prompt["mean_score"]) == (3, ITEMS, 1.0)
    assert server.calls == 4  # three answers and the request the dying server took; the retries were refused
    # Three answers, three refused attempts, and at most one more the semaphore let through as the item failed
    # (cancelled at once, but counted: a provider may bill a request it received).
    assert 3 + 3 <= data["budget"]["calls"] <= 3 + 3 + 1
    assert "Incomplete run" in (repo / "out" / "report.md").read_text(encoding="utf-8")


def test_the_budget_caps_calls_the_server_sees_among_faults(tmp_path: Path) -> None:
    plan = ["500", "ok", "garbage", "empty", "ok", "drop", "503", "ok", "nocontent", "ok"]
    with FaultServer(plan) as server:
        repo = make_repo(tmp_path, server, budget={"max_calls": 7})
        done = run_eval_cli(repo)
    assert done.returncode == 3, done.stderr
    assert "budget ran out" in done.stderr and "Traceback" not in done.stderr
    data = results(repo)
    [prompt] = data["prompts"]
    assert server.calls <= 7 and data["budget"]["calls"] == server.calls == 7
    assert server.faults == plan[:7]
    assert prompt["n_scored"] == 2 and not prompt["complete"]  # i0 in two calls, i1 in three, i2 cut short after two
    assert data["budget"]["by_role"]["task"]["retries"] == 4


def test_an_unbounded_retry_after_fails_fast(tmp_path: Path) -> None:
    with FaultServer(["ok"], then="429", retry_after="100000") as server:
        repo = make_repo(tmp_path, server)
        started = time.monotonic()
        outcome = eval_in_process(repo)
        elapsed = time.monotonic() - started
    assert outcome.exit_code == 3 and isinstance(outcome.error, ModelError) and elapsed < 30
    assert "asked to wait 100000 s" in outcome.error.message
    data = results(repo)
    assert data["complete"] is False and data["prompts"][0]["n_scored"] == 1 and server.calls == 2


def test_retry_waits_count_against_the_time_budget(tmp_path: Path) -> None:
    with FaultServer(["ok"], then="429", retry_after="20") as server:  # within the cap, beyond the time left
        repo = make_repo(tmp_path, server, budget={"max_seconds": 10}, max_retry_wait_seconds=30)
        outcome = eval_in_process(repo)
    assert outcome.exit_code == 3 and outcome.error is None  # the budget stopped it, per item
    [prompt] = results(repo)["prompts"]
    assert prompt["n_scored"] == 1 and not prompt["complete"]
    assert "no time left to wait 20.0 s" in (prompt["stopped_reason"] or "")
    assert server.calls == ITEMS  # one call an item: no request was retried, every wait would pass the limit


def test_an_unset_api_key_variable_exits_2_before_any_call(tmp_path: Path) -> None:
    with FaultServer() as server:
        repo = make_repo(tmp_path, server)
        config = yaml.safe_load((repo / "gradgate.yaml").read_text(encoding="utf-8"))
        config["models"]["task"]["api_key_env"] = "GRADGATE_FAULT_TEST_KEY"
        (repo / "gradgate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        done = run_eval_cli(repo, unset=("GRADGATE_FAULT_TEST_KEY",))
    assert done.returncode == 2, done.stderr
    assert "GRADGATE_FAULT_TEST_KEY is not set" in done.stderr and "models.task.api_key_env" in done.stderr
    assert "Traceback" not in done.stderr and server.calls == 0
