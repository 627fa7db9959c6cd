"""DSPy's optimizers (MIPROv2 zero-shot and with demonstrations, COPRO, GEPA, BootstrapFewShotWithRandomSearch)
on a gradgate task, under gradgate's budget.

Fairness choices, so DSPy and gradgate differ only in the search:

- DSPy's language model is a `dspy.LM` whose engine sends every request through a gradgate `Gateway` (which calls
  the model through litellm, e.g. the in-process `local/` provider): the same budget tracker counts every call, the
  same replay cache makes reruns reproduce, and the same model serves the optimizer role. DSPy's own cache is off.
- The program DSPy optimizes has one `dspy.Predict` whose *instruction* is the optimized text; running the program
  scores the prompt `instruction + {{input}}` on the item with gradgate's scorer (log-likelihood of the answer options
  for embedded models). DSPy's search therefore optimizes exactly the score every method is compared on, and its best
  instruction is later scored on test by the same code path as everyone's.
- Demonstrations DSPy attaches to the predictor are written into the prompt's demonstrations slot (the same slot and
  format gradgate's `demos` method uses), so a few-shot DSPy program is scored, on dev and on test, as the prompt
  it amounts to. The forward pass records a DSPy trace entry (predictor, inputs, outputs) the way `dspy.Predict`
  would, which is what DSPy's bootstrapping and GEPA's reflection read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.shootout.tasks import BenchTask, items_by_input

from gradgate.core.demos import with_slot
from gradgate.core.suites import Item
from gradgate.errors import BudgetExhausted, GradgateError
from gradgate.models.session import Session
from gradgate.optimizers.demos.prompts import Demo, format_demos
from gradgate.scoring.scorer import ItemResult, Scorer

log = logging.getLogger(__name__)

T = TypeVar("T")

DSPY_METHODS = ("dspy-miprov2", "dspy-miprov2-demos", "dspy-copro", "dspy-gepa", "dspy-bootstrap-rs")
MAX_DEMOS = 4  # bootstrapped and labeled demonstrations per program (DSPy's defaults)
# MIPROv2 auto="light", zero-shot: 6 instruction candidates, 9 trials, the whole dev set per trial (dev ≤ 50 items).
MIPRO_CANDIDATES = 6
# Prompt-model calls MIPROv2 makes besides the candidates: program description (2), data summary (about one per
# 10 training items, plus one), and a JSON-adapter retry for each reply the chat adapter cannot parse.
MIPRO_PROPOSER_OVERHEAD = 4
COPRO_TEMPERATURE = 1.4  # COPRO's default init_temperature
_FIELD_HEADER = re.compile(r"\[\[\s*##\s*\w+\s*##\s*\]\]")


class LoopThread:
    """One event loop in a daemon thread: DSPy calls synchronously, gradgate's gateway is async."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-dspy-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        # Cancel what is still waiting (litellm's logging worker) first, as asyncio.run does; a loop closed under
        # a pending task makes Python print "Task was destroyed but it is pending!" and a traceback at exit.
        self.run(_cancel_pending())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


async def _cancel_pending() -> None:
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


@dataclass
class DspyRunLog:
    """What the DSPy run did, kept outside DSPy so a run cut short by the budget still has its best candidate."""

    dev_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # prompt body -> item id -> score
    exhausted: str | None = None
    engine_calls: int = 0
    parse_failures: int = 0

    def best_complete(self, dev_ids: list[str], original: str) -> tuple[str, float]:
        """The body with the best mean over the whole dev split (ties: the original, then the earliest)."""
        best, best_score = original, -1.0
        for instruction, scores in self.dev_scores.items():
            if all(i in scores for i in dev_ids):
                mean = sum(scores[i] for i in dev_ids) / len(dev_ids)
                if mean > best_score or (mean == best_score and instruction == original):
                    best, best_score = instruction, mean
        return best, best_score


