"""GReaTer's settings: `optimize.greater` in gradgate.yaml, with the paper's defaults where a 2-core CPU allows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from gradgate.errors import ConfigError
from gradgate.models.local import DTYPE_NAMES
from gradgate.optimizers.greater.prompts import EXTRACTION_PHRASE, SpanChoice

PastEnd = Literal["wrap", "extend"]


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
    answer_tokens: int = 8  # greedy tokens read after the phrase when generating answers (held-out accuracy)
    past_end: PastEnd = "wrap"  # past the last instruction token: start again at 0, or grow the instruction
    max_instruction_tokens: int = 48  # "extend" stops growing here and wraps
    span: SpanChoice = "auto"  # which free text of the body is optimized (see prompts.split_prompt)
    use_chat_template: bool = True  # wrap the prompt as a user turn when the tokenizer has a chat template
    extraction_phrase: str = EXTRACTION_PHRASE
    batch_size: int = 16  # rows per batched generation (KV cache memory)
    grad_batch_size: int = 16  # rows per gradient pass (activation memory: keep small for large models)
    seed: int = 0  # item order and subset sampling; greedy decoding is otherwise deterministic
    device: str | None = None  # None: cuda when present, else cpu (gradgate.models.local.choose_device)
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
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"greater.dtype must be one of {', '.join(DTYPE_NAMES)} (got {self.dtype!r})")


def config_from_settings(settings: Mapping[str, Any], seed: int) -> GreaterConfig:
    """`optimize.greater` (less its `model`, which the adapter reads) as a GreaterConfig; unknown keys are refused."""
    known = {f.name for f in fields(GreaterConfig)}
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
