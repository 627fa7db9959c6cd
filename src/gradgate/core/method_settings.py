"""Each optimization method's settings: one pydantic model per method, part of the config.

`gradgate schema` documents every field; a wrong key or value is a ConfigError naming `optimize.<method>.<key>`
when gradgate.yaml is loaded, before any call. Defaults follow the papers where they give one. The methods
(gradgate.optimizers) read these models; they hold no settings parser of their own.

`halving` and `demos` take `true` (the defaults), `false` (off) or a mapping of their own settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from gradgate.errors import ConfigError

Retrieval = Literal["relevance", "recency", "importance"]
Schedule = Literal["cosine", "linear", "constant"]
OverBudget = Literal["reject", "resample"]
ScoreScale = Literal["0-100", "0-1"]
EmbedderChoice = Literal["auto", "minilm", "tfidf"]

S = TypeVar("S", bound="MethodSettings")


class MethodSettings(BaseModel):
    # strict: YAML `true` is not the number 1, and "3" is not 3.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _switch(value: Any) -> Any:
    """`true` → the defaults, `false`/null → off, a mapping → those settings."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


class HalvingSettings(MethodSettings):
    """Successive halving on dev: every candidate on a small minibatch, the best promoted to more items."""

    min_items: int = Field(4, ge=1, description="Dev items of the first rung.")
    eta: int = Field(3, ge=2, description="Keep the best 1/eta per rung; the next rung has eta times as many items.")


Halving = Annotated[HalvingSettings | None, BeforeValidator(_switch)]


class DemosSettings(MethodSettings):
    """`optimize.demos`, and the `demos:` option of gradsum and gpo."""

    max_demos: int = Field(4, ge=1, description="Demonstrations per set (DSPy: max_bootstrapped_demos 4).")
    candidate_sets: int = Field(16, ge=1, description="Random sets tried at most (fewer when the budget cannot score them).")
    bootstrap_items: int = Field(32, ge=1, description="Training items the task model may answer to find correct ones.")
    max_answer_chars: int = Field(800, ge=1, description="Longer answers are not used as demonstrations.")
    halving: Halving = Field(default_factory=HalvingSettings, description="Successive halving of the sets on dev.")


Demos = Annotated[DemosSettings | None, BeforeValidator(_switch)]


class GradSumSettings(MethodSettings):
    """`optimize.gradsum` (GRAD-SUM, Austin & Chartock)."""

    beam_width: int = Field(3, ge=1, description="Prompts kept after each iteration (paper: 3).")
    iterations: int = Field(10, ge=1, description="Paper: 10.")
    train_batch: int = Field(30, ge=1, description="Training items generated and judged per prompt and iteration (paper: 30).")
    candidates_per_prompt: int = Field(4, ge=1, description="Editor samples per beam prompt; one editor call each.")
    summarize: bool = Field(True, description="Off: per-item gradients go straight to the editor (ablation).")
    dev_size: int | None = Field(
        None, ge=1, description="Dev items that score candidates; null = all (a subset is cheaper but noisier)."
    )
    max_gradient_items: int = Field(10, ge=1, description="Failing items that get a gradient, per prompt and iteration.")
    editor_temperature: float = Field(0.7, ge=0, description="> 0 so the samples differ (each stays cacheable).")
    gradient_max_tokens: int = Field(200, ge=1, description="Reply limit of a gradient.")
    edit_max_tokens: int = Field(400, ge=1, description="Reply limit of an edit.")
    mutations: int = Field(2, ge=0, description="Mutation-library candidates per beam prompt and iteration (0: off).")
    halving: Halving = Field(default_factory=HalvingSettings, description="Successive halving on dev (false: all on all).")
    demos: Demos = Field(None, description="true: demonstration sets on the best instructions (half the calls).")


class GPOSettings(MethodSettings):
    """`optimize.gpo` (GPO, Tang et al.)."""

    steps: int = Field(6, ge=0, description="Update steps after the initial prompt.")
    candidates_per_step: int = Field(8, ge=1, description="Sampled candidates per step (paper: 8).")
    retrieval: Retrieval = Field("relevance", description="Which trajectory entries form the update direction.")
    k: int = Field(3, ge=1, description="Trajectory entries shown: the current prompt plus k-1 earlier winners.")
    edit_budget_start: int = Field(50, ge=1, description="Words the first step may change (paper's decay: 50 -> 10).")
    edit_budget_end: int = Field(10, ge=1, description="Words the last step may change.")
    schedule: Schedule = Field("cosine", description="How the edit budget moves from start to end.")
    over_budget: OverBudget = Field("resample", description="What happens to a candidate that changed too many words.")
    max_resamples: int = Field(2, ge=0, description="Extra samples per candidate slot when resampling.")
    examples_in_prompt: int = Field(3, ge=0, description="Training items shown with their gold outputs (fresh each step).")
    score_scale: ScoreScale = Field("0-100", description="The scale the meta-prompt states; scores are converted to it.")
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature of the optimizer model (paper: 1.0).")
    max_tokens: int | None = Field(None, ge=1, description="Reply limit; null: enough for the prompt plus the budget.")
    embedder: EmbedderChoice = Field("auto", description="Relevance similarity: MiniLM when installed, else TF-IDF.")
    mutations: int = Field(2, ge=0, description="Mutation-library candidates added per step (0: off).")
    halving: Halving = Field(default_factory=HalvingSettings, description="Successive halving on dev (false: all on all).")
    demos: Demos = Field(None, description="true: demonstration sets on the best prompts (half the calls).")


def parse_settings(model: type[S], data: Mapping[str, Any] | BaseModel | None, where: str) -> S:
    """`data` (a mapping from gradgate.yaml, or a settings model) validated as `model`; a ConfigError naming the
    key (`where.key`) and the known keys otherwise."""
    if isinstance(data, model):
        return data
    values = data.model_dump() if isinstance(data, BaseModel) else dict(data or {})
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        raise ConfigError(
            f"{error['msg']} (got {error.get('input')!r})",
            where=f"{where}.{key}" if key else where,
            hint=f"known settings: {', '.join(model.model_fields)}",
        ) from None


def option(model: type[S], value: Any, where: str) -> S | None:
    """A `true`/`false`/mapping option (`halving:`, `demos:`) on its own."""
    switched = _switch(value)
    if switched is None:
        return None
    if not isinstance(switched, Mapping):
        raise ConfigError(f"must be true, false or a mapping of settings, not {value!r}", where=where)
    return parse_settings(model, switched, where)