class GatewayEngine:
    """A dspy engine (`complete(Request) -> Response`) that sends each request through gradgate's gateway."""

    def __init__(self, session: Session, loop: LoopThread, run_log: DspyRunLog, *, role: str, seed: int) -> None:
        self.session = session
        self.loop = loop
        self.run_log = run_log
        self.role = role
        self.seed = seed
        self._seen: Counter[str] = Counter()

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        messages: list[dict[str, str]] = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
        config = request.config
        spec = self.session.gateway.spec(self.role)
        temperature = spec.temperature if config.temperature is None else float(config.temperature)
        max_tokens = spec.max_tokens if config.max_tokens is None else int(config.max_tokens)
        # DSPy fans out n samples as n identical requests; number them so each is a distinct, replayable sample.
        key = hashlib.sha256(json.dumps([messages, temperature, max_tokens], sort_keys=True).encode()).hexdigest()
        sample = self._seen[key]
        self._seen[key] += 1
        self.run_log.engine_calls += 1
        try:
            reply = self.loop.run(
                self.session.gateway.complete(
                    self.role,
                    messages,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=self.seed + sample,
                    stop=list(config.stop) or None,
                    sample=sample,
                )
            )
        except BudgetExhausted as exc:
            self.run_log.exhausted = self.run_log.exhausted or exc.message
            raise
        return Response(
            id=None,
            model=reply.model,
            message=Message.assistant([TextPart(reply.text)]),
            finish_reason="stop",
            usage=Usage(
                input_tokens=reply.prompt_tokens,
                output_tokens=reply.completion_tokens,
                total_tokens=reply.prompt_tokens + reply.completion_tokens,
            ),
        )

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


class ItemScorer:
    """Scores (instruction, item) with gradgate's scorer; shared by every copy DSPy makes of the program."""

    def __init__(self, task: BenchTask, session: Session, loop: LoopThread, run_log: DspyRunLog) -> None:
        self.task = task
        self.scorer = Scorer(session.gateway, session.config, task.target)
        self.loop = loop
        self.run_log = run_log
        self.items = items_by_input(task.target.suite.items)

    def __deepcopy__(self, memo: dict[int, Any]) -> ItemScorer:
        return self  # DSPy deep-copies programs; the scorer (gateway, loop, locks) is shared, not copied

    def body(self, instruction: str, demos: Any = ()) -> str:
        """The prompt a DSPy predictor amounts to: its instruction, its demonstrations in the slot, the input."""
        shown = [Demo(values=(("input", str(d.get("input", ""))),), answer=str(d.get("answer", ""))) for d in demos or ()]
        body = self.task.body_for(instruction)
        return with_slot(body, format_demos(shown)) if shown else body

    def score(self, instruction: str, text: str, demos: Any = ()) -> ItemResult | None:
        item: Item | None = self.items.get(text)
        if item is None:
            raise GradgateError("DSPy asked about an input that is not in the task", hint="report this as a bug")
        body = self.body(instruction, demos)
        prompt = self.task.target.prompt.with_body(body)
        try:
            result = self.loop.run(self.scorer.score_item(prompt, item))
        except BudgetExhausted as exc:
            self.run_log.exhausted = self.run_log.exhausted or exc.message
            return None
        self.run_log.dev_scores.setdefault(body, {})[item.id] = result.score
        return result


def _program(instruction: str, item_scorer: ItemScorer) -> Any:
    import dspy

    class InstructionProgram(dspy.Module):  # type: ignore[misc]
        """Answers with the task model; the prompt is this predictor's instruction followed by the input."""

        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict(dspy.Signature("input -> answer", instruction))
            self.item_scorer = item_scorer

        def forward(self, input: str) -> Any:
            result = self.item_scorer.score(self.predict.signature.instructions, input, self.predict.demos)
            if result is None:  # budget exhausted: no answer, no credit
                return dspy.Prediction(answer="", score=0.0, expected="")
            outputs = dspy.Prediction(answer=result.output)
            if dspy.settings.trace is not None:  # what dspy.Predict records: bootstrapping and GEPA read it
                dspy.settings.trace.append((self.predict, {"input": input}, outputs))
            return dspy.Prediction(answer=result.output, score=result.score, expected=result.expected or "")

    return InstructionProgram()


def lenient_adapter() -> Any:
    """DSPy's chat adapter, made as forgiving as gradgate's optimizers are of a small model's replies.

    A reply that misses DSPy's `[[ ## field ## ]]` markers is not an error: fields that were parsed keep their value,
    the others get the whole reply (markers removed), as gradgate's parsers take the whole reply when a tag is
    missing. Without this, a 135M model never produces a parsable reply and both DSPy optimizers stop at the first
    proposal. No JSON-adapter retry: it would spend a second call on a reply this parse already accepts.
    """
    import dspy
    from dspy.utils.exceptions import AdapterParseError

    class LenientChatAdapter(dspy.ChatAdapter):  # type: ignore[misc]
        def parse(self, signature: Any, completion: str) -> dict[str, Any]:
            try:
                return dict(super().parse(signature, completion))
            except AdapterParseError as exc:
                parsed = dict(getattr(exc, "parsed_result", None) or {})
                text = _FIELD_HEADER.sub("", completion).strip()
                return {name: parsed.get(name, text) for name in signature.output_fields}

    return LenientChatAdapter(use_json_adapter_fallback=False)


