"""GReaTer's settings: `optimize.greater` in gradgate.yaml, with the paper's defaults where a 2-core CPU allows.

Two presets: ``cpu`` (what fits a 2-core CPU step in under a minute) and ``gpu`` (close to the paper: 50 training
items, 384 reasoning tokens). ``auto`` takes ``gpu`` when CUDA is present. Explicit settings override the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from gradgate.errors import ConfigError
from gradgate.models.local import DTYPE_NAMES
from gradgate.optimizers.greater.prompts import SpanChoice

PastEnd = Literal["wrap", "extend", "grow"]
Selection = Literal["mistakes", "loss"]
Accept = Literal["always", "if_better"]
Preset = Literal["auto", "cpu", "gpu"]

# The paper's scale (Das et al., run_llama3_all.sh: 50 training items; reasoning of a few hundred tokens).
GPU_PRESET: dict[str, Any] = {"max_items": 50, "max_new_tokens": 384, "batch_size": 150, "grad_batch_size": 10}
WHERE = "gradgate.yaml:optimize.greater"


@dataclass
class GreaterConfig:
    steps: int | None = None  # None: twice the instruction's token count (every slot visited twice); the budget bounds it
    top_k: int = 40  # paper: top-40 next tokens per item at the optimized position
    num_intersections: int = 6  # paper: 6 random item subsets are intersected, then united
    intersection_size: int = 5  # items per subset; fewer items -> larger intersections
    fluency_weight: float = 0.2  # paper's lambda on the prompt NLL; keeps the prompt readable
    num_eval_candidates: int = 3  # candidates (best gradient) whose reasoning is regenerated and scored (paper: 3)
    selection: Selection = "mistakes"  # rank them by teacher-forced mistake rate (paper), ties by loss; or by loss only
    # "always": the best of the evaluated candidates replaces the slot (the paper's rule; the current token competes
    # only when its gradient ranks it among them). "if_better": only when it beats the current instruction.
    # Default "if_better", measured on BBH boolean_expressions (bench/results/greater-heldout-boolean_expressions.json,
    # 6 steps, 150 held-out items): 0.447 -> 0.533 (McNemar p 0.06) with a readable prompt; "always" drifted to
    # "Context for Today en escript ..." (train mistakes 0.69 vs 0.56; final prompt 0.493 held-out, p 0.40).
    accept: Accept = "if_better"
    answer_temperature: float = 0.2  # divides the answer logits in the loss: sharper, as in the paper
    max_items: int = 16  # training items used per step; the paper uses 50, a 2-core CPU cannot (see GPU_PRESET)
    max_new_tokens: int = 128  # reasoning length; shorter reasoning is cut before the answer and teaches format only
    answer_tokens: int = 8  # greedy tokens read after the phrase when generating answers (held-out accuracy)
    past_end: PastEnd = "grow"  # past the last token: wrap to 0, extend to the cap, or grow until it ends with "."
    max_instruction_tokens: int = 48  # "extend"/"grow" stop growing here and wrap
    span: SpanChoice = "auto"  # which free text of the body is optimized (see prompts.split_prompt)
    use_chat_template: bool = True  # wrap the prompt as a user turn when the tokenizer has a chat template
    # None: built from the suite (prompts.build_extraction_phrase: the options or label set, or a numeric cue);
    # the suite's `scoring.answer_phrase` overrides the built one, this setting overrides both. Never empty.
    extraction_phrase: str | None = None
    ban_labels: bool = True  # answer labels ("True", "A") never become instruction tokens: no answer leaks in
    batch_size: int = 48  # rows per batched generation: the 3 candidates x 16 items in one batch (KV cache memory)
    grad_batch_size: int = 16  # rows per gradient pass (activation memory: keep small for large models)
    seed: int = 0  # item order and subset sampling; greedy decoding is otherwise deterministic
    device: str | None = None  # None: cuda when present, else cpu (gradgate.models.local.choose_device)
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu (float64 for gradient checks)
    preset: Preset = "auto"  # cpu: the defaults above; gpu: GPU_PRESET; auto: gpu when CUDA is present
    budget_role: str = "optimizer"  # role charged to the shared budget

    def validate(self) -> None:
        positive = (
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
                raise ConfigError(f"greater.{name} must be at least 1 (got {getattr(self, name)})", where=WHERE)
        if self.steps is not None and int(self.steps) < 1:
            raise ConfigError(f"greater.steps must be at least 1 (got {self.steps})", where=WHERE, hint="or leave it unset")
        if self.answer_temperature <= 0:
            raise ConfigError(f"greater.answer_temperature must be positive (got {self.answer_temperature})", where=WHERE)
        if self.fluency_weight < 0:
            raise ConfigError(f"greater.fluency_weight must not be negative (got {self.fluency_weight})", where=WHERE)
        choices: dict[str, tuple[str, ...]] = {
            "past_end": ("wrap", "extend", "grow"),
            "span": ("auto", "prefix", "suffix"),
            "selection": ("mistakes", "loss"),
            "accept": ("always", "if_better"),
            "preset": ("auto", "cpu", "gpu"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"greater.{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})", where=WHERE
                )
        if self.extraction_phrase is not None and not str(self.extraction_phrase).strip():
            raise ConfigError(
                "greater.extraction_phrase is empty: the answer loss needs a phrase to follow the reasoning",
                where=f"{WHERE}.extraction_phrase",
                hint="leave it unset (built from the suite) or write one, e.g. 'Therefore, the final answer is'",
            )
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"greater.dtype must be one of {', '.join(DTYPE_NAMES)} (got {self.dtype!r})", where=WHERE)


def resolve_preset(preset: str, device: str | None) -> str:
    """``auto`` -> ``gpu`` when the chosen device is CUDA, else ``cpu``."""
    if preset != "auto":
        return preset
    if device is not None:
        return "gpu" if str(device).startswith("cuda") else "cpu"
    from gradgate.models.local import choose_device

    return "gpu" if choose_device(None, None)[0].type == "cuda" else "cpu"


def config_from_settings(settings: Mapping[str, Any], seed: int) -> GreaterConfig:
    """`optimize.greater` (less its `model`, which the adapter reads) as a GreaterConfig; unknown keys are refused.

    The preset's values come first; explicit settings override them."""
    known = {f.name for f in fields(GreaterConfig)}
    unknown = sorted(set(settings) - known - {"model"})
    if unknown:
        raise ConfigError(
            f"unknown GReaTer setting(s): {', '.join(unknown)}",
            where=WHERE,
            hint=f"known: model, {', '.join(sorted(known))}",
        )
    values = {k: v for k, v in settings.items() if k != "model"}
    preset = resolve_preset(str(values.get("preset", "auto")), values.get("device"))
    base = GPU_PRESET if preset == "gpu" else {}
    try:
        config = GreaterConfig(**{"seed": seed, **base, **values})
    except TypeError as exc:
        raise ConfigError(f"invalid GReaTer settings: {exc}", where=WHERE) from None
    config.preset = preset  # type: ignore[assignment]
    config.validate()
    return config
