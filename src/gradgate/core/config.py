"""`gradgate.yaml`: the pydantic models, their JSON Schema, and loading with precise errors.

The file is optional; without it the defaults below apply (prompts under `prompts/`, suites under
`evals/`, every role on the embedded model). Every error names the file, the key path and a hint.
"""

from __future__ import annotations

import logging
import math
import os
import re
from importlib import resources
from pathlib import Path, PureWindowsPath
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from gradgate.core.files import has_control_chars, outside_git_dir, parse_yaml, read_text, resolve_inside, shown
from gradgate.core.git import tracked_files
from gradgate.core.method_settings import MAX_SEED, DemosSettings, GPOSettings, GradSumSettings, GreaterSettings
from gradgate.core.secrets import register_env_secret
from gradgate.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_FILENAMES = ("gradgate.yaml", "gradgate.yml")
LOCAL_PREFIX = "local/"  # models gradgate runs in process (gradgate.models.local)
DEFAULT_MODEL = f"{LOCAL_PREFIX}smollm2-135m-instruct"
ROLES = ("task", "judge", "optimizer", "editor")
CACHE_DIR_HINT = "point cache_dir (and any symlink on its way, e.g. .gradgate) at a directory inside the repository"


class _Strict(BaseModel):
    # Every float must be finite: `.inf` as a timeout or a threshold is a typo, never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_api_base(value: str) -> str:
    """An http(s) URL with a host, or a ValueError that says so."""
    if has_control_chars(value) or any(ch.isspace() for ch in value):
        raise ValueError("api_base must be a URL without spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"api_base is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("api_base must be an http:// or https:// URL with a host, e.g. http://localhost:8000/v1")
    return value


def check_model_string(value: str) -> str:
    if not value.strip() or len(value) > 300 or has_control_chars(value) or any(ch.isspace() for ch in value):
        raise ValueError("a model is a non-empty litellm model string without spaces, e.g. openai/gpt-4o-mini")
    return value


class ModelSpec(_Strict):
    """One model for one role: any litellm model string, plus how to reach it."""

    model: str = Field(DEFAULT_MODEL, description="litellm model string, e.g. openai/gpt-4o-mini or local/smollm2-135m-instruct")
    api_base: str | None = Field(None, description="Base URL of an OpenAI-compatible server (vLLM, Ollama, transformers serve).")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (never the key itself)."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, le=32768)

    @property
    def is_local(self) -> bool:
        """An embedded model run in process (`local/<name>`), not a provider reached over HTTP."""
        return self.model.startswith(LOCAL_PREFIX)

    @field_validator("model")
    @classmethod
    def _model_string(cls, value: str) -> str:
        return check_model_string(value)

    @field_validator("api_base")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_api_base(value)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME_RE.fullmatch(value):
            raise ValueError("api_key_env is the NAME of an environment variable (letters, digits, _), not the key itself")
        return value


def _as_spec(value: Any) -> Any:
    return {"model": value} if isinstance(value, str) else value


class ModelsConfig(_Strict):
    task: ModelSpec = Field(default_factory=ModelSpec)
    judge: ModelSpec = Field(default_factory=ModelSpec)
    optimizer: ModelSpec = Field(default_factory=ModelSpec)
    editor: ModelSpec | None = Field(None, description="Writes optimizer candidates; defaults to the optimizer model.")
    concurrency: int = Field(4, ge=1, le=256, description="Concurrent LLM calls.")
    timeout_seconds: float = Field(120.0, gt=0, le=86400)
    max_retries: int = Field(4, ge=0, le=20, description="Retries on 429, 5xx and timeouts, with backoff.")
    max_retry_wait_seconds: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description="Longest wait before a retry; a server asking (Retry-After) for longer fails the call.",
    )

    _coerce = field_validator("task", "judge", "optimizer", "editor", mode="before")(_as_spec)

    def for_role(self, role: str) -> ModelSpec:
        if role == "editor":
            return self.editor or self.optimizer
        return getattr(self, role)  # type: ignore[no-any-return]


class BudgetConfig(_Strict):
    """Hard limits for one run. `None` means unlimited; the run stops cleanly at the first limit."""

    # A zero limit would stop every run before its first call: refused (exit 2), as on the command line.
    max_calls: int | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    max_usd: float | None = Field(None, gt=0)
    max_seconds: float | None = Field(None, gt=0)


