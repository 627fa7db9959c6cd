r"""The shared optimizer interface: a candidate, a trajectory, a context, an optimizer.

An optimizer never changes its input: it proposes candidate bodies, scores them through
`ctx.evaluate` (one scorer, one budget, every candidate recorded in the trajectory) and keeps its
own resumable state. The runner (`optimizers.runner`) splits the suite, confirms the best candidate
on the held-out test split, writes the artifacts and opens the pull request. A whole method, run
for real on a scripted model (this example runs as a test):

>>> import asyncio, tempfile
>>> from pathlib import Path
>>> from gradgate.core.config import Config
>>> from gradgate.core.discovery import discover
>>> from gradgate.models.scripted import ScriptedBackend
>>> from gradgate.models.session import Session
>>> from gradgate.optimizers.registry import register
>>> from gradgate.optimizers.runner import run_optimization
>>> @register
... class AskForDigits(Optimizer):
...     name = "ask-for-digits"
...     async def optimize(self, ctx: OptimizeContext) -> None:
...         for step in ctx.steps(1, start=ctx.state.get("step", 0)):  # resumes after the last saved step
...             await ctx.evaluate(ctx.original + "Reply with digits only.\n", step=step + 1, parent="c0000", origin="edit")
...             ctx.save_state({"step": step + 1})
>>> repo = Path(tempfile.mkdtemp())
>>> (repo / "prompts").mkdir(); (repo / "evals").mkdir()
>>> _ = (repo / "prompts" / "add.md").write_text("What is {{n}} + 1?\n")
>>> rows = "".join(f"  - {{id: i{n}, vars: {{n: {n}}}, expected: '{n + 1}'}}\n" for n in range(80))
>>> _ = (repo / "evals" / "add.yaml").write_text("metrics: [exact]\nitems:\n" + rows)
>>> def model(spec, messages):  # answers in digits only when asked to
...     n = int(messages[-1]["content"].split()[2])
...     return str(n + 1) if "digits only" in messages[-1]["content"] else f"It is {n + 1}."
>>> session = Session.open(repo, Config(), backend=ScriptedBackend(model), use_cache=False)
>>> target = discover(repo, session.config)[0]
>>> result = asyncio.run(run_optimization(session, target, "ask-for-digits", out_dir=repo / "out", seed=0))
>>> result.improved, result.test_original.mean, result.test_best.mean
(True, 0.0, 1.0)
>>> print(result.best.text)
What is {{n}} + 1?
Reply with digits only.
<BLANKLINE>
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from gradgate.core.budget import BudgetTracker
from gradgate.core.discovery import Target
from gradgate.core.files import atomic_write_text
from gradgate.core.prompts import template_variables
from gradgate.core.suites import Item, Splits
from gradgate.errors import BudgetExhausted
from gradgate.models.gateway import Gateway
from gradgate.optimizers.hygiene import missing_variables, screen
from gradgate.scoring.scorer import PromptEval, Scorer

log = logging.getLogger(__name__)

TRAJECTORY_VERSION = 1


# What reading a JSON file gradgate wrote earlier can raise when the file was damaged or planted instead: I/O,
# bad UTF-8 or JSON (ValueError), nesting too deep, fields of the wrong shape.
UNREADABLE = (OSError, ValueError, RecursionError, TypeError, AttributeError, KeyError)


class RecordingScorer(Scorer):
    """The session's scorer, remembering per-item scores (in the run's `scores.json` when given a `path`, so a
    resumed run has them too): the confirmation's dev intervals then need no second scoring."""

    def __init__(self, *args: Any, path: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = path
        self.seen: dict[str, list[float]] = {}

    @staticmethod
    def key(prompt_hash: str, items: Sequence[Item]) -> str:
        ids = hashlib.sha256("\x00".join(i.id for i in items).encode()).hexdigest()[:16]
        return f"{prompt_hash}:{ids}"

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.seen = {str(k): [float(x) for x in v] for k, v in data.items()}
        except UNREADABLE:
            log.warning("ignoring unreadable %s", self.path)

    async def score(self, prompt: Any, items: Sequence[Item], **kwargs: Any) -> PromptEval:
        evaluation = await super().score(prompt, items, **kwargs)
        if evaluation.complete and kwargs.get("sample", 0) == 0:
            self.seen[self.key(evaluation.prompt_hash, items)] = [i.score for i in evaluation.items]
            if self.path is not None:
                atomic_write_text(self.path, json.dumps(self.seen) + "\n")
        return evaluation

    def remember(self, prompt_hash: str, items: Sequence[Item], scores: list[float]) -> None:
        """Per-item scores assembled in pieces (successive halving), so the confirmation need not rescore dev."""
        self.seen[self.key(prompt_hash, items)] = list(scores)
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.seen) + "\n")


