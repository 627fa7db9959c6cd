"""Deterministic metrics. Each turns (output, item) into a score in [0, 1] and a short reason.

Metric specs are a name (`final_number`) or a mapping (`{type: regex, pattern: "^yes"}`), with an
optional `weight`. `judge` is a metric too; the LLM-as-judge lives in `gradgate.scoring.judge`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import jsonschema

from gradgate.core.config import check_metric_entries
from gradgate.errors import ConfigError


@dataclass(frozen=True)
class MetricSpec:
    type: str
    value: str | None = None
    pattern: str | None = None
    schema: dict[str, Any] | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class MetricResult:
    name: str
    score: float
    reason: str


def normalize_text(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_numbers(text: str) -> list[Decimal]:
    numbers = []
    for raw in _NUMBER_RE.findall(text):
        cleaned = raw.replace(",", "").replace("$", "")
        try:
            numbers.append(Decimal(cleaned))
        except InvalidOperation:
            continue
    return numbers


def final_number(text: str) -> Decimal | None:
    """GSM8K style: the number after '####' or 'answer is', else the last number in the text."""
    for marker in ("####", "answer is", "Answer:"):
        if marker.lower() in text.lower():
            tail = text[text.lower().rfind(marker.lower()) + len(marker) :]
            found = extract_numbers(tail)
            if found:
                return found[0]
    found = extract_numbers(text)
    return found[-1] if found else None


_CHOICE_RES = (
    re.compile(r"answer is[:\s]*\(?([A-Ra-r])\)?(?![A-Za-z])"),
    re.compile(r"\(([A-R])\)"),
    re.compile(r"^\s*([A-R])[\).:]?\s*$", re.MULTILINE),
)


def extract_choice(text: str) -> str | None:
    for pattern in _CHOICE_RES:
        matches = pattern.findall(text)
        if matches:
            return str(matches[-1 if pattern is not _CHOICE_RES[1] else 0]).upper()
    return None


def _expected(item_expected: str | None, spec: MetricSpec, name: str) -> str:
    value = spec.value if spec.value is not None else item_expected
    if value is None:
        raise ConfigError(
            f"metric {name!r} needs an expected answer", hint="add `expected:` to the row or `value:` to the metric"
        )
    return value


def _exact(output: str, expected: str | None, spec: MetricSpec) -> MetricResult:
    want = _expected(expected, spec, "exact")
    ok = output.strip() == want.strip()
    return MetricResult("exact", float(ok), "matches exactly" if ok else f"expected {want!r}")


def _normalized(output: str, expected: str | None, spec: MetricSpec) -> MetricResult:
    want = _expected(expected, spec, "normalized")
    ok = normalize_text(output) == normalize_text(want)
    return MetricResult("normalized", float(ok), "matches after normalization" if ok else f"expected {want!r}")


def _contains(output: str, expected: str | None, spec: MetricSpec) -> MetricResult:
    want = _expected(expected, spec, "contains")
    ok = want.lower() in output.lower()
    return MetricResult("contains", float(ok), f"contains {want!r}" if ok else f"does not contain {want!r}")


def _regex(output: str, expected: str | None, spec: MetricSpec) -> MetricResult:
    pattern = spec.pattern or spec.value
    assert pattern is not None  # checked in parse_metrics (check_metric_entries)
    ok = re.search(pattern, output, re.MULTILINE) is not None
    return MetricResult("regex", float(ok), f"matches /{pattern}/" if ok else f"does not match /{pattern}/")


def _choice(output: str, expected: str | None, spec: MetricSpec) -> MetricResult:
    want = extract_choice(_expected(expected, spec, "choice")) or _expected(expected, spec, "choice").strip().upper()
    got = extract_choice(output)
    ok = got == want
    return MetricResult("choice", float(ok), f"chose ({got})" + ("" if ok else f", expected ({want})"))


def _final_number(output: str, expected: str | None, spec: MetricSpec) -> MetricResult:
    want = final_number(_expected(expected, spec, "final_number"))
    got = final_number(output)
    ok = want is not None and got is not None and got == want
    return MetricResult("final_number", float(ok), f"final number {got}" + ("" if ok else f", expected {want}"))


def _strip_fences(text: str) -> str:
    match = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    return match.group(1) if match else text


def _json_schema(output: str, expected: str | None, spec: MetricSpec) -> MetricResult:
    try:
        document = json.loads(_strip_fences(output).strip())
    except json.JSONDecodeError as exc:
        return MetricResult("json_schema", 0.0, f"not valid JSON: {exc.msg}")
    if spec.schema is None:
        return MetricResult("json_schema", 1.0, "valid JSON")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(spec.schema).iter_errors(document))
    if error is not None:
        return MetricResult(
            "json_schema", 0.0, f"schema violation at {'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        )
    return MetricResult("json_schema", 1.0, "valid against the schema")


METRICS: dict[str, Callable[[str, str | None, MetricSpec], MetricResult]] = {
    "exact": _exact,
    "normalized": _normalized,
    "contains": _contains,
    "regex": _regex,
    "choice": _choice,
    "final_number": _final_number,
    "json_schema": _json_schema,
}
ALIASES = {"json": "json_schema", "json_valid": "json_schema", "icontains": "contains", "equals": "exact"}
JUDGE = "judge"


def _remote_refs(schema: Any) -> list[str]:
    """`$ref`/`$dynamicRef` values that are not local pointers (`#...`): they could never resolve offline."""
    found: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("$ref", "$dynamicRef") and not (isinstance(value, str) and value.startswith("#")):
                    found.append(str(value))
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return found


def parse_metrics(raw: list[Any], where: str) -> list[MetricSpec]:
    # Shapes (a pattern that is text and compiles, a finite weight > 0, ...) are the loaders' check, also
    # run at config and suite load; here again for specs built in code.
    check_metric_entries(raw, where)
    specs = []
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        data = {"type": entry} if isinstance(entry, str) else entry
        if not isinstance(data, dict) or "type" not in data:
            raise ConfigError("a metric is a name or a mapping with `type:`", where=at)
        unknown_keys = set(data) - {"type", "value", "pattern", "schema", "weight"}
        if unknown_keys:
            raise ConfigError(
                f"unknown metric key(s) {', '.join(sorted(unknown_keys))}",
                where=at,
                hint="allowed: type, value, pattern, schema, weight",
            )
        name = ALIASES.get(str(data["type"]), str(data["type"]))
        if name not in METRICS and name != JUDGE:
            raise ConfigError(f"unknown metric {data['type']!r}", where=at, hint=f"known metrics: {', '.join([*METRICS, JUDGE])}")
        pattern = (data.get("pattern") or data.get("value")) if name == "regex" else data.get("pattern")
        schema = data.get("schema")
        if schema is not None:
            if not isinstance(schema, dict):
                raise ConfigError("`schema` must be a JSON Schema mapping", where=at)
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"invalid JSON Schema: {exc.message}", where=at) from None
            remote = _remote_refs(schema)
            if remote:
                raise ConfigError(
                    f"the JSON Schema refers to {remote[0]!r}"[:200],
                    where=f"{at}.schema",
                    hint="only local references ($ref: '#/...') are allowed; nothing is fetched",
                )
        weight = float(data.get("weight", 1.0))  # finite and > 0: check_metric_entries
        value = data.get("value")
        specs.append(
            MetricSpec(
                type=name,
                value=None if value is None else str(value),
                pattern=None if pattern is None else str(pattern),
                schema=schema,
                weight=weight,
            )
        )
    return specs


def score_metric(spec: MetricSpec, output: str, expected: str | None) -> MetricResult:
    return METRICS[spec.type](output, expected, spec)