def _metric(example: Any, prediction: Any, trace: Any = None) -> float:
    return float(prediction.score)


def _gepa_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
    """GEPA's metric: the same score, with the feedback text its reflection reads."""
    import dspy

    score = float(pred.score)
    if score >= 1.0:
        feedback = f"Correct: the answer {pred.answer!r} matches the expected {gold.answer!r}."
    else:
        feedback = f"Wrong: the model answered {pred.answer!r}; the expected answer is {gold.answer!r}."
    return dspy.Prediction(score=score, feedback=feedback)


def _examples(items: tuple[Item, ...]) -> list[Any]:
    import dspy

    return [dspy.Example(input=str(i.vars["input"]), answer=i.expected or "").with_inputs("input") for i in items]


def copro_shape(budget_calls: int, dev: int) -> tuple[int, int]:
    """COPRO's (breadth, depth) with the most candidates whose worst-case calls fit the budget (depth 2 preferred).

    Calls: breadth·depth candidate evaluations of `dev` items each, plus (breadth−1) + breadth·(depth−1) proposals,
    doubled for the JSON-adapter retry of an unparsable reply.
    """
    best = (2, 1)
    for depth in (2, 1):
        for breadth in range(2, 41):
            calls = breadth * depth * dev + 2 * ((breadth - 1) + breadth * (depth - 1))
            if calls <= budget_calls and breadth * depth > best[0] * best[1]:
                best = (breadth, depth)
    return best


def bootstrap_rs_candidates(budget_calls: int, train: int, dev: int) -> int:
    """BootstrapFewShotWithRandomSearch's num_candidate_programs whose worst case fits the budget: each of the
    3 fixed programs (zero-shot, labeled, unshuffled) and N random ones is scored on dev; every bootstrapped one
    first runs on up to `train` items (it stops once it has MAX_DEMOS correct ones, usually much earlier)."""
    per_program = dev + min(train, 2 * MAX_DEMOS)
    return max(1, budget_calls // per_program - 3)


def mipro_estimate(train: int, dev: int) -> int:
    """Worst-case calls of MIPROv2 light zero-shot: every distinct candidate on dev, bootstrapping on train, proposals."""
    return MIPRO_CANDIDATES * dev + train + 2 * (MIPRO_CANDIDATES + math.ceil(train / 10) + MIPRO_PROPOSER_OVERHEAD)


@dataclass(frozen=True)
class DspyOutcome:
    instruction: str
    body: str  # the prompt body: the instruction, the demonstrations in the slot, the input
    settings: dict[str, Any]
    dev_score: float | None
    stopped_reason: str | None
    engine_calls: int
    lm_history: int  # DSPy's own count of LM calls (its history), a cross-check of the gateway's count
    scored_item_ids: tuple[str, ...] = ()  # every item DSPy's program was run on (train/dev only)
    error: str | None = None


def _compile(
    method: str,
    student: Any,
    train: list[Any],
    dev: list[Any],
    *,
    lm: Any,
    adapter: Any,
    seed: int,
    budget_calls: int,
    settings: dict[str, Any],
) -> Any:
    """Build one DSPy optimizer and compile the student; `settings` is filled with what was used."""
    import dspy

    if method == "dspy-miprov2":
        settings |= {
            "auto": "light",
            "max_bootstrapped_demos": 0,
            "max_labeled_demos": 0,
            "seed": seed,
            "num_threads": 1,
            "estimated_calls": mipro_estimate(len(train), len(dev)),
        }
        if settings["estimated_calls"] > budget_calls:
            log.warning(
                "MIPROv2 light may need about %d calls, more than the budget of %d; the budget will cut it short",
                settings["estimated_calls"],
                budget_calls,
            )
        optimizer = dspy.MIPROv2(
            metric=_metric,
            prompt_model=lm,
            task_model=lm,
            auto="light",
            max_bootstrapped_demos=0,
            max_labeled_demos=0,
            num_threads=1,
            seed=seed,
            max_errors=10_000,
            verbose=False,
        )
        return optimizer.compile(student, trainset=train, valset=dev, minibatch=len(dev) > 50)
    elif method == "dspy-miprov2-demos":
        settings |= {
            "auto": "light",
            "max_bootstrapped_demos": MAX_DEMOS,
            "max_labeled_demos": MAX_DEMOS,
            "seed": seed,
            "num_threads": 1,
        }
        optimizer = dspy.MIPROv2(
            metric=_metric,
            prompt_model=lm,
            task_model=lm,
            auto="light",
            max_bootstrapped_demos=MAX_DEMOS,
            max_labeled_demos=MAX_DEMOS,
            num_threads=1,
            seed=seed,
            max_errors=10_000,
            verbose=False,
        )
        return optimizer.compile(student, trainset=train, valset=dev, minibatch=len(dev) > 50)
    elif method == "dspy-gepa":
        settings |= {
            "max_metric_calls": budget_calls,
            "reflection_lm": "the same embedded model",
            "reflection_minibatch_size": 3,
            "candidate_selection_strategy": "pareto",
            "seed": seed,
        }
        from dspy.teleprompt.gepa import InstructionProposer

        # The proposer's own calls go through the same adapter as every DSPy method here (strict or lenient).
        proposer = InstructionProposer(adapter=adapter)
        optimizer = dspy.GEPA(
            metric=_gepa_metric,
            max_metric_calls=budget_calls,
            reflection_lm=lm,
            instruction_proposer=proposer,
            reflection_minibatch_size=3,
            num_threads=1,
            seed=seed,
            track_stats=False,
        )
        return optimizer.compile(student, trainset=train, valset=dev)
    elif method == "dspy-bootstrap-rs":
        n = bootstrap_rs_candidates(budget_calls, len(train), len(dev))
        settings |= {
            "max_bootstrapped_demos": MAX_DEMOS,
            "max_labeled_demos": MAX_DEMOS,
            "num_candidate_programs": n,
            "num_threads": 1,
        }
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=_metric,
            max_bootstrapped_demos=MAX_DEMOS,
            max_labeled_demos=MAX_DEMOS,
            num_candidate_programs=n,
            num_threads=1,
            max_errors=10_000,
        )
        return optimizer.compile(student, trainset=train, valset=dev)
    elif method == "dspy-copro":
        breadth, depth = copro_shape(budget_calls, len(dev))
        settings |= {"breadth": breadth, "depth": depth, "init_temperature": COPRO_TEMPERATURE}
        optimizer = dspy.COPRO(prompt_model=lm, metric=_metric, breadth=breadth, depth=depth, init_temperature=COPRO_TEMPERATURE)
        # COPRO selects on the set it is given; that is the dev split here, as for every other method.
        return optimizer.compile(student, trainset=dev, eval_kwargs={"num_threads": 1, "display_progress": False})
    else:
        raise GradgateError(f"unknown DSPy method {method!r}", hint=f"use one of {', '.join(DSPY_METHODS)}")


