"""One whole GReaTer step on a Llama-3-8B-shaped model with random weights: the step time an H100 would give.

    python bench/greater_gpu.py                 # 8B shape, bf16 on CUDA, 50 items, 256 new tokens
    python bench/greater_gpu.py --tiny          # a tiny shape on CPU: proves the code path, measures nothing real

Random weights never emit end-of-sequence, so every row generates all ``--new-tokens`` tokens: the worst case for
the generation phases. Items are random token ids (no tokenizer): every candidate counts as a word token. The step
is the real one (GreaterSearch.run_step): proposal from the rollout's top-k, the one-hot gradient over the
reasoning, and regenerating the reasoning for the best candidates. Writes bench/results/greater_gpu.json (or
greater_gpu_tiny.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

# Llama-3-8B's shape (the paper's main model).
LLAMA3_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
}
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 4096,
    "max_position_embeddings": 2048,
}


def build_model(shape: dict[str, Any], device: Any, dtype: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # weights are created where they live: no 32 GB detour through CPU memory
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    from gradgate.core.files import atomic_write_text  # imported late: torch's thread settings come first

    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape; runs on CPU")
    parser.add_argument("--items", type=int, default=None, help="default 50 (tiny: 8)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 256 (tiny: 16)")
    parser.add_argument("--prompt-tokens", type=int, default=80, help="random input tokens per item")
    parser.add_argument("--instruction-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=160, help="rows per generation batch")
    parser.add_argument("--grad-batch-size", type=int, default=10, help="rows per gradient pass")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from gradgate.optimizers.greater.engine import EncodedItem, GreaterEngine
    from gradgate.optimizers.greater.search import PHASES, GreaterSearch
    from gradgate.optimizers.greater.settings import GreaterConfig

    cuda = torch.cuda.is_available()
    if not args.tiny and not cuda:
        print("the 8B shape needs a CUDA GPU; use --tiny to check the code path on CPU")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    n_items = args.items or (8 if args.tiny else 50)
    new_tokens = args.new_tokens or (16 if args.tiny else 256)
    shape = TINY if args.tiny else LLAMA3_8B

    t = time.perf_counter()
    model = build_model(shape, device, dtype)
    init_seconds = time.perf_counter() - t

    gen = torch.Generator().manual_seed(0)
    vocab = int(shape["vocab_size"])

    def rand(n: int) -> tuple[int, ...]:
        return tuple(int(x) for x in torch.randint(3, vocab, (n,), generator=gen))

    items = [EncodedItem(before=rand(args.prompt_tokens), after=rand(8), gold=rand(2)) for _ in range(n_items)]
    instruction = rand(args.instruction_tokens)
    cfg = GreaterConfig(
        max_items=n_items,
        max_new_tokens=new_tokens,
        batch_size=args.batch_size,
        grad_batch_size=args.grad_batch_size,
        device=str(device),
        dtype="bfloat16" if cuda else "float32",
    )
    engine = GreaterEngine(model, cfg, pad_id=0, eos_ids=[], phrase_ids=rand(8))  # no EOS: full-length rows
    opt = GreaterSearch(cfg, loader=lambda *_: (model, None))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    phases = dict.fromkeys(PHASES, 0.0)
    step_start = time.perf_counter()
    current = engine.rollout([instruction], items)[0]
    sync()
    phases["generation"] = time.perf_counter() - step_start
    outcome = opt.run_step(engine, items, current, instruction, 3, lambda _: True, torch.Generator().manual_seed(1), phases)
    sync()
    step_seconds = time.perf_counter() - step_start
    candidates = outcome[0] if outcome else ()
    payload = {
        "measured_on": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores), tiny shape",
        "shape": shape,
        "dtype": str(dtype),
        "items": n_items,
        "new_tokens": new_tokens,
        "model_init_seconds": init_seconds,
        "step_seconds": step_seconds,
        "phase_seconds": phases,
        "candidates_proposed": len(candidates),
        "candidates_regenerated": sum(1 for c in candidates[1:] if c.score is not None),
        "accepted": bool(outcome and outcome[1] is not None),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "calls": engine.meter.calls,
        "prompt_tokens": engine.meter.prompt_tokens,
        "completion_tokens": engine.meter.completion_tokens,
        "config": asdict(cfg),
        "target": "one whole step under 60 s on one H100 (8B shape, 50 items, 256 new tokens)",
    }
    out = args.out or REPO_ROOT / "bench" / "results" / ("greater_gpu_tiny.json" if args.tiny else "greater_gpu.json")
    write_json(out, payload)
    print(json.dumps({k: payload[k] for k in ("measured_on", "step_seconds", "phase_seconds", "peak_gpu_memory_gib")}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
