"""GReaTer's search: a small open model optimizes its own prompt from token gradients over its reasoning.

Das et al., "GReaTer: Gradients over Reasoning Makes Smaller Language Models Strong Prompt Optimizers" (2024).
No large model gives feedback; one step at one position of the instruction:

1. generation: greedy reasoning for every training item with the current instruction (batched, KV cache, left padding);
2. proposal: top-k next tokens at that position per item, intersected over random item subsets, then united; word
   tokens only, never an answer label's token nor the token before the slot; the current token always stays in;
3. gradient: loss = cross-entropy of the gold answer after the reasoning and the extraction phrase (built from the
   suite: encoding.resolve_phrase) plus ``fluency_weight`` x NLL of the instruction tokens, differentiated w.r.t. a
   one-hot weight over the candidates at that position (it reaches the slot through the attention of the reasoning
   and answer tokens), summed over items;
4. selection: regenerate the reasoning with the few candidates of most negative gradient and rank them by
   teacher-forced mistake rate on the training items, loss + fluency breaking ties (the paper's criterion;
   ``selection: loss`` ranks by the loss alone); ``accept: always`` takes the best of them (the paper),
   ``if_better`` only when it beats the current instruction;
5. advance: next position; past the end wrap around, extend, or grow until the instruction ends with "." (the
   paper's ``past_end: grow``). ``steps`` defaults to twice the instruction's token count.

The optimized text is the prompt's free text outside ``{{variable}}`` placeholders (prompts.split_prompt). Token ids,
not text, are the optimized state: the returned prompt is their decoding. The winning candidate's reasoning is reused
as the next step's generation. The torch work is in engine.py, text <-> ids in encoding.py; this module holds the step
loop, the budget stop and resuming.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from gradgate.core.method_settings import PastEnd
from gradgate.errors import BudgetExhausted, ConfigError
from gradgate.models.local import choose_device, eos_ids, load_causal_lm
from gradgate.optimizers.greater.candidates import WordFilter, propose_candidates
from gradgate.optimizers.greater.encoding import (
    AnswerSpec,
    ItemLike,
    Problem,
    answer_form,
    banned_ids,
    encode_items,
    label_choice,
    resolve_phrase,
    step_items,
)
from gradgate.optimizers.greater.engine import BudgetLike, GreaterEngine, Meter, Rollout
from gradgate.optimizers.greater.prompts import split_prompt
from gradgate.optimizers.greater.settings import GreaterConfig

log = logging.getLogger(__name__)

PHASES = ("generation", "proposal", "gradient", "selection")

__all__ = ["GreaterResult", "GreaterSearch", "GreaterStep", "ItemLike", "advance_position", "encode_items"]


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
    accepted: bool  # the instruction changed at this step
    candidates: tuple[CandidateScore, ...]
    phase_seconds: Mapping[str, float]
    state: Mapping[str, Any]  # persist it; pass it back as run(state=...) to resume after this step


@dataclass(frozen=True)
class GreaterResult:
    best_prompt: str
    best_instruction: str
    initial_prompt: str
    best_score: float
    initial_score: float
    best_accuracy: float
    initial_accuracy: float
    trajectory: tuple[GreaterStep, ...]  # the steps of this run (a resumed run starts after the saved ones)
    stopped_by_budget: bool  # the budget refused a forward pass before the last step ran
    calls: int
    prompt_tokens: int
    completion_tokens: int
    seed: int
    model: str
    config: Mapping[str, Any]
    state: Mapping[str, Any]


# ----------------------------------------------------------------------------------------------------------------
# Search state and position advance


def advance_position(position: int, length: int, past_end: PastEnd, max_length: int, ends_sentence: bool = False) -> int:
    """Position of the next step. ``position == length`` is the extension slot: ``extend`` grows to ``max_length``,
    ``grow`` (the reference) until the instruction's last token holds a '.'; a refused extension wraps."""
    nxt = position + 1
    if nxt < length:
        return nxt
    if nxt <= length < max_length and (past_end == "extend" or (past_end == "grow" and not ends_sentence)):
        return length
    return 0


