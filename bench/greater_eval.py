"""Held-out accuracy of a prompt the way GReaTer trains on answers, and the held-out experiment behind the README.

Accuracy: greedy reasoning, the same extraction phrase the loss used (built from the suite's answers), a few greedy
answer tokens, a match after the same label normalization ("(A)" -> "A"). The optimizer itself scores prompts on dev
with gradgate's shared scorer; this is the benchmark's reading, consistent with the training loss.

    python bench/greater_eval.py --task boolean_expressions --test 150 --accept if_better,always

runs GReaTer once per `accept` policy on the same training items, records the training loss and mistake-rate curves
per step and the learned prompts, scores the initial and the learned prompts on the held-out items, and applies
gradgate's decision rule (exact McNemar, alpha 0.1: optimizers/confirmation.py). Writes
bench/results/greater-heldout-<task>.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gradgate.optimizers.greater.encoding import AnswerSpec, ItemLike  # noqa: E402
from gradgate.optimizers.greater.engine import Meter  # noqa: E402
from gradgate.optimizers.greater.prompts import answer_label  # noqa: E402
from gradgate.optimizers.greater.search import GreaterSearch  # noqa: E402

log = logging.getLogger("greater_eval")


@dataclass(frozen=True)
class EvalReport:
    accuracy: float
    answers: tuple[str, ...]
    correct: tuple[bool, ...]
    phrase: str = ""


def normalize_answer(text: str) -> str:
    """First line, without leading spaces, colons, quotes, brackets or markdown markers; "(A)" -> "a"; lower case."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = answer_label(text)
    text = re.sub(r"^[\s:$*\"'`(\[]+", "", text)
    return text.strip().lower()


def answer_matches(generated: str, gold: str) -> bool:
    """Normalized generated text starts with the normalized gold label, followed by a non-alphanumeric boundary."""
    got, want = normalize_answer(generated), normalize_answer(answer_label(gold)).rstrip(".")
    if not want or not got.startswith(want):
        return False
    rest = got[len(want) :]
    return not rest or not rest[0].isalnum()


def evaluate(
    search: GreaterSearch,
    *,
    prompt_body: str,
    items: Sequence[ItemLike],
    model_name: str,
    answers: AnswerSpec | None = None,
    golds: Sequence[str] | None = None,
) -> EvalReport:
    """Accuracy of a prompt on items with the search's model and settings (span, chat template, phrase from
    ``golds``: pass the training answers so that the phrase is the one the search trained with)."""
    cfg = search.config
    problem = search.prepare_problem(prompt_body, items, model_name, Meter(None, cfg.budget_role), answers or AnswerSpec(), golds)
    instruction = problem.tokenizer(problem.split.instruction, add_special_tokens=False)["input_ids"]
    rollout = problem.engine.rollout([instruction], problem.items, generate_answers=True)[0]
    correct = tuple(answer_matches(a, str(it.expected or "")) for a, it in zip(rollout.answers, items, strict=True))
    return EvalReport(sum(correct) / max(len(correct), 1), tuple(rollout.answers), correct, problem.phrase)


def decide(before: EvalReport, after: EvalReport, alpha: float = 0.1) -> dict[str, Any]:
    """gradgate's rule (optimizers/confirmation.py, margin 0): better on average and exact McNemar p < alpha."""
    from gradgate.core.stats import mcnemar_exact

    b = [float(c) for c in before.correct]
    h = [float(c) for c in after.correct]
    p = mcnemar_exact(b, h)
    delta = after.accuracy - before.accuracy
    return {
        "before": before.accuracy,
        "after": after.accuracy,
        "delta": delta,
        "only_before_right": sum(1 for x, y in zip(b, h, strict=True) if x > y),
        "only_after_right": sum(1 for x, y in zip(b, h, strict=True) if y > x),
        "mcnemar_p": p,
        "alpha": alpha,
        "improved": delta > 0 and p < alpha,
    }