@dataclass(frozen=True)
class Candidate:
    """One prompt body an optimizer proposed, with what it scored and what it cost."""

    id: str  # "c0007"
    text: str
    step: int
    origin: str  # "initial", "edit", "sample", "token", ...
    parent: str | None = None
    dev_score: float | None = None
    train_score: float | None = None
    rejected: str | None = None  # why it was not scored (lost a template variable, over the edit budget...)
    dev_items: int | None = None  # set when dev_score is over only this many dev items (dropped by halving)
    edit_words: int | None = None  # word-level edit distance from its parent
    note: str | None = None  # method-specific: the gradient summary id, the token swap...
    calls: int = 0  # budget used when it was recorded (cumulative, all roles)
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class GradientNote:
    """A textual gradient (GRAD-SUM) or update direction (GPO) and the candidates it produced."""

    step: int
    parent: str
    summary: str
    per_item: tuple[str, ...] = ()
    children: tuple[str, ...] = ()


@dataclass
class Trajectory:
    """Every candidate in order, written to `trajectory.json` after each change (resumable)."""

    path: Path | None
    method: str
    prompt_id: str
    candidates: list[Candidate] = field(default_factory=list)
    gradients: list[GradientNote] = field(default_factory=list)

    def next_id(self) -> str:
        return f"c{len(self.candidates):04d}"

    def add(self, candidate: Candidate) -> Candidate:
        self.candidates.append(candidate)
        self.save()
        return candidate

    def add_gradient(self, note: GradientNote) -> None:
        self.gradients.append(note)
        self.save()

    def get(self, candidate_id: str) -> Candidate:
        return next(c for c in self.candidates if c.id == candidate_id)

    def scored(self) -> list[Candidate]:
        """Candidates scored on the whole dev set (not those successive halving dropped after a few items)."""
        return [c for c in self.candidates if c.dev_score is not None and c.dev_items is None]

    def best(self) -> Candidate:
        """Highest dev score; ties go to the earliest (the original wins a tie)."""
        scored = self.scored()
        return max(scored, key=lambda c: (c.dev_score or 0.0, -self.candidates.index(c)))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": TRAJECTORY_VERSION,
            "method": self.method,
            "prompt_id": self.prompt_id,
            "candidates": [asdict(c) for c in self.candidates],
            "gradients": [asdict(g) for g in self.gradients],
        }

    def save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Path, method: str, prompt_id: str) -> Trajectory:
        trajectory = cls(path=path, method=method, prompt_id=prompt_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != TRAJECTORY_VERSION or data.get("method") != method or data.get("prompt_id") != prompt_id:
                return trajectory
            candidates = [Candidate(**c) for c in data.get("candidates", [])]
            gradients = [
                GradientNote(**{**g, "per_item": tuple(g.get("per_item", ())), "children": tuple(g.get("children", ()))})
                for g in data.get("gradients", [])
            ]
        except FileNotFoundError:
            return trajectory
        except UNREADABLE as exc:  # a damaged or planted file: start afresh rather than fail the run
            log.warning("ignoring unreadable trajectory %s (%s)", path, type(exc).__name__)
            return trajectory
        trajectory.candidates, trajectory.gradients = candidates, gradients
        return trajectory


@dataclass
class RunState:
    """The optimizer's own resumable state, in `state.json`; `fingerprint` guards against stale files."""

    path: Path | None
    fingerprint: str
    data: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def save(self, data: dict[str, Any]) -> None:
        self.data = dict(data)
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint, "data": self.data}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | None, fingerprint: str) -> RunState:
        if path is None or not path.exists():
            return cls(path=path, fingerprint=fingerprint)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(stored, dict) or not isinstance(stored.get("data", {}), dict):
                raise TypeError("not a state object")
        except UNREADABLE as exc:
            log.warning("ignoring unreadable state file %s (%s)", path, type(exc).__name__)
            return cls(path=path, fingerprint=fingerprint)
        if stored.get("fingerprint") != fingerprint:
            log.info("state file %s belongs to another run (prompt, suite, method or seed changed); starting afresh", path)
            return cls(path=path, fingerprint=fingerprint)
        return cls(path=path, fingerprint=fingerprint, data=stored.get("data", {}), resumed=True)


def repair_placeholders(original: str, candidate: str) -> tuple[str, list[str]]:
    """Re-attach, after the candidate, the original's lines that carry the variables the candidate lost.

    Small rewriters often drop the `{{input}}` line while improving the instruction. With
    `optimize.repair_placeholders` on, such a candidate is repaired instead of rejected.
    """
    lost = set(missing_variables(original, candidate))
    lines = [line for line in original.splitlines() if lost & set(template_variables(line))]
    if not lines:
        return candidate, []
    return candidate.rstrip() + "\n\n" + "\n".join(lines) + "\n", lines


