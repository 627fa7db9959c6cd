"""GReaTer: a small open model optimizes its own prompt from token gradients over its reasoning.

Das et al., "GReaTer: Gradients over Reasoning Makes Smaller Language Models Strong Prompt Optimizers" (2024).
No large model gives feedback; one step at one position of the instruction:

1. generation: greedy reasoning for every training item with the current instruction (batched, KV cache, left padding);
2. proposal: top-k next tokens at that position per item, intersected over random item subsets, then united; word
   tokens only; the current token always stays in;
3. gradient: loss = cross-entropy of the gold answer after the reasoning and ``EXTRACTION_PHRASE`` plus
   ``fluency_weight`` x NLL of the instruction tokens, differentiated w.r.t. a one-hot weight over the candidates at
   that position (it reaches the slot through the attention of the reasoning and answer tokens), summed over items;
4. selection: regenerate the reasoning with the few candidates of most negative gradient and keep the lowest
   answer-loss-plus-fluency score (the current token included, so the train score never rises);
5. advance: next position; past the end wrap around or extend the instruction (``past_end``).

One row of the gradient pass (``[s]`` is the optimized slot)::

    [chat head + text before the span][instruction ..[s]..][text after + chat tail][reasoning][phrase][gold]
     fixed, per item                   optimized            fixed, per item         greedy     fixed   loss

Optimizable span: the free text of the prompt body outside ``{{variable}}`` placeholders, either after the last
placeholder (``suffix``) or before the first (``prefix``); ``auto`` takes the suffix when it holds a letter, else the
prefix. Whitespace around the span and all text between placeholders stay fixed. A body with no free text gets
``SEED_INSTRUCTION`` as a suffix. Token ids, not text, are the optimized state: the returned prompt is their decoding.

Cheaper than the published implementation: batched greedy decoding with a KV cache, the winning candidate's
reasoning reused as the next step's, answers scored from the cached prefix, and ``lm_head`` applied only at the
positions whose logits are used.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from gradgate.errors import BudgetExhausted, ConfigError, ModelError
from gradgate.optimizers.base import GradientNote, OptimizeContext, Optimizer
from gradgate.optimizers.greater.prompts import (
    EXTRACTION_PHRASE,
    SEED_INSTRUCTION,
    build_answer_tail,
)
from gradgate.core.prompts import VARIABLE_RE, render_template

log = logging.getLogger(__name__)

PastEnd = Literal["wrap", "extend"]
SpanChoice = Literal["auto", "prefix", "suffix"]

# Splits the chat-templated user message around the instruction; never sent to a model.
_SENTINEL = "\u2063GRADGATE-INSTRUCTION\u2063"
_LABEL_LINE = re.compile(r"[A-Za-z][\w ]{0,30}:")  # "A:", "Answer:": kept fixed at the end of a suffix
_WORD_RE = re.compile(r"[A-Za-z ]*[A-Za-z][A-Za-z ]*|\s?[.,]")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
PHASES = ("generation", "proposal", "gradient", "selection")


@dataclass
class GreaterConfig:
    steps: int = 8  # positions visited; each is one full GReaTer step
    top_k: int = 40  # paper: top-40 next tokens per item at the optimized position
    num_intersections: int = 6  # paper: 6 random item subsets are intersected, then united
    intersection_size: int = 5  # items per subset; fewer items -> larger intersections
    fluency_weight: float = 0.2  # paper's lambda on the prompt NLL; keeps the prompt readable
    num_eval_candidates: int = 3  # candidates (best gradient) whose reasoning is regenerated and scored
    answer_temperature: float = 0.2  # divides the answer logits in the loss: sharper, as in the paper
    max_items: int = 16  # training items used per step; the paper uses more, a 2-core CPU cannot
    max_new_tokens: int = 64  # reasoning length; the paper lets reasoning run to a few hundred tokens
    answer_tokens: int = 8  # greedy tokens read after the phrase when measuring accuracy (evaluate())
    past_end: PastEnd = "wrap"  # past the last instruction token: start again at 0, or grow the instruction
    max_instruction_tokens: int = 48  # "extend" stops growing here and wraps
    span: SpanChoice = "auto"  # which free text of the body is optimized (see module docstring)
    use_chat_template: bool = True  # wrap the prompt as a user turn when the tokenizer has a chat template
    extraction_phrase: str = EXTRACTION_PHRASE
    batch_size: int = 16  # rows per batched generation (KV cache memory)
    grad_batch_size: int = 16  # rows per gradient pass (activation memory: keep small for large models)
    seed: int = 0  # item order and subset sampling; greedy decoding is otherwise deterministic
    device: str | None = None  # None: cuda when present, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu (float64 for gradient checks)
    budget_role: str = "optimizer"  # role charged to the shared budget

    def validate(self) -> None:
        positive = (
            "steps",
            "top_k",
            "num_intersections",
            "intersection_size",
            "num_eval_candidates",
            "max_items",
            "max_new_tokens",
            "answer_tokens",
            "max_instruction_tokens",
            "batch_size",
            "grad_batch_size",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"greater.{name} must be at least 1 (got {getattr(self, name)})")
        if self.answer_temperature <= 0:
            raise ConfigError(f"greater.answer_temperature must be positive (got {self.answer_temperature})")
        if self.fluency_weight < 0:
            raise ConfigError(f"greater.fluency_weight must not be negative (got {self.fluency_weight})")
        if self.past_end not in ("wrap", "extend"):
            raise ConfigError(f"greater.past_end must be 'wrap' or 'extend' (got {self.past_end!r})")
        if self.span not in ("auto", "prefix", "suffix"):
            raise ConfigError(f"greater.span must be 'auto', 'prefix' or 'suffix' (got {self.span!r})")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ConfigError(f"greater.dtype must be one of {', '.join(_DTYPES)} (got {self.dtype!r})")


class ItemLike(Protocol):
    @property
    def vars(self) -> Mapping[str, Any]: ...
    @property
    def expected(self) -> str | None: ...


class BudgetLike(Protocol):
    def check_can_spend(self, calls: int, tokens: int) -> None: ...
    def charge(self, role: str, calls: int, prompt_tokens: int, completion_tokens: int) -> None: ...


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class CandidateScore:
    token_id: int
    token: str
    gradient: float  # d loss / d one-hot weight; most negative = most promising
    score: float | None = None  # answer loss + fluency after regenerating the reasoning (evaluated ones only)
    accuracy: float | None = None  # share of items whose greedy answer reproduces the gold tokens


@dataclass(frozen=True)
class GreaterStep:
    step: int
    position: int
    old_token: str  # "" when the step tried to extend the instruction
    new_token: str  # == old_token when nothing beat the current instruction
    prompt_text: str  # the whole prompt body after this step
    loss: float  # score of the kept instruction
    accuracy: float  # train accuracy of the kept instruction (teacher-forced greedy match)
    accepted: bool
    candidates: tuple[CandidateScore, ...]
    phase_seconds: Mapping[str, float]
    state: Mapping[str, Any]  # persist it; pass it back as optimize(state=...) to resume after this step


@dataclass(frozen=True)
class GreaterResult:
    best_prompt: str
    best_instruction: str
    initial_prompt: str
    best_score: float
    initial_score: float
    best_accuracy: float
    initial_accuracy: float
    trajectory: tuple[GreaterStep, ...]
    stopped: str  # "steps" or "budget"
    calls: int
    prompt_tokens: int
    completion_tokens: int
    seed: int
    model: str
    config: Mapping[str, Any]
    state: Mapping[str, Any]


@dataclass(frozen=True)
class EvalReport:
    accuracy: float
    answers: tuple[str, ...]
    correct: tuple[bool, ...]


# ----------------------------------------------------------------------------------------------------------------
# Pure helpers: prompt splitting, candidate filtering, position advance


@dataclass(frozen=True)
class PromptSplit:
    head: str  # body text up to the instruction (may hold placeholders), fixed
    instruction: str  # the optimized free text
    tail: str  # body text after the instruction, fixed

    def join(self, instruction: str) -> str:
        return self.head + instruction + self.tail


def split_prompt(body: str, span: SpanChoice = "auto") -> PromptSplit:
    """Cut the body into fixed head, optimized instruction and fixed tail (see the module docstring).

    The instruction is made of whole lines without placeholders: those after the last placeholder's line
    (``suffix``, trailing label lines such as "A:" excluded) or those before the first placeholder's line
    (``prefix``), so labels like "Question: {{q}}" stay fixed.
    """
    matches = list(VARIABLE_RE.finditer(body))
    if not matches:
        raise ConfigError(
            "the prompt has no {{variable}} placeholder, so the items' inputs have nowhere to go",
            hint="put the input in the body, e.g. 'Question: {{question}}'",
        )
    prefix_end = body.rfind("\n", 0, matches[0].start()) + 1  # start of the first placeholder's line
    newline = body.find("\n", matches[-1].end())
    suffix_start = len(body) if newline < 0 else newline + 1  # just after the last placeholder's line
    suffix_end = len(body)
    lines = body[suffix_start:].splitlines(keepends=True)
    while lines and (not lines[-1].strip() or _LABEL_LINE.fullmatch(lines[-1].strip())):
        suffix_end -= len(lines.pop())
    has_letter = re.compile(r"[A-Za-z]").search
    if span == "suffix" or (span == "auto" and has_letter(body[suffix_start:suffix_end])):
        start, end = suffix_start, suffix_end
    elif span == "prefix" or (span == "auto" and has_letter(body[:prefix_end])):
        start, end = 0, prefix_end
    else:
        start = end = suffix_start
    text = body[start:end]
    core = text.strip()
    if not core:  # nothing to optimize there: seed an instruction on its own line
        head, tail = body[:start], body[end:]
        if head and not head.endswith("\n"):
            head += "\n"
        if tail and not tail.startswith("\n"):
            tail = "\n" + tail
        return PromptSplit(head=head, instruction=SEED_INSTRUCTION, tail=tail)
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return PromptSplit(head=body[:start] + lead, instruction=core, tail=trail + body[end:])


def is_word_text(text: str) -> bool:
    """Letters and spaces (at least one letter), or a lone '.' / ',' (optionally after a space)."""
    return bool(_WORD_RE.fullmatch(text))


class WordFilter:
    """Which token ids decode to word tokens; decodes lazily and remembers."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._known: dict[int, bool] = {}

    def __call__(self, token_id: int) -> bool:
        if token_id not in self._known:
            ok = token_id not in self._special and is_word_text(self._tokenizer.decode([token_id]))
            self._known[token_id] = ok
        return self._known[token_id]


