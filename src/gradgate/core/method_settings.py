"""Each optimization method's settings: one pydantic model per method, part of the config.

`gradgate schema` documents every field; a wrong key or value is a ConfigError naming `optimize.<method>.<key>`
when gradgate.yaml is loaded, before any call. Defaults follow the papers where they give one. The methods
(gradgate.optimizers) read these models; they hold no settings parser of their own.

`halving` and `demos` take `true` (the defaults), `false` (off) or a mapping of their own settings.

GReaTer's settings that depend on the hardware default to its preset (`GREATER_PRESETS`): `cpu` fits a 2-core CPU
step in under a minute, `gpu` is close to the paper; `auto` takes `gpu` when CUDA is present.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from gradgate.errors import ConfigError

MAX_SEED = 2**32 - 1  # numpy and torch generators take seeds up to here (GReaTer derives per-step seeds from it)

Retrieval = Literal["relevance", "recency", "importance"]
Schedule = Literal["cosine", "linear", "constant"]
OverBudget = Literal["reject", "resample"]
ScoreScale = Literal["0-100", "0-1"]
EmbedderChoice = Literal["auto", "minilm", "tfidf"]
PastEnd = Literal["wrap", "extend", "grow"]
Selection = Literal["mistakes", "loss"]
Accept = Literal["always", "if_better"]
Preset = Literal["auto", "cpu", "gpu"]
SpanChoice = Literal["auto", "prefix", "suffix"]
Dtype = Literal["float32", "float64", "bfloat16", "float16"]  # torch attribute names

# GReaTer's hardware-dependent settings per preset. gpu is the paper's scale (Das et al., run_llama3_all.sh: 50
# training items; reasoning of a few hundred tokens); a 2-core CPU cannot run that. max_step_tokens bounds the
# tokens one step's items put through the model, so that long inputs (causal_judgement's stories: 230 tokens on
# average, against 9-51 for the other BBH tasks) cost fewer items per step instead of a step several times as long.
# A step costs about 1.6 s per 100 such tokens on 2 cores (causal_judgement, 25 items, 5,946 tokens: 100 s), so
# the cpu preset's 4,096 keeps a step near a minute; 50 short items (navigate: 3,631 tokens) still fit.
# pass_tokens: on 2 cores, passes of about 1,200-2,400 padded tokens over length-sorted rows run fastest
# (causal_judgement's gradient: 4 rows of ~300 tokens 28% faster than 16 unsorted); short rows still go many per pass.
GREATER_PRESETS: dict[str, dict[str, int]] = {
    "cpu": {
        "max_items": 16,
        "max_new_tokens": 128,
        "batch_size": 48,
        "grad_batch_size": 16,
        "max_step_tokens": 4096,
        "pass_tokens": 2048,
    },
    "gpu": {
        "max_items": 50,
        "max_new_tokens": 384,
        "batch_size": 150,
        "grad_batch_size": 10,
        "max_step_tokens": 65536,
        "pass_tokens": 65536,
    },
}

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


def _preset_note(name: str) -> str:
    cpu, gpu = GREATER_PRESETS["cpu"][name], GREATER_PRESETS["gpu"][name]
    return f"null: the preset's (cpu {cpu}, gpu {gpu})."


class GreaterSettings(MethodSettings):
    """`optimize.greater` (GReaTer, Das et al.): a local model optimizes the prompt from token gradients."""

    model: str | None = Field(
        None,
        description="The local model that optimizes: an embedded model (local/...), a model folder or a hub id; "
        "null: the task model, which must then be an embedded one. Another model than the task model is a transfer.",
    )
    preset: Preset = Field("auto", description="cpu or gpu defaults for the settings left null; auto: gpu when CUDA is present.")
    steps: int | None = Field(
        None, ge=1, description="null: twice the instruction's token count (every slot visited twice); the budget bounds it."
    )
    top_k: int = Field(40, ge=1, description="Top next tokens per item at the optimized position (paper: 40).")
    num_intersections: int = Field(
        6, ge=1, description="Random item subsets whose candidates are intersected, then united (paper: 6)."
    )
    intersection_size: int = Field(5, ge=1, description="Items per subset; fewer items give larger intersections.")
    fluency_weight: float = Field(0.2, ge=0, description="The paper's lambda on the prompt's NLL; keeps the prompt readable.")
    num_eval_candidates: int = Field(
        3, ge=1, description="Candidates (best gradient) whose reasoning is regenerated and scored (paper: 3)."
    )
    selection: Selection = Field(
        "mistakes", description="Rank them by teacher-forced mistake rate (paper), ties by loss; or by loss only."
    )
    # "if_better" measured on BBH boolean_expressions (bench/results/greater-heldout-boolean_expressions.json, 6 steps,
    # 150 held-out items): 0.447 -> 0.533 (McNemar p 0.06) with a readable prompt; "always" drifted to "Context for
    # Today en escript ..." (train mistakes 0.69 vs 0.56; final prompt 0.493 held-out, p 0.40).
    accept: Accept = Field(
        "if_better",
        description="always: the best evaluated candidate replaces the slot (the paper's rule); "
        "if_better: only when it beats the current instruction.",
    )
    answer_temperature: float = Field(0.2, gt=0, description="Divides the answer logits in the loss: sharper, as in the paper.")
    max_items: int | None = Field(
        None, ge=1, description="Training items used per step (paper: 50). " + _preset_note("max_items")
    )
    max_step_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens one step's items may hold together (prompt, reasoning, answer): fewer items than "
        "max_items when the inputs are long, drawn in the same seeded order, at least one. " + _preset_note("max_step_tokens"),
    )
    max_new_tokens: int | None = Field(
        None,
        ge=0,
        description="Reasoning tokens; shorter reasoning is cut before the answer. 0: no reasoning, the answer follows "
        "the prompt directly (the default for a loglik suite without scoring.reasoning_tokens, which is scored that "
        "way). " + _preset_note("max_new_tokens"),
    )
    answer_tokens: int = Field(8, ge=1, description="Greedy tokens read after the phrase when answers are generated.")
    past_end: PastEnd = Field(
        "grow", description="Past the last token: wrap to 0, extend to the cap, or grow until it ends with a period."
    )
    max_instruction_tokens: int = Field(48, ge=1, description="extend and grow stop growing here and wrap.")
    span: SpanChoice = Field(
        "auto",
        description="Which free text of the body is optimized: after the last placeholder "
        "(suffix), before the first (prefix); auto: the suffix when it holds a letter.",
    )
    use_chat_template: bool = Field(True, description="Wrap the prompt as a user turn when the tokenizer has a chat template.")
    extraction_phrase: str | None = Field(
        None,
        description="Follows the reasoning; the loss is on the answer after it. null: the suite's scoring.answer_phrase, "
        "else built from the suite (its options or labels, or a numeric cue).",
    )
    ban_labels: bool = Field(True, description="Answer labels (True, A) never become instruction tokens: no answer leaks in.")
    batch_size: int | None = Field(
        None, ge=1, description="Rows per batched generation (KV cache memory). " + _preset_note("batch_size")
    )
    grad_batch_size: int | None = Field(
        None, ge=1, description="Rows per gradient pass (activation memory). " + _preset_note("grad_batch_size")
    )
    pass_tokens: int | None = Field(
        None,
        ge=1,
        description="Padded tokens (rows x the longest) per forward pass over whole sequences, the gradient's and the "
        "rollouts' prefill: rows are sorted by length and grouped up to this, so long rows pad and attend little. "
        + _preset_note("pass_tokens"),
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Item order and subset sampling; null: optimize.seed (or --seed)."
    )
    device: str | None = Field(None, description="A torch device (cpu, cuda, cuda:1); null: cuda when present, else cpu.")
    dtype: Dtype | None = Field(None, description="null: bfloat16 on cuda, float32 on cpu.")

    @field_validator("extraction_phrase")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "the answer loss needs a phrase to follow the reasoning; leave it unset (built from the suite) "
                "or write one, e.g. 'Therefore, the final answer is'"
            )
        return value


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
