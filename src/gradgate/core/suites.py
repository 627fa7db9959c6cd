"""Eval suites: rows of variables with expected answers and/or assertions.

A suite is a YAML file (settings plus `items:` or a `dataset:`), or a bare JSONL/CSV file of rows.
In a row, `id`, `expected` and `assert` are reserved; every other key is a template variable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gradgate.core.config import JudgeConfig, check_metric_entries, format_validation_error
from gradgate.core.files import check_tree, digest, parse_json, parse_yaml, read_text, resolve_inside
from gradgate.errors import ConfigError

log = logging.getLogger(__name__)

RESERVED = ("id", "expected", "assert")


@dataclass(frozen=True)
class Item:
    id: str
    vars: dict[str, Any]
    expected: str | None = None
    assertions: tuple[dict[str, Any], ...] = ()


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str | None = Field(None, description="Local json/jsonl/csv/parquet file (inside the repository).")
    name: str | None = Field(None, description="A hub dataset id (needs a network).")
    config: str | None = None
    split: str = "train"
    vars: dict[str, str] | None = Field(None, description="Template variable -> column. Default: every column but `expected`.")
    expected: str | None = Field(None, description="Column holding the expected answer.")
    expected_after: str | None = Field(None, description="Keep only the text after this marker in expected (GSM8K: '####').")
    limit: int | None = Field(None, ge=1)


class ScoringSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["generate", "loglik"] = Field(
        "generate", description="loglik: rank `options` by log-likelihood (local models)."
    )
    options: list[str] = Field(default_factory=list)
    answer_phrase: str | None = Field(
        None,
        description="Phrase the answer follows ('Therefore, the final answer (True or False) is'): loglik scores the "
        "options after it, and GReaTer's loss reads the gold answer after it (default: GReaTer builds one).",
    )
    reasoning_tokens: int | None = Field(
        None,
        ge=1,
        description="loglik only: the task model first reasons for up to this many tokens (greedy at its default "
        "temperature 0), then the options are ranked after its reasoning and the answer phrase, as GReaTer trains "
        "(default: ranked right after the prompt).",
    )

    @field_validator("options")
    @classmethod
    def _distinct_options(cls, options: list[str]) -> list[str]:
        if any(not o.strip() for o in options):
            raise ValueError("an option is blank: every option must be an answer the model can give")
        stripped = [o.strip() for o in options]
        if len(set(stripped)) != len(stripped):
            repeated = next(o for o in stripped if stripped.count(o) > 1)
            raise ValueError(f"option {repeated!r} is listed twice: ranking needs distinct options")
        return options

    @property
    def ranked_options(self) -> tuple[str, ...]:
        """The answers the model's ranking chooses from (loglik scoring); () when it writes its answer."""
        return tuple(self.options) if self.mode == "loglik" else ()  # distinct: `_distinct_options`

    @property
    def ranks_after_reasoning(self) -> bool:
        """Options ranked after the task model's own reasoning (else right after the prompt, or not ranked)."""
        return self.mode == "loglik" and self.reasoning_tokens is not None