def propose_candidates(
    topk: Tensor,
    current_id: int,
    *,
    num_intersections: int,
    intersection_size: int,
    is_word: Callable[[int], bool],
    generator: torch.Generator,
    fallback: int = 10,
) -> list[int]:
    """Candidate ids for one slot: current id first, then the united subset intersections (sorted).

    topk: (N, k) next-token ids per item at the slot. Each of ``num_intersections`` random subsets of
    ``intersection_size`` items keeps the ids in every member's top-k; the union over subsets is filtered to word
    tokens. When the union is empty (common with few, diverse items) the ``fallback`` most frequent word tokens over
    all items' top-k are used instead, so a step always has something to try.
    """
    n = topk.shape[0]
    rows = [set(r) for r in topk.tolist()]
    united: set[int] = set()
    for _ in range(num_intersections):
        members = torch.randperm(n, generator=generator)[: min(intersection_size, n)].tolist()
        united |= set.intersection(*(rows[i] for i in members))
    words = sorted(t for t in united if t != current_id and is_word(t))
    if not words:
        counts = Counter(t for r in topk.tolist() for t in r)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        words = sorted([t for t, _ in ranked if t != current_id and is_word(t)][:fallback])
    return [current_id, *words]


def advance_position(position: int, length: int, past_end: PastEnd, max_length: int) -> int:
    """Position of the next step. ``position == length`` is the extension slot (only with past_end='extend')."""
    nxt = position + 1
    if nxt < length:
        return nxt
    if past_end == "extend" and length < max_length and nxt <= length:
        return length
    return 0


