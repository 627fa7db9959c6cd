"""GGUF -> Hugging Face folder, once per model, in the user's cache.

Loading a GGUF de-quantizes every tensor (tens of seconds), so the first use converts it into an ordinary
Hugging Face folder; every later load reads that folder in about a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradgate.core.environment import prepare_torch_env
from gradgate.errors import ModelError, UnknownModelError
from gradgate.models.local.registry import EMBEDDED_MODELS, embedded_name, known_models_text

logger = logging.getLogger(__name__)

# Written into a converted folder last; its presence means the conversion finished.
_CONVERTED_MARKER = "gradgate-converted.json"


def cache_dir() -> Path:
    """gradgate's cache: $GRADGATE_CACHE_DIR, else $XDG_CACHE_HOME/gradgate, else ~/.cache/gradgate."""
    explicit = os.environ.get("GRADGATE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "gradgate"
    return Path.home() / ".cache" / "gradgate"


def _is_converted(folder: Path) -> bool:
    return (folder / _CONVERTED_MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never convert the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _transformers_major() -> str:
    """A folder saved by transformers 5 names tokenizer classes 4.x cannot load; each major version converts its own."""
    from importlib.metadata import version

    return version("transformers").split(".", 1)[0]


def converted_model_dir(name: str) -> Path:
    """The Hugging Face folder of an embedded model, converting its GGUF on first use (20-90 s on 2 cores).

    Conversion writes into a temporary sibling folder and renames it into place, under a file lock: a reader
    never sees a half-written folder and two processes never convert at once. One folder per transformers major
    version (`smollm2-135m-instruct-transformers5`).
    """
    key = embedded_name(name)
    if key is None:
        raise UnknownModelError(f"{name!r} is not an embedded model", hint=f"use one of: {known_models_text()}")
    models = cache_dir() / "models"
    target = models / f"{key}-transformers{_transformers_major()}"
    if _is_converted(target):
        return target
    with _file_lock(models / f".{key}.lock"):
        if _is_converted(target):  # another process finished it while we waited
            return target
        for stale in models.glob(f".{key}.tmp-*"):  # left by a process killed mid-conversion; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        gguf = EMBEDDED_MODELS[key].locate()
        started = time.monotonic()
        logger.info("converting embedded model %s from %s (first use only)", key, gguf)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=models))
        try:
            _convert_gguf(gguf, staging)
            marker = {"model": key, "source": gguf.name, "source_bytes": gguf.stat().st_size}
            (staging / _CONVERTED_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            if target.exists():  # a half-written folder from an older, interrupted layout
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("converted %s in %.1f s into %s", key, time.monotonic() - started, target)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    prepare_torch_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types here; all mean "this file cannot be read"
        raise ModelError(
            f"could not read the GGUF file {gguf}: {exc}",
            hint="check that the installed transformers and gguf packages are recent",
        ) from exc
    # save_pretrained refuses a model that still carries its GGUF quantizer, although the weights are plain
    # tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    # bf16 on disk: half the size of fp32 and loads faster; load_causal_lm upcasts to fp32 for CPU compute, where
    # fp32 is as fast (generation is memory-bound) and numerically safer for gradients.
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
