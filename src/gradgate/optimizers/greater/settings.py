"""GReaTer's resolved settings: `optimize.greater` (gradgate.core.method_settings.GreaterSettings, documented by
`gradgate schema`) with the preset applied, the device's preset chosen and the run's seed filled in.

`GreaterConfig` is what the search and the engine read. It is a plain dataclass so that code (tests, bench/) can
build one directly; `validate` refuses what gradgate.yaml would refuse, with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gradgate.core.method_settings import (
    GREATER_PRESETS,
    Accept,
    GreaterSettings,
    PastEnd,
    Preset,
    Selection,
    SpanChoice,
    parse_settings,
)

GPU_PRESET = GREATER_PRESETS["gpu"]
CPU_PRESET = GREATER_PRESETS["cpu"]
WHERE = "gradgate.yaml:optimize.greater"
_DEFAULT = GreaterSettings()  # the documented defaults, one source for the fields below


@dataclass
class GreaterConfig:
    """`GreaterSettings` resolved for one run (see each field's description there); the defaults are the cpu preset's."""

    steps: int | None = _DEFAULT.steps
    top_k: int = _DEFAULT.top_k
    num_intersections: int = _DEFAULT.num_intersections
    intersection_size: int = _DEFAULT.intersection_size
    fluency_weight: float = _DEFAULT.fluency_weight
    num_eval_candidates: int = _DEFAULT.num_eval_candidates
    selection: Selection = _DEFAULT.selection
    accept: Accept = _DEFAULT.accept
    answer_temperature: float = _DEFAULT.answer_temperature
    max_items: int = CPU_PRESET["max_items"]
    max_new_tokens: int = CPU_PRESET["max_new_tokens"]
    max_step_tokens: int = CPU_PRESET["max_step_tokens"]
    answer_tokens: int = _DEFAULT.answer_tokens
    past_end: PastEnd = _DEFAULT.past_end
    max_instruction_tokens: int = _DEFAULT.max_instruction_tokens
    span: SpanChoice = _DEFAULT.span
    use_chat_template: bool = _DEFAULT.use_chat_template
    extraction_phrase: str | None = _DEFAULT.extraction_phrase
    ban_labels: bool = _DEFAULT.ban_labels
    batch_size: int = CPU_PRESET["batch_size"]
    grad_batch_size: int = CPU_PRESET["grad_batch_size"]
    pass_tokens: int = CPU_PRESET["pass_tokens"]
    seed: int = 0
    device: str | None = _DEFAULT.device
    dtype: str | None = _DEFAULT.dtype
    preset: Preset = _DEFAULT.preset  # resolved: cpu or gpu once built from the settings
    budget_role: str = "optimizer"  # role charged to the shared budget

    def validate(self) -> None:
        """ConfigError (naming `optimize.greater.<key>`) for a value gradgate.yaml would refuse."""
        values = {name: getattr(self, name) for name in GreaterSettings.model_fields if hasattr(self, name)}
        parse_settings(GreaterSettings, values, WHERE)


def resolve_preset(preset: str, device: str | None) -> str:
    """``auto`` -> ``gpu`` when the chosen device is CUDA, else ``cpu``."""
    if preset != "auto":
        return preset
    if device is not None:
        return "gpu" if str(device).startswith("cuda") else "cpu"
    from gradgate.models.local import choose_device

    return "gpu" if choose_device(None, None)[0].type == "cuda" else "cpu"


def config_from_settings(settings: Mapping[str, Any] | GreaterSettings, seed: int) -> GreaterConfig:
    """`optimize.greater` as a GreaterConfig: validated (a ConfigError names the key), the preset's values first,
    explicit settings over them, `seed` (the run's) unless the settings give one. `model` is the adapter's."""
    parsed = parse_settings(GreaterSettings, settings, WHERE)
    preset = resolve_preset(parsed.preset, parsed.device)
    explicit = {k: v for k, v in parsed.model_dump(exclude={"model", "preset"}).items() if v is not None}
    return GreaterConfig(**{"seed": seed, **GREATER_PRESETS[preset], **explicit, "preset": preset})