def run_variant(
    search: GreaterSearch, args: argparse.Namespace, train: list[Any], test: list[Any], base: EvalReport
) -> dict[str, Any]:
    """One search on the training items; its curves, its prompts, and their held-out scores against ``base``."""
    curve: list[dict[str, Any]] = []
    started = [time.perf_counter()]

    def on_step(step: Any) -> None:
        now = time.perf_counter()
        curve.append(
            {
                "step": step.step,
                "position": step.position,
                "change": [step.old_token, step.new_token],
                "accepted": step.accepted,
                "train_loss": step.loss,
                "train_mistake_rate": 1.0 - step.accuracy,
                "prompt": step.prompt_text,
                "wall_seconds": now - started[0],
                "phase_seconds": dict(step.phase_seconds),
            }
        )
        started[0] = now
        log.info(
            "step %d: %r -> %r loss %.3f mistakes %.3f", step.step, step.old_token, step.new_token, step.loss, 1 - step.accuracy
        )

    result = search.run(prompt_body=args.body, train=train, model_name=args.model, budget=None, on_step=on_step)
    golds = [str(it.expected) for it in train]
    # The final prompt, and the best on train (lowest mistake rate, then loss) when it differs.
    best = min(curve, key=lambda c: (round(c["train_mistake_rate"], 9), c["train_loss"]), default=None)
    prompts = {"final": result.best_prompt}
    if best is not None and best["prompt"] != result.best_prompt:
        prompts["train_best"] = best["prompt"]
    heldout = {}
    for name, text in prompts.items():
        report = evaluate(search, prompt_body=text, items=test, model_name=args.model, golds=golds)
        heldout[name] = {"prompt": text, **decide(base, report)}
        log.info("%s: held-out %.3f -> %.3f (p=%.3g)", name, base.accuracy, report.accuracy, heldout[name]["mcnemar_p"])
    return {
        "accept": search.config.accept,
        "config": result.config,
        "initial": {"train_loss": result.initial_score, "train_mistake_rate": 1.0 - result.initial_accuracy},
        "curve": curve,
        "heldout": heldout,
        "calls": result.calls,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
    }


def main(argv: list[str] | None = None) -> int:
    from bench.bench_greater import DEFAULT_BODY, load_task, write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="boolean_expressions")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--body", default=DEFAULT_BODY)
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--steps", type=int, default=None, help="default: GReaTer's (twice the instruction's tokens)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--accept", default="if_better,always", help="comma-separated accept policies to compare")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    items = load_task(args.task)
    if items is None:
        print(f"task {args.task!r} not found; nothing to measure")
        return 0
    import torch

    from gradgate.optimizers.greater.settings import GreaterConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    random.Random(args.seed).shuffle(items)
    train, test = items[: args.train], items[args.train : args.train + args.test]
    variants = []
    base: EvalReport | None = None
    search: GreaterSearch | None = None
    started = time.perf_counter()
    for accept in args.accept.split(","):
        cfg = GreaterConfig(steps=args.steps, max_items=args.train, max_new_tokens=args.new_tokens, seed=args.seed)
        cfg.accept = accept  # type: ignore[assignment]  # validated below
        if search is None:
            search = GreaterSearch(cfg)
        else:  # the same search object: one model in memory for every variant
            cfg.validate()
            search.config = cfg
        if base is None:
            golds = [str(it.expected) for it in train]
            base = evaluate(search, prompt_body=args.body, items=test, model_name=args.model, golds=golds)
            log.info("initial prompt: held-out %.3f (phrase %r)", base.accuracy, base.phrase)
        variants.append(run_variant(search, args, train, test, base))
    assert base is not None
    payload = {
        "task": Path(args.task).stem,  # the name, not this machine's path to the data file
        "model": args.model,
        "initial_prompt": args.body,
        "train_items": len(train),
        "test_items": len(test),
        "phrase": base.phrase,
        "heldout_initial": base.accuracy,
        "rule": "improved = held-out accuracy higher and exact McNemar p < alpha 0.1 (optimizers/confirmation.py)",
        "variants": variants,
        "wall_seconds": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu (no GPU lent to this task)",
        "eval": asdict(base) | {"answers": list(base.answers[:20])},
    }
    out = args.out or REPO_ROOT / "bench" / "results" / f"greater-heldout-{Path(args.task).stem}.json"
    write_json(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