@dataclass
class SearchState:
    """Where the search stands; saved after every step so that a later run resumes there."""

    step: int  # the next step to run
    instruction: tuple[int, ...]
    position: int  # the next slot; == len(instruction) is the extension slot
    total: int  # steps of the whole search (resolved once: the instruction's length changes as it grows)
    initial_score: float = math.nan  # of the instruction the first run started from
    initial_accuracy: float = math.nan

    @classmethod
    def resume(cls, saved: Mapping[str, Any] | None, initial: tuple[int, ...], config: GreaterConfig) -> SearchState:
        saved = saved or {}
        instruction = tuple(int(t) for t in saved.get("instruction_ids", initial))
        position = int(saved.get("position", 0))
        if not 0 <= position <= len(instruction) or (position == len(instruction) and config.past_end == "wrap"):
            position = 0  # a state from another configuration: start over at the first token
        total = config.steps if config.steps is not None else int(saved.get("total", 2 * len(initial)))
        return cls(
            step=int(saved.get("step", 0)),
            instruction=instruction,
            position=position,
            total=total,
            initial_score=float(saved.get("initial_score", math.nan)),
            initial_accuracy=float(saved.get("initial_accuracy", math.nan)),
        )

    def to_json(self, seed: int) -> dict[str, Any]:
        return {
            "version": 1,
            "step": self.step,
            "instruction_ids": list(self.instruction),
            "position": self.position,
            "total": self.total,
            "seed": seed,
            "initial_score": self.initial_score,
            "initial_accuracy": self.initial_accuracy,
        }


# ----------------------------------------------------------------------------------------------------------------
# The search

Loader = Callable[[str, torch.device, torch.dtype], tuple[Any, Any]]


