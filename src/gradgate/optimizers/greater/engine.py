"""GReaTer's torch engine, on token ids: batched KV-cached rollouts, the loss, one-hot gradients.

Text, the step loop, budget policy and resuming live in search.py; the decoding loop in decoding.py; which tokens may
stand at the slot in candidates.py. This module never sees a string prompt.

Shapes: B rows in a batch (a row is one instruction x one item), T tokens, H hidden size, V vocabulary, N items,
L instruction tokens, K candidates at the optimized slot, G gold answer tokens.

One row of the gradient pass (``[s]`` is the optimized slot)::

    [chat head + text before the span][instruction ..[s]..][text after + chat tail][reasoning][phrase][gold]
     EncodedItem.before                optimized            EncodedItem.after       greedy     fixed   loss

Cheaper than the published implementation: batched greedy decoding with a KV cache, answers scored from the
cached prefix, and ``lm_head`` applied only at the positions whose logits are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from gradgate.models.local.kv import merge_prefills, returned_cache, reusable, with_cache
from gradgate.optimizers.greater.decoding import RowOutput, RowPlan, by_length, decode_rows
from gradgate.optimizers.greater.settings import GreaterConfig

# ----------------------------------------------------------------------------------------------------------------
# Inputs and outputs


@dataclass(frozen=True)
class EncodedItem:
    before: tuple[int, ...]  # chat head + rendered text before the instruction; never empty
    after: tuple[int, ...]  # rendered text after the instruction + chat tail (assistant turn start)
    gold: tuple[int, ...]  # answer tokens the loss is taken on (empty when only answers are generated)
    expected: str | None = None


@dataclass(frozen=True)
class LabelChoice:
    """Where a closed set of answer labels, as tokens after the phrase, first differ: the tokens they share (" ("
    for "(A)" and "(B)", " New" for "New York" and "New Delhi") and each label's own token right after them. The
    loglik scorer's choice among the labels is decided at that token; empty when the labels are not known, or when
    one label is a prefix of another or two share the deciding token."""

    prefix: tuple[int, ...] = ()
    ids: tuple[int, ...] = ()

    @classmethod
    def of(cls, label_tokens: Sequence[Sequence[int]]) -> LabelChoice:
        seqs = [tuple(s) for s in label_tokens]
        if len(seqs) < 2 or not all(seqs):
            return cls()
        k = 0  # length of the shared prefix
        while all(len(s) > k for s in seqs) and len({s[k] for s in seqs}) == 1:
            k += 1
        if not all(len(s) > k for s in seqs):
            return cls()
        ids = tuple(s[k] for s in seqs)
        return cls(seqs[0][:k], ids) if len(set(ids)) == len(ids) else cls()


@dataclass
class Rollout:
    """One instruction run over all items: reasoning, per-item losses, and proposal inputs."""

    instruction: tuple[int, ...]
    reasoning: list[tuple[int, ...]]  # greedy reasoning per item (no EOS)
    answer_loss: Tensor  # (N,) mean CE over gold tokens, logits / answer_temperature
    fluency: Tensor  # (N,) mean NLL of the instruction tokens
    correct: Tensor  # (N,) bool: the gold answer wins after the phrase (among the labels when they are known)
    topk: list[Tensor]  # N x (L+1, k): next-token ids predicted at instruction slot i (slot L extends)
    answers: list[str] = field(default_factory=list)  # generated answer text (generate_answers mode only)
    score: float = math.inf  # mean answer loss + fluency_weight * mean fluency

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())

    @property
    def mistake_rate(self) -> float:
        """Share of items whose teacher-forced answer is wrong (the paper's selection criterion; see _score_gold)."""
        return 1.0 - self.accuracy


@dataclass(frozen=True)
class _Row:
    """One (instruction, item) row of a rollout batch."""

    reasoning: tuple[int, ...]
    answer_loss: float
    fluency: float
    correct: bool
    topk: Tensor  # (L+1, k)
    answer: str


class BudgetLike(Protocol):
    def check_can_spend(self, calls: int, tokens: int) -> None: ...
    def charge(self, role: str, calls: int, prompt_tokens: int, completion_tokens: int) -> None: ...


class Meter:
    """Counts calls and tokens, and asks the shared budget before each call. A call is one rollout batch (up to
    ``batch_size`` rows) or one gradient, however many forward passes they take inside."""

    def __init__(self, budget: BudgetLike | None, role: str) -> None:
        self.budget, self.role = budget, role
        self.calls = self.prompt_tokens = self.completion_tokens = 0

    def check(self, tokens: int) -> None:
        if self.budget is not None:
            self.budget.check_can_spend(calls=1, tokens=tokens)  # raises BudgetExhausted

    def charge(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if self.budget is not None:
            self.budget.charge(self.role, 1, prompt_tokens, completion_tokens)


# ----------------------------------------------------------------------------------------------------------------
# The engine


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
        meter: Meter | None = None,
        decode: Callable[[Sequence[int]], str] | None = None,
        labels: LabelChoice = LabelChoice(),
    ) -> None:
        self.model, self.config = model, config
        self.base = model.get_decoder()  # the decoder stack without lm_head (base_model_prefix misnames it in 4.56 Gemma 3)
        self.embed = model.get_input_embeddings()  # Gemma's scales its output; used as a module, so handled
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=self.device)
        self.phrase = tuple(phrase_ids)
        self.meter = meter or Meter(None, config.budget_role)
        self.decode = decode
        self.labels = labels
        self.label_ids = torch.tensor(list(labels.ids), dtype=torch.long, device=self.device)  # (n_labels,)
        self.mergeable = True  # prefills of different lengths can share one cache (False once one cannot)

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
        """Greedy reasoning for every (instruction, item), then the answer loss from the cached prefix.

        With ``generate_answers`` the phrase is followed by ``answer_tokens`` greedy tokens instead of the gold
        answer (held-out accuracy); the answer loss is then NaN.
        """
        pairs = [(i, j) for i in range(len(instructions)) for j in range(len(items))]
        rows: list[_Row] = []
        for lo in range(0, len(pairs), self.config.batch_size):
            chunk = pairs[lo : lo + self.config.batch_size]
            rows += self._rollout_batch(
                [tuple(instructions[i]) for i, _ in chunk], [items[j] for _, j in chunk], generate_answers
            )
        results = []
        for i, instr in enumerate(instructions):
            mine = rows[i * len(items) : (i + 1) * len(items)]
            r = Rollout(
                instruction=tuple(instr),
                reasoning=[row.reasoning for row in mine],
                answer_loss=torch.tensor([row.answer_loss for row in mine], dtype=torch.float64),
                fluency=torch.tensor([row.fluency for row in mine], dtype=torch.float64),
                correct=torch.tensor([row.correct for row in mine], dtype=torch.bool),
                topk=[row.topk for row in mine],
                answers=[row.answer for row in mine],
            )
            r.score = float(r.answer_loss.mean() + self.config.fluency_weight * r.fluency.mean())
            results.append(r)
        return results

    def _rollout_batch(
        self, instrs: Sequence[tuple[int, ...]], items: Sequence[EncodedItem], generate_answers: bool
    ) -> list[_Row]:
        """One batch of rows: prefill the prompts, read the slot predictions, then reason and take the answer tail
        from the cache (decoding.py); the answer is scored (gold) or generated (``generate_answers``).

        Without reasoning (``max_new_tokens`` 0) the tail is known up front and joins the prompt: one pass."""
        cfg = self.config
        direct = cfg.max_new_tokens == 0
        tails = [self._tail(it, generate_answers) for it in items]
        prompts = [
            [*it.before, *ins, *it.after, *(tails[b] if direct else ())]
            for b, (ins, it) in enumerate(zip(instrs, items, strict=True))
        ]
        B = len(prompts)
        self.meter.check(sum(map(len, prompts)) + B * cfg.max_new_tokens)
        order = sorted(range(B), key=lambda b: len(prompts[b]))  # decoded in this order; outputs come back per row
        # States kept per row: those that predict the gold tokens when they are in the prompt, else the last one.
        keep = [len(it.gold) if direct and tail and not generate_answers else 1 for it, tail in zip(items, tails, strict=True)]
        decoding = not direct or generate_answers
        states, topk, fluency, batch = self._prefill_rows(prompts, instrs, items, order, keep, merge=decoding)
        outs = [RowOutput() for _ in range(B)]
        if batch is not None:
            mask, cache = batch
            plans = [self._plan(tails[b], direct, generate_answers) for b in order]
            last = self.logits(torch.stack([states[b][-1] for b in order]))  # (B, V)
            decoded = decode_rows(self._step, self.logits, self.eos, last, mask, mask.sum(-1), cache, plans)
            for b, out in zip(order, decoded, strict=True):
                outs[b] = out
            del cache
        answer_loss, correct, answers = [math.nan] * B, [False] * B, [""] * B
        for b, (out, it) in enumerate(zip(outs, items, strict=True)):
            if generate_answers and self.decode is not None:
                answers[b] = self.decode(out.answer)
            elif not generate_answers and it.gold:
                answer_loss[b], correct[b] = self._score_gold(states[b] if direct else torch.stack(out.collected), it.gold)
        completion = sum(len(o.reasoning) + len(o.answer) for o in outs)
        self.meter.charge(sum(map(len, prompts)) + sum(o.fed for o in outs), completion)
        return [_Row(tuple(outs[b].reasoning), answer_loss[b], fluency[b], correct[b], topk[b], answers[b]) for b in range(B)]

    def _tail(self, item: EncodedItem, generate_answers: bool) -> tuple[int, ...]:
        """What a row feeds after its reasoning: the phrase, and when scoring the gold answer but its last token (the
        states from the phrase's last token on predict the gold ones); nothing to score without a gold answer."""
        if generate_answers:
            return self.phrase
        return self.phrase + item.gold[:-1] if item.gold else ()

    def _plan(self, tail: tuple[int, ...], direct: bool, generate_answers: bool) -> RowPlan:
        cfg = self.config
        if generate_answers:
            return RowPlan(cfg.max_new_tokens, () if direct else tail, len(tail), cfg.answer_tokens)
        return RowPlan(cfg.max_new_tokens, tail, len(self.phrase) - 1)

    def _step(self, ids: Tensor, mask: Tensor, pos: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """One token per row through the decoder from the cache: (hidden (B, H), the cache)."""
        out = self.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **with_cache(self.base, cache))
        return out.last_hidden_state[:, -1], returned_cache(out)

    def _prefill_rows(
        self,
        prompts: Sequence[Sequence[int]],
        instrs: Sequence[tuple[int, ...]],
        items: Sequence[EncodedItem],
        order: Sequence[int],
        keep: Sequence[int],
        *,
        merge: bool,
    ) -> tuple[list[Tensor], list[Tensor], list[float], tuple[Tensor, Any] | None]:
        """Prefill the rows of ``order`` (sorted by length) in passes of up to ``pass_tokens`` padded tokens.
        Per row: its last ``keep`` hidden states (keep, H), its slot predictions and fluency. With ``merge``, also
        the passes' caches merged into one batch in ``order``: (mask (B, T0), cache); else None.

        A sliding-window cache (Gemma 3) keeps only its window and cannot be padded into a longer one: to be merged
        such models prefill the whole batch in one pass, padded to its longest row."""
        if merge and not self.mergeable:
            passes = [list(order)]
        else:
            lengths = [len(prompts[b]) for b in order]
            passes = [[order[i] for i in pass_] for pass_ in by_length(lengths, len(order), self.config.pass_tokens)]
        states: list[Tensor] = [torch.empty(0)] * len(prompts)
        topk: list[Tensor] = [torch.empty(0)] * len(prompts)
        fluency = [0.0] * len(prompts)
        parts = []
        for rows in passes:
            hidden, mask, cache = self._prefill([prompts[b] for b in rows])  # hidden: (b, T, H), mask: (b, T)
            if merge and len(passes) > 1 and not reusable(cache):
                self.mergeable = False
                return self._prefill_rows(prompts, instrs, items, order, keep, merge=merge)
            pick = [prompts[b] for b in rows], [instrs[b] for b in rows], [items[b] for b in rows]
            tk, fl = self._slot_predictions(hidden, *pick)
            for i, (b, t, f) in enumerate(zip(rows, tk, fl, strict=True)):
                states[b], topk[b], fluency[b] = hidden[i, hidden.shape[1] - keep[b] :], t, f
            if merge:
                parts.append((mask, cache))
        return states, topk, fluency, merge_prefills(parts) if merge else None

    def _prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Any]:
        """Left-padded forward pass over the prompts: (hidden (B, T0, H), attention mask (B, T0), KV cache)."""
        dev = self.device
        B, T0 = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, T0), self.pad_id, dtype=torch.long, device=dev)  # (B, T0) left-padded
        mask = torch.zeros((B, T0), dtype=torch.long, device=dev)
        for b, p in enumerate(prompts):
            ids[b, T0 - len(p) :] = torch.tensor(p, device=dev)
            mask[b, T0 - len(p) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T0) real positions despite the padding
        out = self.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        return out.last_hidden_state, mask, returned_cache(out)

    def _slot_predictions(
        self,
        hidden: Tensor,
        prompts: Sequence[Sequence[int]],
        instrs: Sequence[tuple[int, ...]],
        items: Sequence[EncodedItem],
    ) -> tuple[list[Tensor], list[float]]:
        """Per row: top-k next-token ids at instruction slots 0..L (L+1, k), and the instruction's mean NLL.

        Logits only at the positions that predict a slot (slot L = an extension), not over the whole prompt.
        """
        T0 = hidden.shape[1]
        rows_b: list[int] = []
        rows_t: list[int] = []
        spans: list[tuple[int, int]] = []  # (first gathered row, instruction length) per batch row
        for b, (ins, it) in enumerate(zip(instrs, items, strict=True)):
            start = T0 - len(prompts[b]) + len(it.before)  # index of instruction token 0
            spans.append((len(rows_t), len(ins)))
            rows_b += [b] * (len(ins) + 1)
            rows_t += range(start - 1, start + len(ins))
        logp = F.log_softmax(self.logits(hidden[rows_b, rows_t]), dim=-1)  # (M, V), M = sum of (L+1)
        k = min(self.config.top_k, logp.shape[-1])
        topk = logp.topk(k, dim=-1).indices.cpu()  # (M, k)
        fluency = []
        for b, (first, n) in enumerate(spans):
            target = torch.tensor(instrs[b], device=self.device)
            fluency.append(float(-logp[first : first + n].gather(-1, target[:, None]).mean()) if n else 0.0)
        return [topk[first : first + n + 1] for first, n in spans], fluency

    def _score_gold(self, hidden: Tensor, gold_ids: tuple[int, ...]) -> tuple[float, bool]:
        """CE of the gold tokens after the phrase (logits / answer_temperature), and whether the answer is right.
        hidden: (G, H), the states that predict the gold tokens.

        Right: with a closed label set (``labels``), the gold label's deciding token beats the other labels' after
        their shared tokens (the choice the loglik scorer makes on dev and test); else greedy decoding reproduces
        every gold token. Over the whole vocabulary a small model often prefers a filler (" correct", " a") to any
        label, so the argmax would count answers the scorer gets right as mistakes."""
        logits = self.logits(hidden)  # (G, V)
        gold = torch.tensor(gold_ids, device=self.device)
        answer_loss = float(F.cross_entropy(logits / self.config.answer_temperature, gold))
        k = len(self.labels.prefix)  # the deciding token's index in the gold answer
        if self.labels.ids and gold_ids[:k] == self.labels.prefix and len(gold_ids) > k and gold_ids[k] in self.labels.ids:
            return answer_loss, bool(self.label_ids[logits[k, self.label_ids].argmax()] == gold[k])
        return answer_loss, bool((logits.argmax(-1) == gold).all())

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

        The slot's own fluency term is a soft target, ``-sum_j w_j log p(cand_j | prefix)``, where the reference
        has none (its fluency NLL reads the slot's current id, so the one-hot gets no direct gradient from it).
        Kept on purpose: at the one-hot it equals the reference's value, and its gradient adds each candidate's
        own NLL at the slot (times fluency_weight / L), the first-order change of the fluency term when that
        candidate is put there. Without it, a swap's effect on the slot's own NLL would be invisible to the ranking.
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
        # bf16/fp16 models: the weight and its gradient in fp32, so small differences between candidates survive.
        low_precision = next(self.model.parameters()).dtype in (torch.bfloat16, torch.float16)
        weights = torch.zeros(
            len(candidates),
            dtype=torch.float32 if low_precision else next(self.model.parameters()).dtype,
            device=self.device,
        )
        weights[0] = 1.0
        weights.requires_grad_(True)
        lengths = [
            len(it.before) + len(instruction) + 1 + len(it.after) + len(r) + len(self.phrase) + len(it.gold)
            for it, r in zip(items, reasoning, strict=True)
        ]
        self.meter.check(sum(lengths))  # one call, whatever the passes: grad_batch_size is a memory setting
        for rows in by_length(lengths, self.config.grad_batch_size, self.config.pass_tokens):
            part, why = [items[i] for i in rows], [reasoning[i] for i in rows]
            loss = self.objective(weights, instruction, position, insert, candidates, part, why)
            loss.backward()  # gradients accumulate in weights.grad over the passes
        self.meter.charge(sum(lengths), 0)
        assert weights.grad is not None  # set by backward above; internal invariant, not user input
        return weights.grad.detach().float().cpu()
