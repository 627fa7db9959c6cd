"""Benchmark tasks: a BBH-format JSON file or GSM8K JSONL turned into a gradgate repository and one fixed split.

Every method (gradgate's and DSPy's) gets the same `BenchTask`: the same items, the same train/dev/test split
and the same scorer settings, so the held-out numbers come from one code path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from gradgate.core.config import Config, parse_config
from gradgate.core.discovery import Target
from gradgate.core.files import atomic_write_text
from gradgate.core.prompts import load_prompt
from gradgate.core.suites import Item, Splits, load_suite, split_items
from gradgate.errors import ConfigError

log = logging.getLogger(__name__)

BBH_TASKS = ("boolean_expressions", "causal_judgement", "navigate", "object_counting", "sports_understanding", "web_of_lies")
# Where the shared data sets live, relative to this repository's root.
SHARED_DATA = Path("..") / "shared" / "data"

# The initial prompt of every task: a plain instruction, then the item. Kept deliberately bland, as a user's first
# draft would be, so that the optimizers have room to improve it.
INITIAL_INSTRUCTION = "Answer the following question."
GSM8K_INSTRUCTION = "Solve the following math word problem. End with the final number."

# What each task is, for the optimizers' meta-prompts (they see it as the suite description).
TASK_DESCRIPTIONS = {
    "boolean_expressions": "Evaluate a Boolean expression built from True, False, not, and, or and parentheses; "
    "the answer is True or False.",
    "causal_judgement": "Answer a yes/no question about causation in a short story, as a typical person would.",
    "navigate": "Decide whether following the movement instructions returns you to the starting point (Yes/No).",
    "object_counting": "Count the objects of the asked category in a list of possessions; the answer is a number.",
    "sports_understanding": "Decide whether a sentence about a sports player is plausible (yes/no).",
    "web_of_lies": "Decide from a chain of people calling each other liars whether the last person tells the truth (Yes/No).",
    "gsm8k": "Solve a grade-school math word problem; the answer is a number.",
}
# Loglik scoring ranks a fixed set of answers; beyond this many distinct targets, generate instead.
MAX_LOGLIK_OPTIONS = 20

Scoring = Literal["auto", "loglik", "generate"]


@dataclass(frozen=True)
class BenchTask:
    """One task, laid out as a gradgate repository, with its fixed split."""

    name: str
    source: str  # the data file, as given
    repo: Path
    target: Target
    splits: Splits
    scoring: str  # "loglik" or "generate"
    options: tuple[str, ...]
    metric: str
    instruction: str  # the initial instruction (the prompt body is instruction + "\n\n{{input}}")

    @property
    def prompt_id(self) -> str:
        return self.target.prompt.id

    def body_for(self, instruction: str) -> str:
        """The prompt body for an instruction (DSPy's optimized instructions go through this)."""
        return body_for(instruction)

    def split_ids(self) -> dict[str, list[str]]:
        return {name: [i.id for i in getattr(self.splits, name)] for name in ("train", "dev", "test")}


def body_for(instruction: str) -> str:
    # Stray template braces in a generated instruction would be read as variables; flatten them.
    clean = instruction.strip().replace("{{", "{ {").replace("}}", "} }")
    return f"{clean}\n\n{{{{input}}}}\n"


def resolve_task_path(task: str, repo_root: Path) -> tuple[str, Path]:
    """`boolean_expressions`, `gsm8k` or a path to a BBH-format JSON / GSM8K-format JSONL file."""
    data = (repo_root / SHARED_DATA).resolve()
    if task in BBH_TASKS:
        return task, data / "bbh" / f"{task}.json"
    if task == "gsm8k":
        return task, data / "gsm8k" / "train.jsonl"
    path = Path(task)
    if not path.is_file():
        raise ConfigError(
            f"task {task!r} is neither a known task nor an existing file",
            hint=f"use one of {', '.join((*BBH_TASKS, 'gsm8k'))} or a path to a BBH-format JSON file",
        )
    return path.stem, path


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of {input, target}: BBH JSON ({"examples": [...]}) or GSM8K JSONL (question/answer after '####')."""
    if not path.is_file():
        raise ConfigError(
            f"data file {path} does not exist",
            hint="the default tasks read ../shared/data; pass --task path/to/file.json otherwise",
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"line {number} is not valid JSON: {exc.msg}", where=str(path)) from None
            if not isinstance(record, dict) or "question" not in record or "answer" not in record:
                raise ConfigError(f"line {number} needs `question` and `answer`", where=str(path))
            answer = str(record["answer"]).rsplit("####", 1)[-1].strip()
            rows.append({"input": str(record["question"]), "target": answer})
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"is not valid JSON: {exc.msg} (line {exc.lineno})", where=str(path)) from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise ConfigError('a BBH-format file holds {"examples": [{"input": ..., "target": ...}, ...]}', where=str(path))
    rows = []
    for index, example in enumerate(examples):
        if not isinstance(example, dict) or "input" not in example or "target" not in example:
            raise ConfigError(f"examples[{index}] needs `input` and `target`", where=str(path))
        rows.append({"input": str(example["input"]), "target": str(example["target"])})
    return rows


def choose_scoring(rows: list[dict[str, str]], scoring: Scoring, task_model: str) -> tuple[str, tuple[str, ...]]:
    targets = sorted({r["target"] for r in rows})
    if scoring == "auto":
        scoring = "loglik" if task_model.startswith("local/") and len(targets) <= MAX_LOGLIK_OPTIONS else "generate"
    if scoring == "loglik":
        if not task_model.startswith("local/"):
            raise ConfigError(
                "log-likelihood scoring needs an embedded task model (local/...)", hint="pass --scoring generate for API models"
            )
        if len(targets) > MAX_LOGLIK_OPTIONS:
            raise ConfigError(
                f"{len(targets)} distinct targets are too many to rank by log-likelihood", hint="pass --scoring generate"
            )
        return "loglik", tuple(targets)
    return "generate", ()


def choose_metric(rows: list[dict[str, str]], scoring: str, name: str) -> str:
    """An extraction-tolerant metric that fits the targets; loglik outputs are an option verbatim."""
    if scoring == "loglik":
        return "normalized"
    targets = {r["target"] for r in rows}
    if name == "gsm8k" or all(_is_number(t) for t in targets):
        return "final_number"
    if all(len(t) == 3 and t.startswith("(") and t.endswith(")") for t in targets):
        return "choice"
    return "contains"


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def select_items(rows: list[dict[str, str]], name: str, *, n: int, seed: int) -> list[dict[str, str]]:
    """A seeded sample of `n` rows with distinct inputs (a duplicate could sit in two splits)."""
    seen: set[str] = set()
    unique = []
    for index, row in enumerate(rows):
        if row["input"] not in seen:
            seen.add(row["input"])
            unique.append({**row, "id": f"{name}-{index}"})
    if len(unique) < n:
        raise ConfigError(
            f"{name} has {len(unique)} distinct items; train + dev + test asks for {n}", hint="lower --train/--dev/--test"
        )
    ordered = sorted(unique, key=lambda r: hashlib.sha256(f"{seed}:{r['id']}".encode()).hexdigest())
    return ordered[:n]


def resolve_sizes(task: str, *, repo_root: Path, sizes: tuple[int, int, int], seed: int) -> tuple[int, int, int]:
    """(train, dev, test) with a test size of 0 resolved to every distinct item left after train and dev."""
    if sizes[2] > 0:
        return sizes
    name, path = resolve_task_path(task, repo_root)
    distinct = len({r["input"] for r in read_rows(path)})
    rest = distinct - sizes[0] - sizes[1]
    if rest < 1:
        raise ConfigError(
            f"{name} has {distinct} distinct items; train + dev take {sizes[0] + sizes[1]}", hint="lower --train/--dev"
        )
    return sizes[0], sizes[1], rest


def bench_config(
    *,
    task_model: str,
    optimizer_model: str,
    seed: int,
    sizes: tuple[int, int, int],
    cache_dir: str,
    method_settings: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """The gradgate config of the benchmark repository; split fractions that reproduce the exact sizes."""
    n = sum(sizes)
    train, dev = sizes[0] / n, sizes[1] / n
    data: dict[str, Any] = {
        # Embedded models answer concurrent greedy requests as one batch, so concurrency helps them too.
        "models": {"task": task_model, "judge": task_model, "optimizer": optimizer_model, "concurrency": 16},
        # DSPy's optimizers rewrite the instruction only and cannot lose the input field; repairing lost
        # placeholders puts gradgate's text optimizers on the same footing with a small rewriter.
        "optimize": {
            "seed": seed,
            "split": {"train": train, "dev": dev, "test": 1.0 - train - dev},
            "repair_placeholders": True,
            **(method_settings or {}),
        },
        "cache_dir": cache_dir,
    }
    return parse_config(data, "bench config")


def build_task(
    task: str,
    *,
    repo_root: Path,
    work_dir: Path,
    sizes: tuple[int, int, int],
    seed: int,
    task_model: str,
    scoring: Scoring = "auto",
    config: Config,
) -> BenchTask:
    """Write `work_dir` as a gradgate repository (prompts/<task>.md, evals/<task>.yaml) and split it."""
    name, path = resolve_task_path(task, repo_root)
    rows = read_rows(path)
    mode, options = choose_scoring(rows, scoring, task_model)
    metric = choose_metric(rows, mode, name)
    chosen = select_items(rows, name, n=sum(sizes), seed=seed)
    instruction = GSM8K_INSTRUCTION if name == "gsm8k" else INITIAL_INSTRUCTION
    description = TASK_DESCRIPTIONS.get(name, f"Answer questions of the task {name}.")
    suite: dict[str, Any] = {
        "description": description,
        "metrics": [metric],
        "items": [{"id": r["id"], "input": r["input"], "expected": r["target"]} for r in chosen],
    }
    if mode == "loglik":
        suite["scoring"] = {"mode": "loglik", "options": list(options)}
    else:
        suite["max_tokens"] = 256 if name == "gsm8k" else 64
    prompt_text = f"---\nid: {name}\ndescription: {json.dumps(description)}\nsuite: evals/{name}.yaml\n---\n" + body_for(
        instruction
    )
    atomic_write_text(work_dir / "prompts" / f"{name}.md", prompt_text)
    atomic_write_text(work_dir / "evals" / f"{name}.yaml", yaml.safe_dump(suite, sort_keys=False, allow_unicode=True))
    prompt = load_prompt(work_dir / "prompts" / f"{name}.md", work_dir)
    loaded = load_suite(work_dir / "evals" / f"{name}.yaml", work_dir)
    split = config.optimize.split
    # The runner splits with exactly this call, so every method sees these same items.
    splits = split_items(loaded.items, seed=seed, train=split.train, dev=split.dev)
    sizes_got = (len(splits.train), len(splits.dev), len(splits.test))
    if sizes_got != sizes:
        raise ConfigError(f"the split came out as {sizes_got}, not {sizes}", hint="report this as a bug")
    return BenchTask(
        name=name,
        source=str(path),
        repo=work_dir,
        target=Target(prompt=prompt, suite=loaded),
        splits=splits,
        scoring=mode,
        options=options,
        metric=metric,
        instruction=instruction,
    )


def held_out_task(task: str, *, repo_root: Path, work_dir: Path, model: str, train: int, dev: int, seed: int) -> BenchTask:
    """The shoot-out's task and split for `model` (train and dev as given, every other item held out), for the
    benchmarks that re-score its prompts (label_prior.py, bench_prefix_cache.py)."""
    sizes = resolve_sizes(task, repo_root=repo_root, sizes=(train, dev, 0), seed=seed)
    config = bench_config(task_model=model, optimizer_model=model, seed=seed, sizes=sizes, cache_dir=".cache")
    return build_task(task, repo_root=repo_root, work_dir=work_dir, sizes=sizes, seed=seed, task_model=model, config=config)


def items_by_input(items: tuple[Item, ...]) -> dict[str, Item]:
    return {str(i.vars["input"]): i for i in items}