class JudgeConfig(_Strict):
    criteria: str = Field(
        "The answer is correct, complete and directly addresses the input.",
        description="What a good output does; the judge scores against this.",
    )
    scale: Literal["binary", "1-10"] = "binary"
    task_description: str | None = None
    pass_threshold: float = Field(0.5, ge=0, le=1, description="Normalized score at or above which an item passes.")
    method: Literal["auto", "reasoning", "loglik"] = Field(
        "auto",
        description="reasoning: explain, then a verdict line; loglik: rank the verdicts by log-likelihood (embedded "
        "models, which cannot hold the verdict format); auto: loglik for local/ judges, else reasoning.",
    )
    min_agreement: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Least share of a suite's labeled judge examples (`judge_examples`) the judge must agree with; "
        "below it, verdicts that rest on this judge are 'inconclusive'.",
    )
    score_untrusted: bool = Field(
        False,
        description="check: score a suite's items even when its judge falls below min_agreement (the verdict stays "
        "'inconclusive'; the report shows what the scores alone say). Off: those items are not scored, which saves "
        "their calls.",
    )


class GateConfig(_Strict):
    max_drop: float = Field(
        0.05, ge=0, le=1, description="Largest allowed drop of the mean score before a change counts as a regression."
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the paired tests.")
    min_items: int = Field(10, ge=1, description="Fewer paired items than this give 'inconclusive'.")
    repeats: int = Field(1, ge=1, le=20, description="Score each item this many times (noisy judges) and average.")
    bootstrap_resamples: int = Field(2000, ge=100, le=1_000_000)
    sequential: bool = Field(True, description="Stop early once the verdict cannot change.")
    batch_size: int = Field(8, ge=1, description="Items scored per look of the sequential test.")


class SplitConfig(_Strict):
    train: float = Field(0.5, gt=0, lt=1)
    dev: float = Field(0.25, gt=0, lt=1)
    test: float = Field(0.25, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.dev + self.test - 1.0) > 1e-6:
            raise ValueError("train + dev + test must add up to 1")
        return self


class OptimizeConfig(_Strict):
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds splits and sampling.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    margin: float = Field(0.0, ge=0, le=1, description="A new prompt must beat the original on test by more than this.")
    alpha: float = Field(0.1, gt=0, lt=1, description="Significance level for 'beats the original'.")
    repair_placeholders: bool = Field(
        False,
        description="Repair a candidate that lost a {{variable}} by re-attaching the original's line that holds it, "
        "instead of rejecting it (small rewriters often drop that line).",
    )
    gradsum: GradSumSettings = Field(default_factory=GradSumSettings, description="GRAD-SUM settings.")
    gpo: GPOSettings = Field(default_factory=GPOSettings, description="GPO settings.")
    greater: GreaterSettings = Field(default_factory=GreaterSettings, description="GReaTer settings.")
    demos: DemosSettings = Field(default_factory=DemosSettings, description="Demonstrations settings.")


class Config(_Strict):
    """The whole of gradgate.yaml."""

    version: Literal[1] = 1
    prompts: list[str] = Field(
        default_factory=lambda: ["prompts/**/*.md", "prompts/**/*.txt", "prompts/**/*.prompt"],
        description="Glob patterns (relative to the repository root) of prompt files.",
    )
    suites_dir: str = Field(
        "evals",
        description="Where a prompt's suite is found when its front matter names none: <suites_dir>/<id>.{yaml,jsonl,csv}.",
    )
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    metrics: list[str | dict[str, Any]] = Field(default_factory=list, description="Default metrics for suites that declare none.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    cache_dir: str = Field(".gradgate/cache", description="LLM response cache, relative to the repository root.")

    @field_validator("prompts")
    @classmethod
    def _globs(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            problem = _relative_path_problem(pattern, glob=True)
            if problem:
                raise ValueError(f"prompts[{index}] {pattern!r}: {problem}")
        return patterns

    @field_validator("suites_dir", "cache_dir")
    @classmethod
    def _relative_dir(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "cache_dir" and value == "":
            return value  # no cache
        problem = _relative_path_problem(value, glob=False)
        if problem:
            raise ValueError(f"{value!r}: {problem}")
        return value


def _relative_path_problem(value: str, *, glob: bool) -> str | None:
    """Why `value` is not a usable path (or glob) relative to the repository root, or None."""
    what = "a glob" if glob else "a path"
    if not value.strip():
        return f"is empty; give {what} relative to the repository root, e.g. prompts/**/*.md"
    if has_control_chars(value):
        return "contains a NUL or control character; remove it"
    if value.startswith(("/", "\\")) or PureWindowsPath(value).drive:
        return f"is absolute; give {what} relative to the repository root"
    if ".." in re.split(r"[/\\]", value):
        return "climbs out of the repository with '..'; keep it inside"
    return None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of gradgate.yaml, generated from the models above."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gradgate.yaml"
    return schema


def shipped_schema_text() -> str:
    return resources.files("gradgate").joinpath("schema/gradgate.schema.json").read_text(encoding="utf-8")


def find_config(repo: Path) -> Path | None:
    for name in CONFIG_FILENAMES:
        candidate = repo / name
        if candidate.is_file():
            return candidate
    return None


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_HINTS = {
    "extra_forbidden": "remove the key or check its spelling (`gradgate schema` prints every valid key)",
    "literal_error": "use one of the allowed values",
    "missing": "add the key",
}


def format_validation_error(exc: ValidationError, where: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after[_sums_to_one(), SplitConfig]",))
        hint = _HINTS.get(err["type"], "see `gradgate schema`")
        lines.append(f"{where}: {_key_path(loc)}: {err['msg']} (hint: {hint})")
    return ConfigError(
        "invalid configuration:\n  " + "\n  ".join(lines), hint="fix the keys above; `gradgate schema` prints the schema"
    )


def parse_config(data: Any, where: str) -> Config:
    """Validate parsed gradgate.yaml data; registers the credentials it names with the redactor."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys to values", where=where, hint="see `gradgate schema`")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, where) from None
    check_metric_entries(config.metrics, f"{where}:metrics")
    for name in credential_env_names(config):
        register_env_secret(name)
    return config


def credential_env_names(config: Config) -> list[str]:
    """The environment variables the config names as API keys (their values are masked everywhere)."""
    specs = [config.models.for_role(role) for role in ROLES]
    return sorted({spec.api_key_env for spec in specs if spec.api_key_env})


def check_metric_entries(raw: Any, where: str) -> None:
    """Shape checks of metric specs, at load time (before any model call).

    Names are checked by `gradgate.scoring.metrics`; here: a name or a mapping with a `type` name, a
    regex `pattern` that is text and compiles, a `value` that is text or a number, a finite positive
    `weight`.
    """
    if not isinstance(raw, list):
        raise ConfigError("metrics must be a list", where=where, hint="e.g. `metrics: [final_number]`")
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        if isinstance(entry, str):
            if not entry.strip():
                raise ConfigError("a metric name is empty", where=at, hint="e.g. `exact`, `contains`, `judge`")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ConfigError(
                "a metric is a name or a mapping with a `type:` name", where=at, hint="e.g. `{type: regex, pattern: '^yes'}`"
            )
        value = entry.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
            raise ConfigError("`value` must be text or a number", where=f"{at}.value", hint="quote it")
        if "pattern" in entry or entry["type"] == "regex":
            _check_pattern(entry.get("pattern") or value, f"{at}.pattern")
        if "weight" in entry:
            weight = entry["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
                raise ConfigError(
                    f"`weight` must be a finite number above 0 (got {str(weight)[:40]})",
                    where=f"{at}.weight",
                    hint="e.g. `weight: 1` or `weight: 0.5`",
                )


def _check_pattern(pattern: Any, at: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError("regex needs `pattern:` as non-empty text", where=at, hint="quote it, e.g. `pattern: '^(yes|no)$'`")
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ConfigError(
            f"invalid regular expression: {exc}", where=at, hint="check the pattern's brackets and escapes"
        ) from None


def check_cache_dir(repo: Path, config: Config, where: str) -> Path | None:
    """The resolved cache directory, refused (exit 2) when it, or a symlink on its way, leads outside the
    repository or into `.git/`. None when caching is off."""
    if not config.cache_dir:
        return None
    return resolve_inside(
        repo,
        config.cache_dir,
        what="cache_dir",
        where=where,
        hint=CACHE_DIR_HINT,
    )


def check_cache_untracked(repo: Path, cache_dir: str, where: str = "cache_dir") -> Path:
    """The resolved cache directory, refused (exit 2) when git tracks any file in it: the caches are trusted as
    gradgate's own earlier answers, so a commit placing files there could forge model replies and scores past
    the gate. Outside a git work tree there is no commit to fear and nothing is checked. Run it before the
    first model call of every run that reads a cache."""
    directory = resolve_inside(repo, cache_dir, what="cache_dir", where=where, hint=CACHE_DIR_HINT)
    root = repo.resolve()
    rel = directory.relative_to(root).as_posix() if directory != root else "."
    tracked = tracked_files(root, Path(rel))
    if not tracked:
        return directory
    listed = ", ".join(shown(name) for name in tracked[:3]) + (f" and {len(tracked) - 3} more" if len(tracked) > 3 else "")
    raise ConfigError(
        f"the cache directory {shown(rel)} holds files committed to the repository ({listed}): "
        "a commit could forge model replies and scores",
        where=where,
        hint=f"`git rm -r --cached {shown(rel)}` and add it to .gitignore (keep it between CI runs with actions/cache)",
    )


def config_location(repo: Path, path: Path | None) -> Path | None:
    """`--config` as a file: relative to the repository in every command, an absolute path as given."""
    return path if path is None or path.is_absolute() else repo / path


def load_config(repo: Path, path: Path | None = None) -> tuple[Config, Path | None]:
    """Load `path` (`config_location`; or the repository's gradgate.yaml); no file means the documented defaults."""
    path = config_location(repo, path)
    if path is None:
        path = find_config(repo)
        if path is None:
            log.info("no gradgate.yaml in %s; using defaults", repo)
            config = Config()
            check_cache_dir(repo, config, "cache_dir (default)")
            return config, None
    else:
        outside_git_dir(path, what="config file", hint="pass --config with a gradgate.yaml of the work tree")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", hint="pass --config with an existing file, or omit it")
    data = parse_yaml(read_text(path, what="config file"), where=str(path))
    config = parse_config(data, str(path))
    check_cache_dir(repo, config, f"{path}:cache_dir")
    return config, path


def apply_env_overrides(config: Config, env: dict[str, str] | None = None) -> Config:
    """GRADGATE_<ROLE>_MODEL and GRADGATE_API_BASE override the models (the action passes these)."""
    env = dict(os.environ) if env is None else env
    api_base = env.get("GRADGATE_API_BASE")
    changes: dict[str, tuple[str, dict[str, str | None]]] = {}
    for role in ROLES:
        model = env.get(f"GRADGATE_{role.upper()}_MODEL")
        where = f"GRADGATE_{role.upper()}_MODEL" if model else "GRADGATE_API_BASE"
        changes[role] = (where, {"model": model, "api_base": api_base})
    return _override(config, changes)


def override_models(config: Config, **role_models: str | None) -> Config:
    """Apply --model / --judge-model / --optimizer-model from the command line."""
    return _override(
        config, {role: ("--model" if role == "task" else f"--{role}-model", {"model": m}) for role, m in role_models.items()}
    )


def _override(config: Config, changes: dict[str, tuple[str, dict[str, str | None]]]) -> Config:
    """`config` with each role's model spec changed (role -> (where, values); None values change nothing), validated.

    An editor that follows the optimizer (no `models.editor`) keeps following it, overrides included: it gets a spec
    of its own only when its own model is overridden, and then from the optimizer's overridden spec."""
    models = config.models
    for role in ROLES:  # the optimizer before the editor
        where, given = changes.get(role, ("", {}))
        values = {k: v for k, v in given.items() if v}
        if not values or (role == "editor" and models.editor is None and "model" not in values):
            continue
        models = models.model_copy(update={role: _respec(models.for_role(role), where, **values)})
    if models is config.models:
        return config
    return config.model_copy(update={"models": models})


def _respec(spec: ModelSpec, where: str, **changes: str) -> ModelSpec:
    """`spec` with `changes` applied and validated (model_copy alone would skip validation)."""
    data = spec.model_dump()
    data.update(changes)
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, where) from None