def _load_local(name: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    return load_causal_lm(name, device=str(device), dtype=dtype)


class GreaterSearch:
    """GReaTer's step loop over one prompt; ``run`` returns a GreaterResult (also when the budget stops it)."""

    def __init__(self, config: GreaterConfig, *, loader: Loader | None = None) -> None:
        config.validate()
        self.config = config
        self._loader = loader or _load_local
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def load(self, model_name: str) -> tuple[Any, Any]:
        """(model, tokenizer) on the configured device and dtype, frozen: only the one-hot weight gets a gradient."""
        if model_name not in self._loaded:
            device, dtype = choose_device(self.config.device, self.config.dtype)
            model, tokenizer = self._loader(model_name, device, dtype)
            model = model.to(device=device, dtype=dtype).eval()
            model.requires_grad_(False)
            self._loaded[model_name] = (model, tokenizer)
        return self._loaded[model_name]

    def make_engine(self, model: Any, tokenizer: Any, meter: Meter, phrase: str, labels: Sequence[str] = ()) -> GreaterEngine:
        eos = eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
        phrase_ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
        if not phrase_ids:  # validated as text before; a tokenizer could still drop it (whitespace only)
            raise ConfigError(f"the extraction phrase {phrase!r} has no tokens", where="gradgate.yaml:optimize.greater")
        return GreaterEngine(
            model,
            self.config,
            pad_id=int(pad),
            eos_ids=eos,
            phrase_ids=phrase_ids,
            meter=meter,
            decode=lambda t: tokenizer.decode(list(t), skip_special_tokens=True),
            labels=label_choice(tokenizer, labels),
        )

    def run(
        self,
        *,
        prompt_body: str,
        train: Sequence[ItemLike],
        model_name: str,
        budget: BudgetLike | None,
        on_step: Callable[[GreaterStep], None] | None = None,
        state: Mapping[str, Any] | None = None,
        answers: AnswerSpec | None = None,
    ) -> GreaterResult:
        """Run the search (from ``state``'s step when resuming). A budget refusal ends the run early: the result
        then keeps the instruction so far and says ``stopped_by_budget``. ``answers``: the suite's options and
        phrase (the extraction phrase and the banned labels are built from them and the gold answers)."""
        cfg = self.config
        meter = Meter(budget, cfg.budget_role)
        problem, initial = self._prepare(prompt_body, train, model_name, meter, answers or AnswerSpec())
        at = SearchState.resume(state, initial, cfg)
        log.info(
            "GReaTer: %d items, %d steps from step %d, instruction %r, phrase %r",
            len(problem.items),
            at.total,
            at.step,
            problem.instruction_text(at.instruction),
            problem.phrase,
        )
        trajectory: list[GreaterStep] = []
        current: Rollout | None = None  # the kept instruction's rollout
        stopped_by_budget = False
        try:
            for step in range(at.step, at.total):
                phases = dict.fromkeys(PHASES, 0.0)
                t = time.perf_counter()
                if current is None:
                    current = self._first_rollout(problem, at)
                phases["generation"] = time.perf_counter() - t
                current, record = self._take_step(problem, at, current, step, phases)
                trajectory.append(record)
                if on_step is not None:
                    on_step(record)
        except BudgetExhausted as exc:
            log.info("GReaTer stopped early: %s", exc)
            stopped_by_budget = True
        resolved = {**asdict(cfg), "steps": at.total, "extraction_phrase": problem.phrase, "labels": list(problem.labels)}
        return GreaterResult(
            best_prompt=problem.prompt_text(at.instruction),
            best_instruction=problem.instruction_text(at.instruction),
            initial_prompt=prompt_body,
            best_score=current.score if current is not None else math.nan,
            initial_score=at.initial_score,
            best_accuracy=current.accuracy if current is not None else math.nan,
            initial_accuracy=at.initial_accuracy,
            trajectory=tuple(trajectory),
            stopped_by_budget=stopped_by_budget,
            calls=meter.calls,
            prompt_tokens=meter.prompt_tokens,
            completion_tokens=meter.completion_tokens,
            seed=cfg.seed,
            model=model_name,
            config=resolved,
            state=at.to_json(cfg.seed),
        )

    def prepare_problem(
        self,
        prompt_body: str,
        items: Sequence[ItemLike],
        model_name: str,
        meter: Meter,
        answers: AnswerSpec,
        golds: Sequence[str] | None = None,
    ) -> Problem:
        """The encoded items, the engine with the phrase resolved from ``golds`` (default: the items' answers), and
        the banned label tokens. Also the held-out evaluator's entry (bench/greater_eval.py scores with this)."""
        cfg = self.config
        split = split_prompt(prompt_body, cfg.span)
        if golds is None:
            golds = [str(it.expected) for it in items if it.expected is not None and str(it.expected).strip()]
        phrase, labels = resolve_phrase(cfg, golds, answers)
        model, tokenizer = self.load(model_name)
        # A suite with options ranks them (loglik): an answer is right when the gold one wins among them.
        engine = self.make_engine(model, tokenizer, meter, phrase, labels if answers.options else ())
        encoded = encode_items(tokenizer, split, items, use_chat_template=cfg.use_chat_template, form=answer_form(cfg))
        banned = banned_ids(tokenizer, labels) if cfg.ban_labels else frozenset()
        return Problem(engine, tokenizer, split, encoded, WordFilter(tokenizer), banned, phrase, labels)

    def _prepare(
        self, prompt_body: str, train: Sequence[ItemLike], model_name: str, meter: Meter, answers: AnswerSpec
    ) -> tuple[Problem, tuple[int, ...]]:
        """The items with gold answers (checked before the model loads), encoded; and the initial instruction's ids."""
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
        golds = [str(it.expected) for it in gold_items]  # the label set: from all the gold answers given
        split_prompt(prompt_body, cfg.span)  # refuses a body without placeholders before the model loads
        resolve_phrase(cfg, golds, answers)  # and an empty phrase
        order = torch.randperm(len(gold_items), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.max_items].tolist()
        drawn = sorted(order)  # encoded in the suite's order; `order` stays the draw's, for the token cap below
        problem = self.prepare_problem(prompt_body, [gold_items[i] for i in drawn], model_name, meter, answers, golds)
        initial = tuple(problem.tokenizer(problem.split.instruction, add_special_tokens=False)["input_ids"])
        if not initial:
            raise ConfigError(
                "the instruction to optimize is empty after tokenization",
                hint="give the prompt some free text outside the {{variables}}",
            )
        extra = len(initial) + cfg.max_new_tokens  # per item, besides its own text and gold answer
        costs = [len(it.before) + len(it.after) + len(it.gold) + extra for it in problem.items]
        at = {index: n for n, index in enumerate(drawn)}  # suite index -> position in problem.items
        chosen = step_items(costs, [at[i] for i in order], cfg.max_items, cfg.max_step_tokens)
        return replace(problem, items=[problem.items[i] for i in chosen]), initial

    def _first_rollout(self, problem: Problem, at: SearchState) -> Rollout:
        """The current instruction's rollout; on the very first run it also sets the initial score."""
        current = problem.engine.rollout([at.instruction], problem.items)[0]
        if math.isnan(at.initial_score):
            at.initial_score, at.initial_accuracy = current.score, current.accuracy
        return current

    def _take_step(
        self, problem: Problem, at: SearchState, current: Rollout, step: int, phases: dict[str, float]
    ) -> tuple[Rollout, GreaterStep]:
        """One step at ``at.position``; moves ``at`` on and returns the kept rollout and the step's record."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # per step, so a resumed run draws the same
        outcome = self.run_step(problem, current, at.instruction, at.position, gen, phases)
        candidates, winner = outcome if outcome is not None else ((), None)
        position, instr = at.position, at.instruction
        old_token = problem.token(instr[position]) if position < len(instr) else ""
        if winner is not None:
            instr, current = winner.instruction, winner
        new_token = problem.token(instr[position]) if winner is not None else old_token
        at.instruction = instr
        at.position = advance_position(
            position, len(instr), cfg.past_end, cfg.max_instruction_tokens, problem.ends_sentence(instr)
        )
        at.step = step + 1
        record = GreaterStep(
            step=step,
            position=position,
            old_token=old_token,
            new_token=new_token,
            prompt_text=problem.prompt_text(instr),
            loss=current.score,
            accuracy=current.accuracy,
            accepted=winner is not None,
            candidates=candidates,
            phase_seconds=phases,
            state=at.to_json(cfg.seed),
        )
        log.info(
            "GReaTer step %d pos %d: %r -> %r loss %.4f acc %.2f (%s)",
            step,
            position,
            old_token,
            new_token,
            record.loss,
            record.accuracy,
            ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()),
        )
        return current, record

    def _candidates(
        self, problem: Problem, current: Rollout, instr: tuple[int, ...], position: int, gen: torch.Generator
    ) -> tuple[list[int], bool] | None:
        """(candidate ids with the current/seed id first, insert?) at the slot, or None when none can be proposed."""
        cfg, is_word = self.config, problem.is_word
        insert = position == len(instr)
        rows = torch.stack([tk[position] for tk in current.topk])  # (N, k) next-token ids at the slot
        banned = set(problem.banned)
        if position > 0:
            banned.add(instr[position - 1])  # the reference bans the token before the slot: no "step step"
        if insert:  # the extension slot has no current token: the most common first allowed word there stands in
            firsts = (next((t for t in row if is_word(t) and t not in banned), None) for row in rows.tolist())
            seed_counts = Counter(t for t in firsts if t is not None)
            if not seed_counts:
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
            banned=banned,
        )
        if len(cands) == 1 and not insert:
            return None
        return cands, insert

    def rank_key(self, rollout: Rollout) -> tuple[float, float]:
        """Lower is better: (mistake rate, loss + fluency) with ``selection: mistakes`` (the paper), else (loss,)."""
        if self.config.selection == "mistakes":
            return (round(rollout.mistake_rate, 9), rollout.score)
        return (rollout.score, 0.0)

    def run_step(
        self,
        problem: Problem,
        current: Rollout,
        instr: tuple[int, ...],
        position: int,
        gen: torch.Generator,
        phases: dict[str, float],
    ) -> tuple[tuple[CandidateScore, ...], Rollout | None] | None:
        """One GReaTer step at ``position`` on token ids, given the current instruction's rollout.

        Returns (candidate table, the winning rollout or None when the current instruction stays), or None when
        no candidate could be proposed. Fills ``phases`` (proposal, gradient, selection seconds).
        """
        cfg, engine, items = self.config, problem.engine, problem.items
        t = time.perf_counter()
        proposed = self._candidates(problem, current, instr, position, gen)
        phases["proposal"] = time.perf_counter() - t
        if proposed is None:
            return None
        cands, insert = proposed

        t = time.perf_counter()
        grad = engine.gradient(instr, position, insert, cands, items, current.reasoning)  # (K,)
        phases["gradient"] = time.perf_counter() - t

        t = time.perf_counter()
        # "always" (the paper): the current token competes only if its gradient ranks it among the best few;
        # "if_better": the best few others, then the winner must beat it. At an extension, index 0 is a real candidate.
        ranked = torch.argsort(grad).tolist()
        if cfg.accept == "if_better" and not insert:
            ranked = [i for i in ranked if i != 0]
        order = ranked[: cfg.num_eval_candidates]
        trials = []
        for i in (i for i in order if insert or i != 0):
            new = list(instr)
            if insert:
                new.insert(position, cands[i])
            else:
                new[position] = cands[i]
            trials.append((i, tuple(new)))
        rollouts = engine.rollout([ins for _, ins in trials], items) if trials else []
        phases["selection"] = time.perf_counter() - t

        scored = {i: r for (i, _), r in zip(trials, rollouts, strict=True)}
        known = scored if insert else {0: current, **scored}
        table = tuple(
            CandidateScore(
                token_id=c,
                token=problem.token(c),
                gradient=float(grad[i]),
                score=known[i].score if i in known else None,
                accuracy=known[i].accuracy if i in known else None,
            )
            for i, c in enumerate(cands)
        )
        contenders = [known[i] for i in order if i in known]
        best_index = min(range(len(contenders)), key=lambda j: self.rank_key(contenders[j]), default=None)
        if best_index is None:
            return table, None
        best = contenders[best_index]
        if best is current or (cfg.accept == "if_better" and not self.rank_key(best) < self.rank_key(current)):
            return table, None
        return table, best
