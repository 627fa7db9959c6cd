"""Shared test set-up: offline, quiet, and the fixtures other test modules provide."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Spin-waiting OpenMP threads slow torch down 8x on a busy 2-core machine (see local_models).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = [m for m in ("tests.fake_github", "tests.openai_server") if importlib.util.find_spec(m)]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
EXAMPLE_REPO = Path(__file__).parent / "data" / "example_repo"


@pytest.fixture
def examples_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixed example repository (tests/data/example_repo: math, release-note and
    ticket-triage as first shipped). Logic tests script their answers against it; the shipped examples/ are
    tuned to show the gate working with the embedded model and may change."""
    import shutil

    target = tmp_path / "repo"
    shutil.copytree(EXAMPLE_REPO, target, ignore=shutil.ignore_patterns("workflows", ".gradgate"))
    return target


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the repository")
    return SHARED


def script_sessions(monkeypatch: pytest.MonkeyPatch, backend: object) -> None:
    """Every Session the CLI opens from now on talks to `backend` (a ScriptedBackend) instead of a model."""
    from gradgate.models.session import Session

    original = Session.open.__func__  # type: ignore[attr-defined]

    def open_scripted(cls: type[Session], repo: Path, config: object, **kwargs: object) -> Session:
        return original(cls, repo, config, **{**kwargs, "backend": backend})  # type: ignore[no-any-return]

    monkeypatch.setattr(Session, "open", classmethod(open_scripted))