@dataclass
class OptimizeContext:
    """What an optimizer gets: the prompt and its splits, the scorer, the gateway and the budget."""

    target: Target
    scorer: RecordingScorer
    gateway: Gateway
    budget: BudgetTracker
    splits: Splits
    seed: int
    settings: dict[str, Any]
    trajectory: Trajectory
    state: RunState
    repair: bool = False  # optimize.repair_placeholders: repair candidates that lost a variable, not reject

    @property
    def original(self) -> str:
        return self.target.prompt.body

    @property
    def task_description(self) -> str:
        return self.scorer.task_description

    def steps(self, total: int, start: int = 0) -> Iterator[int]:
        yield from range(start, total)

    def save_state(self, data: dict[str, Any]) -> None:
        self.state.save(data)

    def _stamp(self, candidate: Candidate) -> Candidate:
        return replace(candidate, calls=self.budget.calls, tokens=self.budget.tokens, cost_usd=round(self.budget.cost_usd, 6))

    def cached_candidate(self, text: str) -> Candidate | None:
        """A candidate with this exact text scored before (on resume, or a duplicate proposal)."""
        return next(
            (c for c in self.trajectory.candidates if c.text == text and c.dev_score is not None and c.dev_items is None), None
        )

    def reject(
        self,
        text: str,
        *,
        step: int,
        parent: str | None,
        origin: str,
        reason: str,
        edit_words: int | None = None,
        note: str | None = None,
    ) -> Candidate:
        candidate = Candidate(
            id=self.trajectory.next_id(),
            text=text,
            step=step,
            origin=origin,
            parent=parent,
            rejected=reason,
            edit_words=edit_words,
            note=note,
        )
        log.info("rejected candidate %s: %s", candidate.id, reason)
        return self.trajectory.add(self._stamp(candidate))

    async def score_text(self, text: str, items: Sequence[Item]) -> PromptEval:
        """Score a body on items without recording it (train-batch generation, say)."""
        return await self.scorer.score(self.target.prompt.with_body(text), items)

    def screen(
        self,
        text: str,
        *,
        step: int,
        parent: str | None,
        origin: str,
        note: str | None = None,
        edit_words: int | None = None,
    ) -> Candidate | _Screened:
        """Candidate hygiene before any call (`optimizers.hygiene`): a repaired or unchanged text to score, or a
        record: the rejection (recorded now) or the earlier candidate with this exact text (never rescored)."""
        if self.repair and missing_variables(self.original, text):
            text, lines = repair_placeholders(self.original, text)
            note = f"{note + '; ' if note else ''}repaired: re-attached {' / '.join(lines)}"
        known = self.cached_candidate(text)
        if known is not None:
            return known
        reason = screen(self.original, text)
        if reason is not None:
            return self.reject(text, step=step, parent=parent, origin=origin, edit_words=edit_words, note=note, reason=reason)
        return _Screened(text=text, parent=parent, origin=origin, note=note, edit_words=edit_words)

    def record(
        self,
        text: str,
        *,
        step: int,
        parent: str | None,
        origin: str,
        dev_score: float,
        dev_items: int | None = None,
        edit_words: int | None = None,
        note: str | None = None,
    ) -> Candidate:
        """Record a scored candidate (`dev_items`: set when the score is over only part of dev)."""
        candidate = Candidate(
            id=self.trajectory.next_id(),
            text=text,
            step=step,
            origin=origin,
            parent=parent,
            dev_score=dev_score,
            dev_items=dev_items,
            edit_words=edit_words,
            note=note,
        )
        return self.trajectory.add(self._stamp(candidate))

    def remember(self, text: str, items: Sequence[Item], scores: Sequence[float]) -> None:
        """Record the per-item scores of a body assembled in pieces (successive halving), as a full scoring would."""
        self.scorer.remember(self.target.prompt.with_body(text).content_hash(), items, list(scores))

    async def evaluate(
        self,
        text: str,
        *,
        step: int,
        parent: str | None,
        origin: str,
        items: Sequence[Item] | None = None,
        edit_words: int | None = None,
        note: str | None = None,
        screened: bool = False,
    ) -> Candidate:
        """Score `text` on dev (or `items`), record it in the trajectory and return it.

        Candidates that fail hygiene (`screen`) are rejected without a call; a text scored before returns its
        earlier record. BudgetExhausted propagates: the runner stops the search there and keeps the best so far.
        """
        if not screened:
            checked = self.screen(text, step=step, parent=parent, origin=origin, note=note, edit_words=edit_words)
            if isinstance(checked, Candidate):
                return checked
            text, note = checked.text, checked.note
        evaluation = await self.score_text(text, self.splits.dev if items is None else items)
        if not evaluation.complete:
            raise BudgetExhausted(f"budget exhausted while scoring a candidate: {evaluation.stopped_reason}")
        return self.record(
            text, step=step, parent=parent, origin=origin, dev_score=evaluation.mean_score, edit_words=edit_words, note=note
        )


@dataclass(frozen=True)
class _Screened:
    """A text that passed hygiene and is to be scored."""

    text: str
    parent: str | None
    origin: str
    note: str | None = None
    edit_words: int | None = None


class Optimizer(ABC):
    """One prompt-optimization method. Subclasses set `name` and implement `optimize`."""

    name: ClassVar[str]
    #: True when the method needs gold answers (GReaTer's loss does).
    needs_expected: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    @abstractmethod
    async def optimize(self, ctx: OptimizeContext) -> None:
        """Propose and score candidates through `ctx` until done or the budget stops it."""
