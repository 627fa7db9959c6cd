"""Embedded and folder models in process: load once, render chats, generate, and score answer options.

Device and dtype are chosen here for every in-process model user (GReaTer included): CUDA in bfloat16 when
present, else CPU in float32. Heavy libraries (torch, transformers) are imported inside functions, so importing
gradgate stays fast.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from gradgate.core.environment import prepare_torch_env
from gradgate.core.method_settings import Dtype
from gradgate.errors import ConfigError, UnknownModelError
from gradgate.models.local.convert import converted_model_dir
from gradgate.models.local.kv import returned_cache, with_cache
from gradgate.models.local.prefix_cache import PrefixCache
from gradgate.models.local.registry import LOCAL_PREFIX, embedded_name, known_models_text

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# A base model asked to "reply" runs on into invented turns; a blank line ends its answer unless the caller
# says otherwise.
BASE_MODEL_DEFAULT_STOP: tuple[str, ...] = ("\n\n",)

DEFAULT_ANSWER_PREFIX = "The answer is "

# The dtypes a configuration may name (torch attribute names).
DTYPE_NAMES: tuple[str, ...] = get_args(Dtype)


# ------------------------------------------------------------------------------------------------------------
# Loading


_LOAD_LOCK = threading.Lock()
# Torch work is serialized: litellm may call from several threads, and two forward passes on 2 cores only fight.
TORCH_LOCK = threading.RLock()
_LOADED: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def choose_device(device: str | None = None, dtype: str | torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """Where an in-process model runs: CUDA in bfloat16 when present, else CPU in float32, unless given.

    ``dtype`` is a torch dtype or one of ``DTYPE_NAMES`` (as gradgate.yaml spells it). fp32 on CPU: decoding a
    row is bound by reading the weights and no faster in bf16; scoring long prompts is (1.4x on a 2-core AMX
    machine, SmolLM2-135M, 230-token stories), but bf16 there flipped 3-4 of 105 causal_judgement decisions.
    fp32 keeps scores stable between runs and machines, and is safer for gradients.
    """
    prepare_torch_env()
    import torch

    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        return chosen, torch.bfloat16 if chosen.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPE_NAMES)} (got {dtype!r})")
        return chosen, getattr(torch, dtype)
    return chosen, dtype


def _resolve_source(name_or_path: str) -> str:
    key = embedded_name(name_or_path)
    if key is not None:
        return str(converted_model_dir(key))
    if name_or_path.startswith(LOCAL_PREFIX):
        raise UnknownModelError(f"unknown embedded model {name_or_path!r}", hint=f"known embedded models: {known_models_text()}")
    return name_or_path


def load_causal_lm(
    name_or_path: str, *, device: str | None = None, dtype: str | torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (once per process) a causal LM and its tokenizer, in eval mode.

    ``name_or_path`` is an embedded name (``smollm2-135m-instruct``, ``local/gemma-3-270m``), a local Hugging
    Face folder, or a hub id (only where a network exists). Device and dtype default as in ``choose_device``.
    """
    chosen, dtype = choose_device(device, dtype)
    source = _resolve_source(name_or_path)
    key = (source, str(chosen), str(dtype))
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Weight-loading bars: off at the CLI's default verbosity, on with -v (gradgate.app.progress.quiet_libraries).
        started = time.monotonic()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise UnknownModelError(
                f"could not load the model {name_or_path!r}: {exc}",
                hint=f"use an embedded model ({known_models_text()}), a local model folder, "
                "or a hub id on a machine with network access",
            ) from exc
        model.to(chosen)
        model.eval()
        if tokenizer.pad_token is None:  # batched generation pads; the end-of-text token is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        logger.info("loaded %s on %s (%s) in %.1f s", name_or_path, chosen, dtype, time.monotonic() - started)
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


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]]) -> tuple[str, bool]:
    """The prompt text and whether the tokenizer must add its own special tokens (only for plain text)."""
    if has_chat_template(tokenizer):
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


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids that end a reply: the generation config's (chat models end a turn with their own) and the tokenizer's."""
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


def _make_sampler(temperature: float, seeds: Sequence[int | None]) -> Any:
    """A logits processor that samples each row with its own seeded generator and leaves only the chosen token.

    ``model.generate`` samples from the global RNG; drawing here instead (then decoding greedily) makes a seed
    reproduce a reply whatever else the process did with torch's RNG, and whatever rows shared its batch.
    """
    prepare_torch_env()
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators: list[torch.Generator] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if not self.generators:
                for seed in seeds:
                    generator = torch.Generator(device=scores.device)
                    if seed is None:
                        generator.seed()
                    else:
                        generator.manual_seed(seed)
                    self.generators.append(generator)
            probs = torch.softmax(scores.float() / temperature, dim=-1)  # (batch, vocab)
            chosen = torch.cat(
                [torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(self.generators)]
            )  # (batch, 1): row i drawn by its own generator, as if it ran alone
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
    seeds: Sequence[int | None] | None = None,
    stop: Sequence[str] | None = None,
    max_time: float | None = None,
) -> list[LocalGeneration]:
    """Generate one reply per conversation in a single left-padded ``model.generate`` call (KV cache on).

    Greedy when ``temperature == 0``. With sampling, row i draws from its own generator seeded with
    ``seeds[i]`` (None: unseeded), so a seeded reply is the one that conversation gets alone. Stop strings end
    generation and are cut from the text; a base model (no chat template) stops at a blank line unless
    ``stop`` is given (``stop=[]`` disables that).
    """
    if not batch:
        return []
    if seeds is not None and len(seeds) != len(batch):
        raise ValueError(f"{len(seeds)} seeds for {len(batch)} conversations")
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
        stop = () if has_chat_template(tokenizer) else BASE_MODEL_DEFAULT_STOP
    stop = [s for s in stop if s]
    eos = eos_ids(lm, tokenizer)

    with TORCH_LOCK, torch.inference_mode():
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

            row_seeds = [None] * len(batch) if seeds is None else list(seeds)
            kwargs["logits_processor"] = LogitsProcessorList([_make_sampler(temperature, row_seeds)])
        if stop:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([_make_stopping_criteria(tokenizer, stop, prompt_len)])
        output = lm.generate(**enc, **kwargs)  # (batch, prompt_len + new)
    prompt_tokens = [int(n) for n in enc["attention_mask"].sum(dim=1)]  # (batch,) real tokens per prompt
    return _replies(tokenizer, output[:, prompt_len:].tolist(), prompt_tokens, eos, stop, max_tokens)


def _replies(
    tokenizer: PreTrainedTokenizerBase,
    new_tokens: list[list[int]],
    prompt_tokens: list[int],
    eos: Sequence[int],
    stop: Sequence[str],
    max_tokens: int,
) -> list[LocalGeneration]:
    """Each row's generated ids as a reply: cut at the first end token, then at the first stop string."""
    # A finished row is filled with padding up to the longest row; the first end or pad token closes the reply.
    enders = set(eos) | ({tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else set())
    results = []
    for new, n_prompt in zip(new_tokens, prompt_tokens, strict=True):
        length = next((i + 1 for i, token in enumerate(new) if token in enders), len(new))
        reply = str(tokenizer.decode(new[:length], skip_special_tokens=True))
        reply, stopped = _truncate_at_stop(reply, stop)
        ended = stopped or length < max_tokens or (bool(new) and new[length - 1] in enders)
        finish: Literal["stop", "length"] = "stop" if ended else "length"
        results.append(LocalGeneration(text=reply, prompt_tokens=n_prompt, completion_tokens=length, finish_reason=finish))
    return results


# ------------------------------------------------------------------------------------------------------------
# Multiple-choice scoring

# Keyed by id(model): a loaded model stays in _LOADED for the life of the process, so its id names it.
PREFIX_CACHE = PrefixCache()


def score_options(
    model: str,
    messages: Sequence[dict[str, Any]],
    options: Sequence[str],
    *,
    answer_prefix: str | None = None,
    reduction: Literal["sum", "mean"] = "sum",
) -> list[float]:
    """Log-likelihood of each option as the continuation of the prompt followed by ``answer_prefix`` (None:
    ``DEFAULT_ANSWER_PREFIX``).

    The prompt is chat-templated with the generation prompt (plain text for a base model).
    ``reduction="sum"`` (the default) is the log-probability of the whole option, fair for short
    answers such as "True"/"False" or "(A)": a per-token mean would favour long options whose later tokens are
    easy once the first is chosen. ``"mean"`` divides by the option's token count, for long free-text options.

    The prompt runs once; its KV cache is shared by one batched forward pass over all options. Only the tokens
    after the longest start this model scored recently run at all (``prefix_cache``): a suite's items share the
    template, instruction and demonstrations before their own input.
    """
    if not options:
        return []
    if any(not o for o in options):
        raise ConfigError("every answer option must be non-empty text", hint=f"options were {list(options)!r}")
    prepare_torch_env()
    import torch

    lm, tokenizer = load_causal_lm(model)
    prompt, special = render_prompt(tokenizer, messages)
    context = prompt + (DEFAULT_ANSWER_PREFIX if answer_prefix is None else answer_prefix)
    # Trailing spaces belong to the option ("is" + " blue"), as BPE vocabularies spell words with their
    # leading space.
    stripped = context.rstrip(" ")
    spaces = context[len(stripped) :]
    context_ids = tokenizer(stripped, add_special_tokens=special)["input_ids"]
    option_ids = [tokenizer(spaces + o, add_special_tokens=False)["input_ids"] for o in options]

    with TORCH_LOCK, torch.inference_mode():
        device = lm.device
        prefix = torch.tensor([context_ids], device=device)  # (1, P)
        seen, cache = PREFIX_CACHE.take(id(lm), context_ids)  # the first `seen` tokens come from an earlier prompt
        out = lm(input_ids=prefix[:, seen:], use_cache=True, logits_to_keep=1, **with_cache(lm, cache))
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (1, V): distribution of each option's 1st token
        cache = returned_cache(out)
        PREFIX_CACHE.keep(id(lm), context_ids, cache)
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
            logits = lm(input_ids=cont[:, :-1], attention_mask=attention[:, :-1], **with_cache(lm, cache)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # (n, L-1, V)
            rest = logprobs.gather(2, cont[:, 1:].unsqueeze(-1)).squeeze(-1)  # (n, L-1)
            scores_by_token = torch.cat([scores_by_token, rest], dim=1)  # (n, L)
        totals = (scores_by_token * mask).sum(dim=1)  # (n,)
        if reduction == "mean":
            totals = totals / mask.sum(dim=1)
    return [float(t) for t in totals]
