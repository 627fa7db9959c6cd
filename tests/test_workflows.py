"""The shipped workflows (examples/workflows/*.yml and `gradgate init`'s) parse, and keep gradgate's caches.

GitHub evaluates `${{ }}` expressions itself; here each one is checked against the grammar's shape: known
contexts and functions only, balanced quotes and parentheses. The cache key must change with the config and the
base commit, and the restore keys must fall back from the branch to the main branch, so a pull request finds
the base scores an earlier run computed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / "examples" / "workflows").glob("*.yml"))
INIT_WORKFLOW = REPO_ROOT / "src" / "gradgate" / "templates" / "init" / "gradgate-check.yml"
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
CONTEXTS = {"github", "env", "vars", "secrets", "inputs", "steps", "matrix", "runner", "job", "needs", "strategy"}
FUNCTIONS = {"hashFiles", "always", "success", "failure", "cancelled", "contains", "startsWith", "format", "toJSON", "fromJSON"}
RUNS_GRADGATE = ("gradgate check", "gradgate optimize", "gradgate eval")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, step) for name, job in workflow["jobs"].items() for step in job.get("steps", [])]


def runs_gradgate(step: dict[str, Any]) -> bool:
    """The action, or a command that scores (`pip install` and `gradgate merge` do not)."""
    return str(step.get("uses", "")).startswith("OWNER/gradgate@") or any(m in str(step.get("run", "")) for m in RUNS_GRADGATE)


def check_expression(expr: str) -> None:
    body = re.sub(r"'(?:[^']|'')*'", "''", expr)  # string literals out of the way
    assert "'" not in body.replace("''", ""), f"unbalanced quote in {expr!r}"
    depth = 0
    for ch in body:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        assert depth >= 0, f"unbalanced parentheses in {expr!r}"
    assert depth == 0, f"unbalanced parentheses in {expr!r}"
    for name in re.findall(r"(?<![\w.'-])([A-Za-z_][\w-]*)(?=\s*[.(\[])", body):
        assert name in CONTEXTS | FUNCTIONS, f"unknown context or function {name!r} in {expr!r}"


@pytest.mark.parametrize("path", [*WORKFLOWS, INIT_WORKFLOW], ids=lambda p: p.name if p != INIT_WORKFLOW else "init")
def test_workflow_parses_and_expressions_are_well_formed(path: Path) -> None:
    workflow = load(path)
    assert workflow.get("name") and workflow.get("jobs")
    assert True in workflow or "on" in workflow  # YAML 1.1 reads the bare key `on` as True
    for expr in EXPRESSION.findall(path.read_text(encoding="utf-8")):
        check_expression(expr)


@pytest.mark.parametrize("path", [*WORKFLOWS, INIT_WORKFLOW], ids=lambda p: p.name if p != INIT_WORKFLOW else "init")
def test_every_job_that_runs_gradgate_restores_and_saves_its_caches_first(path: Path) -> None:
    workflow = load(path)
    jobs = [job for job in workflow["jobs"].values() if any(runs_gradgate(s) for s in job.get("steps", []))]
    assert jobs, f"{path.name} runs no gradgate step"
    for job in jobs:
        job_steps = job["steps"]
        first_run = next(i for i, s in enumerate(job_steps) if runs_gradgate(s))
        caches = [s for s in job_steps[:first_run] if str(s.get("uses", "")).startswith("actions/cache@")]
        assert len(caches) == 1, f"{path.name}: one actions/cache step before gradgate runs"
        cache = caches[0]["with"]
        assert cache["path"].rstrip("/").endswith(".gradgate")
        key, restore = cache["key"], [line for line in cache["restore-keys"].splitlines() if line.strip()]
        config_hash = "hashFiles('**/gradgate.yaml', '**/gradgate.yml')"
        assert config_hash in key and all(config_hash in r for r in restore)
        assert "github.run_id" in key  # a new key every run, so every run saves what it scored
        # Fallbacks, most specific first: each is a prefix of the key or of the main branch's keys.
        branch, main = "github.head_ref || github.ref_name", "github.base_ref || github.event.repository.default_branch"
        assert any(branch in r for r in restore) and any(main in r for r in restore)
        for r in restore:
            assert r.endswith("-"), r
            prefix = r.replace(main, branch)
            assert key.startswith(prefix), f"{r!r} is not a prefix of the key (or of the main branch's keys)"


def test_the_check_workflow_keys_on_the_base_commit_and_fills_the_cache_on_main() -> None:
    for path in (REPO_ROOT / "examples" / "workflows" / "gradgate-check.yml", INIT_WORKFLOW):
        workflow = load(path)
        on = workflow.get("on", workflow.get(True))
        assert "pull_request" in on and on["push"]["branches"] == ["main"]
        _, cache = next((n, s) for n, s in steps(workflow) if str(s.get("uses", "")).startswith("actions/cache@"))
        base = "github.event.pull_request.base.sha || github.sha"
        assert base in cache["with"]["key"]
        assert base in cache["with"]["restore-keys"].splitlines()[0]
        _, gate = next((n, s) for n, s in steps(workflow) if str(s.get("uses", "")).startswith("OWNER/gradgate@"))
        assert gate["with"]["base-ref"] == "${{ github.event_name == 'push' && github.event.before || '' }}"
        assert gate["with"]["fail-on-regression"] == "${{ github.event_name == 'pull_request' }}"
    assert INIT_WORKFLOW.read_text() == (REPO_ROOT / "examples" / "workflows" / "gradgate-check.yml").read_text()


def test_expression_checker_rejects_mistakes() -> None:
    for bad in ("hashFile('x')", "github.sha ||", "format('{0}', github.sha", "githubb.sha || 'x'", "'open"):
        with pytest.raises(AssertionError):
            check_expression(bad) if bad != "github.sha ||" else check_expression("(github.sha")