# ----------------------------------------------------------------------------------------------------------------
# The id-level engine: generation, proposal inputs, one-hot gradient


@dataclass(frozen=True)
class EncodedItem:
    before: tuple[int, ...]  # chat head + rendered text before the instruction; never empty
    after: tuple[int, ...]  # rendered text after the instruction + chat tail (assistant turn start)
    gold: tuple[int, ...]  # answer tokens the loss is taken on (empty when only answers are generated)
    expected: str | None = None


@dataclass
class Rollout:
    """One instruction run over all items: reasoning, per-item losses, and proposal inputs."""

    instruction: tuple[int, ...]
    reasoning: list[tuple[int, ...]]  # greedy reasoning per item (no EOS)
    answer_loss: Tensor  # (N,) mean CE over gold tokens, logits / answer_temperature
    fluency: Tensor  # (N,) mean NLL of the instruction tokens
    correct: Tensor  # (N,) bool: greedy decoding after the phrase reproduces the gold tokens
    topk: list[Tensor]  # N x (L+1, k): next-token ids predicted at instruction slot i (slot L extends)
    answers: list[str] = field(default_factory=list)  # generated answer text (evaluate mode only)
    score: float = math.inf  # mean answer loss + fluency_weight * mean fluency


class _Meter:
    """Counts model invocations and tokens, and asks the shared budget before each one."""

    def __init__(self, budget: BudgetLike | None, role: str) -> None:
        self.budget, self.role = budget, role
        self.calls = self.prompt_tokens = self.completion_tokens = 0

    def check(self, tokens: int) -> None:
        if self.budget is not None:
            self.budget.check_can_spend(calls=1, tokens=tokens)

    def charge(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if self.budget is not None:
            self.budget.charge(self.role, 1, prompt_tokens, completion_tokens)


class GreaterEngine:
    """Everything GReaTer does with the model, on token ids."""

    def __init__(
        self,
        model: Any,
        config: GreaterConfig,
        *,
        pad_id: int,
        eos_ids: Sequence[int],
        phrase_ids: Sequence[int],
        meter: _Meter | None = None,
        decode: Callable[[Sequence[int]], str] | None = None,
    ) -> None:
        self.model, self.config = model, config
        self.base = getattr(model, model.base_model_prefix)  # decoder stack without lm_head
        self.embed = model.get_input_embeddings()  # Gemma's scales its output; used as a module, so handled
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=self.device)
        self.phrase = tuple(phrase_ids)
        self.meter = meter or _Meter(None, config.budget_role)
        self.decode = decode

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (..., V) in at least float32, as the CausalLM head computes them (Gemma's soft-capping)."""
        out = self.head(hidden)
        if out.dtype in (torch.bfloat16, torch.float16):
            out = out.float()
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    # ---- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(
        self, instructions: Sequence[Sequence[int]], items: Sequence[EncodedItem], *, generate_answers: bool = False
    ) -> list[Rollout]:
        """Greedy reasoning for every (instruction, item), then the answer loss from the cached prefix."""
        rows = [(i, j) for i in range(len(instructions)) for j in range(len(items))]
        outs: list[dict[str, Any]] = []
        for lo in range(0, len(rows), self.config.batch_size):
            chunk = rows[lo : lo + self.config.batch_size]
            outs.extend(
                self._rollout_chunk([tuple(instructions[i]) for i, _ in chunk], [items[j] for _, j in chunk], generate_answers)
            )
        results = []
        for i, instr in enumerate(instructions):
            mine = outs[i * len(items) : (i + 1) * len(items)]
            r = Rollout(
                instruction=tuple(instr),
                reasoning=[o["reasoning"] for o in mine],
                answer_loss=torch.tensor([o["answer_loss"] for o in mine], dtype=torch.float64),
                fluency=torch.tensor([o["fluency"] for o in mine], dtype=torch.float64),
                correct=torch.tensor([o["correct"] for o in mine], dtype=torch.bool),
                topk=[o["topk"] for o in mine],
                answers=[o["answer"] for o in mine],
            )
            r.score = float(r.answer_loss.mean() + self.config.fluency_weight * r.fluency.mean())
            results.append(r)
        return results

    def _rollout_chunk(
        self, instrs: Sequence[tuple[int, ...]], items: Sequence[EncodedItem], generate_answers: bool
    ) -> list[dict[str, Any]]:
        cfg, dev = self.config, self.device
        prompts = [list(it.before) + list(ins) + list(it.after) for ins, it in zip(instrs, items, strict=True)]
        B, T0 = len(prompts), max(len(p) for p in prompts)
        self.meter.check(sum(map(len, prompts)) + B * cfg.max_new_tokens)
        ids = torch.full((B, T0), self.pad_id, dtype=torch.long, device=dev)  # (B, T0) left-padded
        mask = torch.zeros((B, T0), dtype=torch.long, device=dev)
        for b, p in enumerate(prompts):
            ids[b, T0 - len(p) :] = torch.tensor(p, device=dev)
            mask[b, T0 - len(p) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T0) real positions despite the padding
        out = self.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache, hidden = out.past_key_values, out.last_hidden_state  # hidden: (B, T0, H)

        # Logits only at the positions that predict instruction slot 0..L (slot L = an extension).
        rows_b: list[int] = []
        rows_t: list[int] = []
        spans: list[tuple[int, int]] = []
        for b, (ins, it) in enumerate(zip(instrs, items, strict=True)):
            start = T0 - len(prompts[b]) + len(it.before)  # index of instruction token 0
            spans.append((len(rows_t), len(ins)))
            rows_b += [b] * (len(ins) + 1)
            rows_t += range(start - 1, start + len(ins))
        logp = F.log_softmax(self.logits(hidden[rows_b, rows_t]), dim=-1)  # (M, V)
        k = min(cfg.top_k, logp.shape[-1])
        topk = logp.topk(k, dim=-1).indices.cpu()  # (M, k)
        fluency = []
        for b, (first, n) in enumerate(spans):
            target = torch.tensor(instrs[b], device=dev)
            fluency.append(float(-logp[first : first + n].gather(-1, target[:, None]).mean()) if n else 0.0)
        del logp

        # Greedy decoding; rows that finished keep being fed (masked out) so the batch stays rectangular.
        pos_next = mask.sum(-1)  # (B,) position id of the next real token
        generated, mask, pos_next, cache = self._greedy(self.logits(hidden[:, -1]), mask, pos_next, cache, cfg.max_new_tokens)
        reasoning = [tuple(row) for row in generated]

        # Answer tail from the cache: phrase + gold (scored), or phrase then greedy answer tokens.
        tails = [list(self.phrase) + ([] if generate_answers else list(it.gold)) for it in items]
        Lt = max(len(t) for t in tails)
        tail_ids = torch.full((B, Lt), self.pad_id, dtype=torch.long, device=dev)  # (B, Lt) right-padded
        tail_mask = torch.zeros((B, Lt), dtype=torch.long, device=dev)
        for b, t in enumerate(tails):
            tail_ids[b, : len(t)] = torch.tensor(t, device=dev)
            tail_mask[b, : len(t)] = 1
        mask = torch.cat([mask, tail_mask], dim=1)
        tail_pos = pos_next[:, None] + torch.arange(Lt, device=dev)[None, :]  # (B, Lt)
        out = self.base(input_ids=tail_ids, attention_mask=mask, position_ids=tail_pos, past_key_values=cache, use_cache=True)
        tail_hidden = out.last_hidden_state  # (B, Lt, H)

        answer_loss = [math.nan] * B
        correct = [False] * B
        answers = [""] * B
        completion = sum(map(len, reasoning))
        if not generate_answers:
            P = len(self.phrase)
            for b, it in enumerate(items):
                if not it.gold:
                    continue
                logits = self.logits(tail_hidden[b, P - 1 : P - 1 + len(it.gold)])  # (G, V) predicts gold
                gold = torch.tensor(it.gold, device=dev)
                answer_loss[b] = float(F.cross_entropy(logits / cfg.answer_temperature, gold))
                correct[b] = bool((logits.argmax(-1) == gold).all())
        else:
            last = torch.tensor([len(t) - 1 for t in tails], device=dev)
            next_logits = self.logits(tail_hidden[torch.arange(B, device=dev), last])
            # Here the tail is the phrase alone, the same length in every row: no padding, the mask is complete.
            pos_next = pos_next + len(self.phrase)
            answer_ids, *_ = self._greedy(next_logits, mask, pos_next, out.past_key_values, cfg.answer_tokens)
            completion += sum(map(len, answer_ids))
            if self.decode is not None:
                answers = [self.decode(a) for a in answer_ids]
        self.meter.charge(sum(map(len, prompts)) + sum(map(len, tails)), completion)
        return [
            {
                "reasoning": reasoning[b],
                "answer_loss": answer_loss[b],
                "fluency": fluency[b],
                "correct": correct[b],
                "topk": topk[spans[b][0] : spans[b][0] + spans[b][1] + 1],
                "answer": answers[b],
            }
            for b in range(B)
        ]

    def _greedy(
        self, next_logits: Tensor, mask: Tensor, pos_next: Tensor, cache: Any, max_steps: int
    ) -> tuple[list[list[int]], Tensor, Tensor, Any]:
        """Greedy decoding from a KV cache; rows that finished keep being fed (masked out) so the batch stays
        rectangular. Returns the new tokens per row, and the mask, next positions and cache after them."""
        B = next_logits.shape[0]
        done = torch.zeros(B, dtype=torch.bool, device=next_logits.device)
        steps: list[Tensor] = []
        for _ in range(max_steps):
            tok = next_logits.argmax(-1)  # (B,)
            real = ~done & ~torch.isin(tok, self.eos)
            done |= ~real
            if not bool(real.any()):
                break
            steps.append(torch.where(real, tok, -1))
            mask = torch.cat([mask, real[:, None].long()], dim=1)
            out = self.base(
                input_ids=tok[:, None], attention_mask=mask, position_ids=pos_next[:, None], past_key_values=cache, use_cache=True
            )
            cache = out.past_key_values
            pos_next = pos_next + real.long()
            next_logits = self.logits(out.last_hidden_state[:, -1])
        rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(B)]  # (B, steps)
        return [[t for t in row if t >= 0] for row in rows], mask, pos_next, cache

    # ---- one-hot gradient -------------------------------------------------------------------------------------

    def objective(
        self,
        weights: Tensor,
        instruction: Sequence[int],
        position: int,
        insert: bool,
        candidates: Sequence[int],
        items: Sequence[EncodedItem],
        reasoning: Sequence[Sequence[int]],
    ) -> Tensor:
        """Sum over items of answer CE + fluency_weight x instruction NLL, with slot ``position`` = weights @ cands.

        weights: (K,) over ``candidates``; a one-hot on the current token gives the real loss. ``insert`` puts the
        slot in front of ``instruction[position]`` (position == len for an extension) instead of replacing it.
        """
        cfg, dev = self.config, self.device
        instr = list(instruction)
        if insert:
            instr.insert(position, candidates[0])
        else:
            instr[position] = candidates[0]
        seqs = [
            list(it.before) + instr + list(it.after) + list(r) + list(self.phrase) + list(it.gold)
            for it, r in zip(items, reasoning, strict=True)
        ]
        B, T = len(seqs), max(map(len, seqs))
        ids = torch.full((B, T), self.pad_id, dtype=torch.long, device=dev)  # (B, T) right-padded: positions 0..
        mask = torch.zeros((B, T), dtype=torch.long, device=dev)
        slot = torch.zeros((B, T), dtype=torch.bool, device=dev)
        for b, (s, it) in enumerate(zip(seqs, items, strict=True)):
            ids[b, : len(s)] = torch.tensor(s, device=dev)
            mask[b, : len(s)] = 1
            slot[b, len(it.before) + position] = True
        cand = torch.tensor(list(candidates), device=dev)  # (K,)
        with torch.no_grad():
            emb = self.embed(ids)  # (B, T, H), scaled like the model does it
            cand_emb = self.embed(cand)  # (K, H); the scale is linear, so mixing scaled rows is exact
        soft = weights.to(cand_emb.dtype) @ cand_emb  # (H,)
        emb = torch.where(slot[:, :, None], soft.expand(B, T, -1), emb)
        hidden = self.base(inputs_embeds=emb, attention_mask=mask).last_hidden_state  # (B, T, H)

        total = weights.new_zeros(())
        for b, (s, it) in enumerate(zip(seqs, items, strict=True)):
            g0 = len(s) - len(it.gold)  # first gold index
            logits = self.logits(hidden[b, g0 - 1 : len(s) - 1])  # (G, V) predict the gold tokens
            answer = F.cross_entropy(logits / cfg.answer_temperature, torch.tensor(it.gold, device=dev))
            s0 = len(it.before)
            logp = F.log_softmax(self.logits(hidden[b, s0 - 1 : s0 + len(instr) - 1]), dim=-1)  # (L, V)
            nll = -logp.gather(-1, torch.tensor(instr, device=dev)[:, None]).squeeze(-1)  # (L,)
            slot_nll = -(weights.to(logp.dtype) * logp[position, cand]).sum()  # soft target at the slot
            others = torch.cat([nll[:position], nll[position + 1 :]])
            fluency = (others.sum() + slot_nll) / len(instr)
            total = total + answer.to(total.dtype) + cfg.fluency_weight * fluency.to(total.dtype)
        return total

    def gradient(
        self,
        instruction: Sequence[int],
        position: int,
        insert: bool,
        candidates: Sequence[int],
        items: Sequence[EncodedItem],
        reasoning: Sequence[Sequence[int]],
    ) -> Tensor:
        """(K,) d loss / d one-hot weight at the current token (candidates[0]), summed over items."""
        weights = torch.zeros(
            len(candidates),
            dtype=torch.float32 if self._low_precision() else next(self.model.parameters()).dtype,
            device=self.device,
        )
        weights[0] = 1.0
        weights.requires_grad_(True)
        step = self.config.grad_batch_size
        for lo in range(0, len(items), step):
            part, why = items[lo : lo + step], reasoning[lo : lo + step]
            n_tokens = sum(
                len(it.before) + len(instruction) + 1 + len(it.after) + len(r) + len(self.phrase) + len(it.gold)
                for it, r in zip(part, why, strict=True)
            )
            self.meter.check(n_tokens)
            loss = self.objective(weights, instruction, position, insert, candidates, part, why)
            loss.backward()
            self.meter.charge(n_tokens, 0)
        assert weights.grad is not None  # set by backward above; internal invariant, not user input
        return weights.grad.detach().float().cpu()

    def _low_precision(self) -> bool:
        return next(self.model.parameters()).dtype in (torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------------------------
# Answer matching (evaluation)


def normalize_answer(text: str) -> str:
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = re.sub(r"^[\s:$*\"'`(\[]+", "", text)
    return text.strip().lower()


def answer_matches(generated: str, gold: str) -> bool:
    """Normalized generated text starts with the normalized gold answer, followed by a non-alphanumeric boundary."""
    got, want = normalize_answer(generated), normalize_answer(gold).rstrip(".")
    if not want or not got.startswith(want):
        return False
    rest = got[len(want) :]
    return not rest or not rest[0].isalnum()


# ----------------------------------------------------------------------------------------------------------------
# The optimizer: text <-> ids, the step loop, budget, resume


def resolve_device(config: GreaterConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.dtype is not None:
        return device, _DTYPES[config.dtype]
    return device, torch.bfloat16 if device.type == "cuda" else torch.float32


Loader = Callable[[str, torch.device, torch.dtype], tuple[Any, Any]]


def _default_loader(name: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    try:
        from gradgate.models.local.runtime import load_causal_lm  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ModelError(
            "gradgate.models.local.runtime is not available to load the model for GReaTer",
            hint="install gradgate completely, or pass a loader",
        ) from exc
    return load_causal_lm(name, device=str(device), dtype=dtype)  # type: ignore[no-any-return,unused-ignore]


class GreaterOptimizer:
    def __init__(self, config: GreaterConfig, *, loader: Loader | None = None) -> None:
        config.validate()
        self.config = config
        self._loader = loader or _default_loader
        self._loaded: dict[str, tuple[Any, Any]] = {}

    # ---- model and encoding -------------------------------------------------------------------------------------

    def load(self, model_name: str) -> tuple[Any, Any]:
        if model_name not in self._loaded:
            device, dtype = resolve_device(self.config)
            model, tokenizer = self._loader(model_name, device, dtype)
            model = model.to(device=device, dtype=dtype).eval()
            model.requires_grad_(False)  # only the one-hot weight gets a gradient
            self._loaded[model_name] = (model, tokenizer)
        return self._loaded[model_name]

    def _engine(self, model: Any, tokenizer: Any, meter: _Meter) -> GreaterEngine:
        eos: set[int] = set()
        for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(t) for t in source)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
        phrase = tokenizer(self.config.extraction_phrase, add_special_tokens=False)["input_ids"]
        return GreaterEngine(
            model,
            self.config,
            pad_id=int(pad),
            eos_ids=sorted(eos),
            phrase_ids=phrase,
            meter=meter,
            decode=lambda t: tokenizer.decode(list(t), skip_special_tokens=True),
        )

    def encode_items(self, tokenizer: Any, split: PromptSplit, items: Sequence[ItemLike]) -> list[EncodedItem]:
        chat = self.config.use_chat_template and getattr(tokenizer, "chat_template", None)
        start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        encoded = []
        for n, item in enumerate(items):
            values = {k: str(v) for k, v in item.vars.items()}
            head = render_template(split.head, values, where=f"item {n}")
            tail = render_template(split.tail, values, where=f"item {n}")
            if chat:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": head + _SENTINEL + tail}], tokenize=False, add_generation_prompt=True
                )
                before_text, after_text = str(text).split(_SENTINEL, 1)
                before = tokenizer(before_text, add_special_tokens=False)["input_ids"]
            else:
                before_text, after_text = head, tail
                before = tokenizer(before_text, add_special_tokens=True)["input_ids"]
            after = tokenizer(after_text, add_special_tokens=False)["input_ids"]
            if not before or (not chat and start_id is not None and before[0] != start_id):
                before = [start_id, *before]  # a slot needs a token before it to be predicted from
            gold: list[int] = []
            if item.expected is not None and str(item.expected).strip():
                gold = tokenizer(build_answer_tail(str(item.expected), phrase="")[1], add_special_tokens=False)["input_ids"]
            encoded.append(EncodedItem(tuple(before), tuple(after), tuple(gold), item.expected))
        return encoded

    # ---- evaluation ---------------------------------------------------------------------------------------------

    def evaluate(self, *, prompt_body: str, items: Sequence[ItemLike], model_name: str) -> EvalReport:
        """Accuracy of a prompt: greedy reasoning, the extraction phrase, greedy answer, normalized match."""
        model, tokenizer = self.load(model_name)
        split = split_prompt(prompt_body, self.config.span)
        encoded = self.encode_items(tokenizer, split, items)
        engine = self._engine(model, tokenizer, _Meter(None, self.config.budget_role))
        instruction = tokenizer(split.instruction, add_special_tokens=False)["input_ids"]
        rollout = engine.rollout([instruction], encoded, generate_answers=True)[0]
        correct = tuple(answer_matches(a, str(it.expected or "")) for a, it in zip(rollout.answers, items, strict=True))
        return EvalReport(accuracy=sum(correct) / max(len(correct), 1), answers=tuple(rollout.answers), correct=correct)

    # ---- optimization -------------------------------------------------------------------------------------------

    def optimize(
        self,
        *,
        prompt_body: str,
        train: Sequence[ItemLike],
        model_name: str,
        budget: BudgetLike | None,
        on_step: Callable[[GreaterStep], None] | None = None,
        state: dict[str, Any] | None = None,
    ) -> GreaterResult:
        cfg = self.config
        gold_items = [it for it in train if it.expected is not None and str(it.expected).strip()]
        if not gold_items:
            raise ConfigError(
                "GReaTer needs gold answers: none of the training items has an `expected` value",
                hint="give the suite an `expected` column, or use the grad-sum or gpo optimizer for judged suites",
            )
        if len(gold_items) < len(train):
            log.warning(
                "GReaTer: %d of %d training items have no expected answer and are left out",
                len(train) - len(gold_items),
                len(train),
            )
        split = split_prompt(prompt_body, cfg.span)
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(gold_items), generator=gen)[: cfg.max_items].tolist()
        chosen = [gold_items[i] for i in sorted(order)]

        model, tokenizer = self.load(model_name)
        meter = _Meter(budget, cfg.budget_role)
        engine = self._engine(model, tokenizer, meter)
        items = self.encode_items(tokenizer, split, chosen)
        is_word = WordFilter(tokenizer)
        initial = tuple(tokenizer(split.instruction, add_special_tokens=False)["input_ids"])
        if not initial:
            raise ConfigError(
                "the instruction to optimize is empty after tokenization",
                hint="give the prompt some free text outside the {{variables}}",
            )

        def text_of(ids: Sequence[int]) -> str:
            return split.join(tokenizer.decode(list(ids), skip_special_tokens=True))

        instr = tuple(int(t) for t in (state or {}).get("instruction_ids", initial))
        position = int((state or {}).get("position", 0))
        if not 0 <= position <= len(instr) or (position == len(instr) and cfg.past_end == "wrap"):
            position = 0  # a state from another configuration: start over at the first token
        first_step = int((state or {}).get("step", 0))
        initial_score = float((state or {}).get("initial_score", math.nan))
        initial_accuracy = float((state or {}).get("initial_accuracy", math.nan))
        log.info(
            "GReaTer: %d items, %d steps from step %d, instruction %r",
            len(items),
            cfg.steps,
            first_step,
            tokenizer.decode(list(instr)),
        )

        trajectory: list[GreaterStep] = []
        current: Rollout | None = None
        stopped = "steps"

        def make_state(step: int) -> dict[str, Any]:
            return {
                "version": 1,
                "step": step,
                "instruction_ids": list(instr),
                "position": position,
                "seed": cfg.seed,
                "initial_score": initial_score,
                "initial_accuracy": initial_accuracy,
            }

        try:
            for step in range(first_step, cfg.steps):
                phases = dict.fromkeys(PHASES, 0.0)
                t = time.perf_counter()
                if current is None:
                    current = engine.rollout([instr], items)[0]
                    if math.isnan(initial_score):
                        initial_score = current.score
                        initial_accuracy = float(current.correct.float().mean())
                phases["generation"] = time.perf_counter() - t
                step_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # resumable per step
                outcome = self.run_step(engine, items, current, instr, position, is_word, step_gen, phases)
                at = position
                old_token = tokenizer.decode([instr[at]]) if at < len(instr) else ""
                candidates: tuple[CandidateScore, ...] = ()
                winner: Rollout | None = None
                if outcome is not None:
                    candidates, winner = outcome
                if winner is not None:
                    instr, current = winner.instruction, winner
                new_token = tokenizer.decode([instr[at]]) if winner is not None else old_token
                position = advance_position(at, len(instr), cfg.past_end, cfg.max_instruction_tokens)
                rec = GreaterStep(
                    step=step,
                    position=at,
                    old_token=old_token,
                    new_token=new_token,
                    prompt_text=text_of(instr),
                    loss=current.score,
                    accuracy=float(current.correct.float().mean()),
                    accepted=winner is not None,
                    candidates=candidates,
                    phase_seconds=phases,
                    state=make_state(step + 1),
                )
                log.info(
                    "GReaTer step %d pos %d: %r -> %r loss %.4f acc %.2f (%s)",
                    step,
                    rec.position,
                    old_token,
                    new_token,
                    rec.loss,
                    rec.accuracy,
                    ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()),
                )
                trajectory.append(rec)
                if on_step is not None:
                    on_step(rec)
        except BudgetExhausted as exc:
            log.info("GReaTer stopped early: %s", exc)
            stopped = "budget"

        best_score = current.score if current is not None else math.nan
        best_accuracy = float(current.correct.float().mean()) if current is not None else math.nan
        final_state = make_state(trajectory[-1].step + 1 if trajectory else first_step)
        return GreaterResult(
            best_prompt=text_of(instr),
            best_instruction=tokenizer.decode(list(instr), skip_special_tokens=True),
            initial_prompt=prompt_body,
            best_score=best_score,
            initial_score=initial_score,
            best_accuracy=best_accuracy,
            initial_accuracy=initial_accuracy,
            trajectory=tuple(trajectory),
            stopped=stopped,
            calls=meter.calls,
            prompt_tokens=meter.prompt_tokens,
            completion_tokens=meter.completion_tokens,
            seed=cfg.seed,
            model=model_name,
            config=asdict(cfg),
            state=final_state,
        )

    def run_step(
        self,
        engine: GreaterEngine,
        items: Sequence[EncodedItem],
        current: Rollout,
        instr: tuple[int, ...],
        position: int,
        is_word: Callable[[int], bool],
        gen: torch.Generator,
        phases: dict[str, float],
    ) -> tuple[tuple[CandidateScore, ...], Rollout | None] | None:
        """One GReaTer step at ``position`` on token ids, given the current instruction's rollout.

        Returns (candidate table, the winning rollout or None when the current instruction stays), or None when
        no candidate could be proposed. Fills ``phases`` (proposal, gradient, selection seconds).
        """
        cfg = self.config
        t = time.perf_counter()
        insert = position == len(instr)
        rows = torch.stack([tk[position] for tk in current.topk])  # (N, k) next-token ids at the slot
        if insert:
            seed_counts = Counter(t for t in rows[:, 0].tolist() if is_word(t))
            if not seed_counts:
                phases["proposal"] = time.perf_counter() - t
                return None
            current_id = seed_counts.most_common(1)[0][0]
        else:
            current_id = instr[position]
        cands = propose_candidates(
            rows,
            current_id,
            num_intersections=cfg.num_intersections,
            intersection_size=cfg.intersection_size,
            is_word=is_word,
            generator=gen,
        )
        phases["proposal"] = time.perf_counter() - t
        if len(cands) == 1 and not insert:
            return None

        t = time.perf_counter()
        grad = engine.gradient(instr, position, insert, cands, items, current.reasoning)  # (K,)
        phases["gradient"] = time.perf_counter() - t

        t = time.perf_counter()
        order = [i for i in torch.argsort(grad).tolist() if insert or i != 0][: cfg.num_eval_candidates]
        trials = []
        for i in order:
            new = list(instr)
            if insert:
                new.insert(position, cands[i])
            else:
                new[position] = cands[i]
            trials.append(tuple(new))
        rollouts = engine.rollout(trials, items)
        phases["selection"] = time.perf_counter() - t

        scored = {i: r for i, r in zip(order, rollouts, strict=True)}
        decode = engine.decode or (lambda ids: str(list(ids)))
        # The current token's score is the current rollout's (index 0, unless it is an extension seed).
        known = dict(scored) if insert else {0: current, **scored}
        table = tuple(
            CandidateScore(
                token_id=c,
                token=decode([c]),
                gradient=float(grad[i]),
                score=known[i].score if i in known else None,
                accuracy=float(known[i].correct.float().mean()) if i in known else None,
            )
            for i, c in enumerate(cands)
        )
        best = min(rollouts, key=lambda r: r.score, default=None)
        if best is None or not best.score < current.score:
            return table, None
        return table, best