class JudgeExample(BaseModel):
    """A judge output labeled by a person: the judge is checked against these (`gradgate.scoring.calibration`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str | None = None
    item: str | None = Field(None, description="Id of a suite item: the judge sees its variables and expected answer.")
    vars: dict[str, Any] | None = Field(None, description="Template variables for the input the judge sees.")
    input: str | None = Field(None, description="The input the judge sees, verbatim (instead of rendering the prompt).")
    expected: str | None = None
    output: str = Field(description="The output under judgment.")
    verdict: Literal["pass", "fail"] | None = Field(None, description="The person's verdict (binary judges).")
    score: int | None = Field(None, ge=1, le=10, description="The person's score, 1-10 (passes at judge.pass_threshold).")

    @model_validator(mode="after")
    def _one_label(self) -> JudgeExample:
        if (self.verdict is None) == (self.score is None):
            raise ValueError("give exactly one of `verdict` (pass/fail) or `score` (1-10)")
        if sum(x is not None for x in (self.item, self.vars, self.input)) > 1:
            raise ValueError("give at most one of `item`, `vars` or `input`")
        return self


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str | None = Field(None, description="What the task is; shown to the judge and the optimizers.")
    metrics: list[str | dict[str, Any]] = Field(default_factory=list)
    judge: JudgeConfig | None = None
    scoring: ScoringSpec = Field(default_factory=ScoringSpec)
    max_tokens: int | None = Field(None, ge=1)
    system: str | None = Field(None, description="Optional system message sent before the rendered prompt.")
    items: list[dict[str, Any]] | None = None
    dataset: DatasetSpec | None = None
    judge_examples: list[JudgeExample] = Field(
        default_factory=list, description="Outputs labeled by a person; eval and check report the judge's agreement."
    )


@dataclass(frozen=True)
class Suite:
    path: Path
    rel_path: str
    spec: SuiteSpec
    items: tuple[Item, ...] = field(default_factory=tuple)

    def content_hash(self) -> str:
        return digest(
            {
                "spec": self.spec.model_dump(exclude={"items", "dataset"}),
                "items": [[i.id, i.vars, i.expected, list(i.assertions)] for i in self.items],
            }
        )


def load_suite(path: Path, repo: Path) -> Suite:
    path = resolve_inside(repo, path, what="suite")
    rel = path.relative_to(repo.resolve()).as_posix()
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        data = parse_yaml(read_text(path, what="suite file"), where=rel)
        if isinstance(data, list):
            data = {"items": data}
        if not isinstance(data, dict):
            raise ConfigError("a suite must be a mapping with `items:` or `dataset:`", where=rel)
        try:
            spec = SuiteSpec.model_validate(data)
        except ValidationError as exc:
            raise format_validation_error(exc, rel) from None
        check_metric_entries(spec.metrics, f"{rel}:metrics")
        if spec.scoring.reasoning_tokens is not None and spec.scoring.mode != "loglik":
            raise ConfigError(
                "`scoring.reasoning_tokens` applies to `mode: loglik` only (a generated answer holds its own reasoning)",
                where=f"{rel}:scoring.reasoning_tokens",
                hint="remove it, or set `scoring: {mode: loglik, options: [...]}`; `max_tokens` bounds a generated answer",
            )
        if spec.items is not None and spec.dataset is not None:
            raise ConfigError("give either `items:` or `dataset:`, not both", where=rel)
        if spec.dataset is not None:
            rows = _load_dataset(spec.dataset, repo, rel)
        elif spec.items is not None:
            rows = spec.items
        else:
            raise ConfigError("the suite has no `items:` and no `dataset:`", where=rel, hint="add rows under `items:`")
    elif suffix == ".jsonl":
        spec, rows = SuiteSpec(), _read_jsonl(read_text(path, what="suite file"), rel)
    elif suffix == ".csv":
        spec, rows = SuiteSpec(), _read_csv(read_text(path, what="suite file"), rel)
    else:
        raise ConfigError(f"unsupported suite format {suffix!r}", where=rel, hint="use .yaml, .yml, .jsonl or .csv")
    check_tree(rows, where=rel)  # dataset rows too (jsonl/csv/yaml rows were checked when parsed)
    items = tuple(_to_item(row, index, rel) for index, row in enumerate(rows))
    if not items:
        raise ConfigError("the suite has no rows", where=rel, hint="add at least one item")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ConfigError(f"duplicate item id(s): {', '.join(dup)}", where=rel)
    return Suite(path=path, rel_path=rel, spec=spec, items=items)


def _to_item(row: Any, index: int, rel: str) -> Item:
    where = f"{rel}:items[{index}]"
    if not isinstance(row, dict):
        raise ConfigError("a row must be a mapping of variables", where=where)
    if "vars" in row:
        variables = row["vars"]
        extra = set(row) - {"vars", *RESERVED}
        if extra:
            raise ConfigError(f"unknown key(s) {', '.join(sorted(extra))}", where=where, hint="use vars, expected, assert, id")
        if not isinstance(variables, dict):
            raise ConfigError("`vars` must be a mapping", where=where)
    else:
        variables = {k: v for k, v in row.items() if k not in RESERVED}
    bad_names = [repr(k) for k in variables if not isinstance(k, str)]
    if bad_names:
        raise ConfigError(
            f"variable name(s) {', '.join(bad_names)[:200]} are not text", where=where, hint="quote the names (`'1': value`)"
        )
    expected = row.get("expected")
    assertions = row.get("assert") or []
    if isinstance(assertions, dict | str):
        assertions = [assertions]
    if not isinstance(assertions, list):
        raise ConfigError("`assert` must be a list of metrics", where=where)
    check_metric_entries(assertions, f"{where}.assert")
    normalized = tuple({"type": a} if isinstance(a, str) else a for a in assertions)
    item_id = str(row.get("id") if row.get("id") is not None else index)
    return Item(id=item_id, vars=dict(variables), expected=None if expected is None else str(expected), assertions=normalized)


def _read_jsonl(text: str, rel: str) -> list[dict[str, Any]]:
    rows = []
    # Only \n ends a line: str.splitlines would also split inside strings at U+2028, \x0c, \x1c...
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        rows.append(parse_json(line, where=rel, label=f"line {number}"))
    return rows


def _read_csv(text: str, rel: str) -> list[dict[str, Any]]:
    try:
        reader = csv.DictReader(io.StringIO(text), strict=True)
        rows = [dict(row) for row in reader]
    except csv.Error as exc:
        raise ConfigError(f"is not valid CSV: {exc}", where=rel) from None
    if reader.fieldnames is None:
        raise ConfigError("has no header row", where=rel, hint="the first line names the columns")
    if len(set(reader.fieldnames)) != len(reader.fieldnames):
        repeated = next(n for n in reader.fieldnames if reader.fieldnames.count(n) > 1)  # a header is short
        raise ConfigError(f"the header names the column {repeated[:80]!r} twice", where=rel, hint="rename one of them")
    for number, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise ConfigError(f"row on line {number} has a different number of fields than the header", where=rel)
        if isinstance(row.get("assert"), str) and row["assert"].strip():
            try:
                row["assert"] = json.loads(row["assert"])
            except (ValueError, RecursionError):  # not JSON: a metric name
                row["assert"] = [row["assert"]]
    return rows


def _load_dataset(spec: DatasetSpec, repo: Path, rel: str) -> list[dict[str, Any]]:
    import datasets  # heavy; only when a suite asks for it

    datasets.disable_progress_bars()
    if spec.path:
        file = resolve_inside(repo, spec.path, what="dataset file", where=rel)
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(file.suffix.lower())
        if builder is None:
            raise ConfigError(
                f"unsupported dataset file {spec.path}", where=f"{rel}:dataset.path", hint="json, jsonl, csv or parquet"
            )
        if not file.is_file():
            raise ConfigError(f"dataset file {spec.path} does not exist", where=f"{rel}:dataset.path")
        try:
            ds = datasets.load_dataset(builder, data_files=str(file), split="train")
        except Exception as exc:  # datasets raises many types for malformed files
            raise ConfigError(f"dataset {spec.path} cannot be loaded: {exc}", where=f"{rel}:dataset") from None
    elif spec.name:
        try:
            ds = datasets.load_dataset(spec.name, spec.config, split=spec.split)
        except Exception as exc:
            raise ConfigError(
                f"hub dataset {spec.name} cannot be loaded: {exc}",
                where=f"{rel}:dataset.name",
                hint="hub datasets need a network; use a local file otherwise",
            ) from None
    else:
        raise ConfigError("dataset needs `path` or `name`", where=f"{rel}:dataset")
    if spec.limit:
        ds = ds.select(range(min(spec.limit, len(ds))))
    rows = []
    for record in ds:
        mapping = spec.vars or {c: c for c in record if c != spec.expected}
        missing = [c for c in mapping.values() if c not in record]
        if missing:
            raise ConfigError(
                f"column(s) {', '.join(missing)} not in the dataset",
                where=f"{rel}:dataset.vars",
                hint=f"columns are: {', '.join(record)}",
            )
        row: dict[str, Any] = {"vars": {var: record[col] for var, col in mapping.items()}}
        if spec.expected:
            if spec.expected not in record:
                raise ConfigError(f"column {spec.expected} not in the dataset", where=f"{rel}:dataset.expected")
            answer = str(record[spec.expected])
            if spec.expected_after and spec.expected_after in answer:
                answer = answer.rsplit(spec.expected_after, 1)[1].strip()
            row["expected"] = answer
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Splits:
    train: tuple[Item, ...]
    dev: tuple[Item, ...]
    test: tuple[Item, ...]


def split_items(items: tuple[Item, ...] | list[Item], *, seed: int, train: float, dev: float) -> Splits:
    """Deterministic train/dev/test split: order by a seeded hash of the item id, then cut."""
    ordered = sorted(items, key=lambda i: hashlib.sha256(f"{seed}:{i.id}".encode()).hexdigest())
    n = len(ordered)
    n_train = max(1, round(n * train)) if n >= 3 else max(0, n - 2)
    n_dev = max(1, round(n * dev)) if n >= 3 else min(1, n)
    n_train = max(0, min(n_train, n - n_dev - 1))
    return Splits(
        train=tuple(ordered[:n_train]),
        dev=tuple(ordered[n_train : n_train + n_dev]),
        test=tuple(ordered[n_train + n_dev :]),
    )
