"""The layout's shared pieces: one budget path with phases, one method registry, one git runner,
files written atomically and readable, and the tuning pull request never touching the working tree."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from gradgate.core.budget import BudgetTracker, Holdback
from gradgate.core.config import BudgetConfig
from gradgate.core.files import atomic_write_text
from gradgate.core.git import Git
from gradgate.errors import BudgetExhausted, GitError
from gradgate.optimizers.registry import METHOD_NAMES, method_class


def _spend(budget: BudgetTracker, *, tokens: int = 0, usd: float = 0.0) -> None:
    reservation = budget.reserve(tokens, usd)
    budget.settle(reservation, "task", prompt_tokens=tokens, completion_tokens=0, cost_usd=usd)


def test_a_phase_holds_back_every_unit_and_gives_it_back_after() -> None:
    budget = BudgetTracker(BudgetConfig(max_calls=10, max_tokens=1000, max_usd=1.0))
    with budget.phase(Holdback(calls=7)):
        for _ in range(3):
            _spend(budget)
        with pytest.raises(BudgetExhausted, match="7 calls kept for a later phase"):
            budget.check_can_spend()
    budget.check_can_spend()  # the hold ends with the phase
    with budget.phase(Holdback(tokens=900)), pytest.raises(BudgetExhausted, match="token limit"):
        budget.reserve(200, 0.0)
    with budget.phase(Holdback(usd=0.95)), pytest.raises(BudgetExhausted, match="USD limit"):
        budget.reserve(0, 0.1)
    assert budget.held == Holdback()


def test_phases_nest_and_seconds_are_held_back_too() -> None:
    now = [0.0]
    budget = BudgetTracker(BudgetConfig(max_seconds=100), clock=lambda: now[0])
    now[0] = 50.0
    with budget.phase(Holdback(seconds=30)):
        assert budget.seconds_left() == 20.0
        with budget.phase(Holdback(seconds=15)):
            assert budget.seconds_left() == 5.0
            with pytest.raises(BudgetExhausted, match="no time left to wait"):
                budget.check_wait(6.0)
        budget.check_wait(6.0)
    assert budget.seconds_left() == 50.0


def test_one_registry_feeds_the_cli_and_the_action() -> None:
    from gradgate.cli import optimize_command
    from gradgate.github.action_entry import METHODS

    [method_option] = [p for p in optimize_command.params if p.name == "methods"]
    assert tuple(method_option.type.choices) == METHOD_NAMES == METHODS  # type: ignore[attr-defined]
    assert method_class("gradsum").name == "gradsum"


def test_new_files_are_0644_and_existing_files_keep_their_mode(tmp_path: Path) -> None:
    fresh = tmp_path / "out" / "report.md"
    atomic_write_text(fresh, "x\n")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    atomic_write_text(script, "#!/bin/sh\necho\n")
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.rglob(".*.tmp")] == []


def test_git_failures_are_git_errors_with_the_credentials_scrubbed(tmp_path: Path) -> None:
    with pytest.raises(GitError) as info:
        Git(tmp_path).run("fetch", "https://someone:hunter2-secret@example.invalid/repo.git")
    assert "hunter2-secret" not in str(info.value)


def test_open_pr_interrupted_leaves_the_working_tree_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --write the chosen prompt goes straight into a commit through a separate worktree: an
    interruption at any point leaves the user's files, index and worktree list untouched."""
    from gradgate.app.optimize_job import run_optimize_job
    from gradgate.github import tuning_pr
    from tests.gitutil import git
    from tests.test_gradsum import GOOD, Script, make_repo, open_session, sequence_editor

    work = make_repo(tmp_path / "work")
    git(work, "init", "--quiet", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "initial")
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(tmp_path / "remote.git"))
    git(work, "remote", "add", "origin", str(tmp_path / "remote.git"))
    git(work, "push", "--quiet", "-u", "origin", "main")
    before = (work / "prompts" / "qa.md").read_bytes()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as a cancelled CI job delivers it, mid-publish

    monkeypatch.setattr(tuning_pr, "_commit_and_push", interrupted)
    session = open_session(work, Script(sequence_editor(GOOD)), optimize={"gradsum": {"iterations": 1, "beam_width": 1}})
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(
            run_optimize_job(session, methods=["gradsum"], out_dir=tmp_path / "out", seed=0, write=False, open_pr=True, env={})
        )
    assert (work / "prompts" / "qa.md").read_bytes() == before
    assert git(work, "status", "--porcelain") == ""


def test_every_package_declares_its_modules_in_all() -> None:
    """`__all__` in a layer package lists its modules, so the package's docstring and contents stay in step."""
    import importlib

    import gradgate

    root = Path(gradgate.__file__).parent
    for init in sorted(root.rglob("__init__.py")):
        package = ".".join(init.parent.relative_to(root.parent).parts)
        exported = getattr(importlib.import_module(package), "__all__", None)
        assert exported is not None, f"{package} has no __all__"
        modules = sorted(p.stem for p in init.parent.glob("*.py") if p.stem != "__init__")
        if package in ("gradgate", "gradgate.optimizers", "gradgate.models.local"):
            continue  # these export names, not modules
        assert sorted(exported) == modules, f"{package}.__all__ does not list its modules"


def test_the_optimizer_interface_example_runs() -> None:
    """optimizers/base.py's module docstring is a working example of a whole method (a doctest)."""
    import doctest

    from gradgate.optimizers import base

    outcome = doctest.testmod(base, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted > 10 and outcome.failed == 0