def run_dspy(
    method: str, task: BenchTask, session: Session, *, seed: int, budget_calls: int, strict: bool = False
) -> DspyOutcome:
    """Run one DSPy optimizer; the budget is enforced by `session.budget` (every call goes through its gateway)."""
    import dspy

    loop = LoopThread()
    run_log = DspyRunLog()
    lm = dspy.LM(
        session.gateway.spec("optimizer").model,
        engine=GatewayEngine(session, loop, run_log, role="optimizer", seed=seed),
        cache=False,
    )
    item_scorer = ItemScorer(task, session, loop, run_log)
    student = _program(task.instruction, item_scorer)
    train, dev = _examples(task.splits.train), _examples(task.splits.dev)
    settings: dict[str, Any] = {}
    error: str | None = None
    compiled: Any = None
    try:
        adapter = dspy.ChatAdapter() if strict else lenient_adapter()
        with dspy.context(lm=lm, adapter=adapter, num_threads=1, max_errors=10_000):
            compiled = _compile(
                method, student, train, dev, lm=lm, adapter=adapter, seed=seed, budget_calls=budget_calls, settings=settings
            )
    except GradgateError:
        raise
    except Exception as exc:  # DSPy raises many kinds (parse errors of a small model's replies among them)
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.warning("%s stopped: %s", method, error)
    finally:
        loop.close()
    dev_ids = [i.id for i in task.splits.dev]
    if compiled is not None:
        instruction = compiled.predict.signature.instructions
        body = item_scorer.body(instruction, compiled.predict.demos)
        scores = run_log.dev_scores.get(body, {})
        dev_score = sum(scores[i] for i in dev_ids) / len(dev_ids) if all(i in scores for i in dev_ids) else None
    else:  # cut short: keep the best prompt fully scored on dev so far
        body, best = run_log.best_complete(dev_ids, task.body_for(task.instruction))
        instruction = task.instruction
        dev_score = best if best >= 0 else None
    return DspyOutcome(
        instruction=instruction,
        body=body,
        settings=settings,
        dev_score=dev_score,
        stopped_reason=run_log.exhausted,
        engine_calls=run_log.engine_calls,
        lm_history=len(lm.history),
        error=error,
        scored_item_ids=tuple(sorted({i for s in run_log.dev_scores.values() for i in s})),
    )