# ------------------------------------------------------------------------------------------------------------
# The shared optimizer interface


def _greater_config(settings: Mapping[str, Any], seed: int) -> GreaterConfig:
    known = {f.name for f in GreaterConfig.__dataclass_fields__.values()}
    unknown = sorted(set(settings) - known - {"model"})
    if unknown:
        raise ConfigError(
            f"unknown GReaTer setting(s): {', '.join(unknown)}",
            where="gradgate.yaml:optimize.greater",
            hint=f"known: model, {', '.join(sorted(known))}",
        )
    values = {k: v for k, v in settings.items() if k != "model"}
    try:
        return GreaterConfig(**{"seed": seed, **values})
    except TypeError as exc:
        raise ConfigError(f"invalid GReaTer settings: {exc}", where="gradgate.yaml:optimize.greater") from None


class Greater(Optimizer):
    """GReaTer behind the shared interface: the task model optimizes its own prompt from token gradients.

    The local model is `optimize.greater.model` or, by default, the task model (which must then be an embedded
    `local/...` model). Each accepted step's prompt is scored on dev by the shared scorer, like every other
    method's candidates, and the runner confirms the best on the test split.
    """

    name: ClassVar[str] = "greater"
    needs_expected: ClassVar[bool] = True

    def _model_name(self, ctx: OptimizeContext) -> str:
        explicit = self.settings.get("model")
        if explicit:
            return str(explicit)
        task = ctx.gateway.spec("task").model
        if task.startswith("local/"):
            return task
        raise ConfigError(
            f"GReaTer needs the weights of a local model, and the task model {task!r} is an API model",
            where="gradgate.yaml:optimize.greater.model",
            hint="set optimize.greater.model to an embedded model (local/smollm2-135m-instruct), a model folder or a hub id",
        )

    async def optimize(self, ctx: OptimizeContext) -> None:
        config = _greater_config(self.settings, ctx.seed)
        model_name = self._model_name(ctx)
        optimizer = GreaterOptimizer(config)
        steps: list[GreaterStep] = []

        def on_step(step: GreaterStep) -> None:
            steps.append(step)
            swap = f"{step.old_token!r} → {step.new_token!r}" if step.accepted else f"kept {step.old_token!r}"
            ctx.trajectory.add_gradient(
                GradientNote(
                    step=step.step,
                    parent="c0000",
                    summary=f"position {step.position}: {swap} (loss {step.loss:.3f}, train accuracy {step.accuracy:.2f})",
                    per_item=tuple(f"{c.token!r}: gradient {c.gradient:+.4f}" for c in step.candidates[:8]),
                )
            )
            ctx.save_state({"greater": dict(step.state), "prompts": [*ctx.state.get("prompts", []), step.prompt_text]})

        stopped_by_budget = False
        try:
            # The torch work blocks; a worker thread keeps the event loop (and its progress output) alive.
            await asyncio.to_thread(
                optimizer.optimize,
                prompt_body=ctx.original,
                train=list(ctx.splits.train),
                model_name=model_name.removeprefix("local/"),
                budget=ctx.budget,
                on_step=on_step,
                state=ctx.state.get("greater"),
            )
        except BudgetExhausted:
            stopped_by_budget = True
        # Score each distinct accepted prompt on dev with the shared scorer (cached ones cost nothing).
        prompts = list(dict.fromkeys([*ctx.state.get("prompts", []), *(s.prompt_text for s in steps if s.accepted)]))
        for index, text in enumerate(p for p in prompts if p != ctx.original):
            if ctx.cached_candidate(text) is None:
                await ctx.evaluate(text, step=index + 1, parent="c0000", origin="token")
        if stopped_by_budget:
            raise BudgetExhausted("budget exhausted during GReaTer's search")
