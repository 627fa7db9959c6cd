"""The `gradgate` command line: parse options, call a job, map errors to exit codes. No logic here."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console
from rich.markup import escape

from gradgate import __version__
from gradgate.core.environment import prepare_process_env
from gradgate.core.files import output_location
from gradgate.core.interrupts import interrupts_raise
from gradgate.core.method_settings import MAX_SEED
from gradgate.core.secrets import RedactingFilter, redact
from gradgate.errors import EXIT_INFRA, EXIT_OK, GradgateError, UsageError
from gradgate.optimizers.registry import METHOD_NAMES

T = TypeVar("T")
log = logging.getLogger("gradgate")
stderr = Console(stderr=True, emoji=False)  # ":id:" in a message is a key, not an emoji


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.DEBUG, level))
    for noisy in ("LiteLLM", "litellm", "httpx", "transformers", "datasets", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 3 else logging.DEBUG)


def _run(job: Callable[[], T]) -> T:
    """Run a job; a GradgateError becomes a message and its exit code, never a traceback."""
    try:
        with interrupts_raise():
            return job()
    except GradgateError as exc:
        # User text (file names, keys, ids) may hold rich markup such as "[/]": escaped, it is shown as is.
        stderr.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: say so briefly, full traceback only with -vv
        log.debug("internal error", exc_info=True)
        stderr.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(redact(str(exc)))}\n"
            "  hint: rerun with -vv for the traceback and report it"
        )
        sys.exit(EXIT_INFRA)


def _repo(path: str) -> Path:
    repo = Path(path).resolve()
    if not repo.is_dir():
        raise UsageError(f"repository directory {path} does not exist", hint="pass --repo with an existing directory")
    return repo


def _out_dir(path: str, repo: Path) -> Path:
    """`--out`, checked before any model call (`output_location`)."""
    output_location(repo, path, what="--out", hint="pass a directory for the reports, e.g. --out gradgate-out", directory=True)
    return Path(path)


def _junit(path: str | None, repo: Path) -> Path | None:
    """`--junit`, checked before any model call like `--out`."""
    if path is None:
        return None
    output_location(repo, path, what="--junit", hint="pass a file name, e.g. --junit gradgate-out/junit.xml", directory=False)
    return Path(path)


def _path(option: str | None) -> Path | None:
    return Path(option) if option else None


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter("must be a finite number (leave the option out for no limit)")
    return value


repo_option = click.option("--repo", "repo_path", default=".", show_default=True, help="Repository root.")
config_option = click.option(
    "--config", "config_path", default=None, help="Config file, relative to --repo (default: <repo>/gradgate.yaml)."
)
prompt_option = click.option("--prompt", "prompt_ids", multiple=True, help="Only this prompt id (repeatable).")
model_option = click.option("--model", default=None, help="Task model (any litellm model string).")
judge_option = click.option("--judge-model", default=None, help="Judge model.")
shard_option = click.option(
    "--shard", default=None, metavar="K/N", help="Score shard K of N (balanced by suite size); combine with `gradgate merge`."
)
junit_option = click.option(
    "--junit", "junit_path", default=None, type=click.Path(dir_okay=False), help="Also write JUnit XML here."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradgate")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: debug, with full prompts).")
def main(verbose: int) -> None:
    """Guard and improve the LLM prompts kept in a repository."""
    prepare_process_env()
    _setup_logging(verbose)
    from gradgate.app.progress import quiet_libraries

    quiet_libraries(verbose)  # third-party warnings and progress bars: off unless -v


@main.command("eval")
@repo_option
@config_option
@prompt_option
@model_option
@judge_option
@click.option("--out", "out_dir", default="gradgate-out", show_default=True, help="Directory for results.json and report.md.")
@click.option("--no-cache", is_flag=True, help="Ignore and do not write the response cache.")
@shard_option
@junit_option
def eval_command(
    repo_path: str,
    config_path: str | None,
    prompt_ids: tuple[str, ...],
    model: str | None,
    judge_model: str | None,
    out_dir: str,
    no_cache: bool,
    shard: str | None,
    junit_path: str | None,
) -> None:
    """Score every prompt on its eval suite."""
    from gradgate.app.eval_job import run_eval
    from gradgate.app.eval_report import print_table
    from gradgate.app.progress import eval_callbacks, open_progress
    from gradgate.app.sessions import open_session
    from gradgate.app.shards import Shard

    def job() -> int:
        repo = _repo(repo_path)
        out = _out_dir(out_dir, repo)
        junit = _junit(junit_path, repo)
        part = Shard.parse(shard) if shard is not None else None
        models = {"task": model, "judge": judge_model}
        session = open_session(repo, _path(config_path), env=os.environ, models=models, use_cache=not no_cache)
        with open_progress(stderr) as progress:
            progress.watch(session.budget)
            on_start, on_item = eval_callbacks(progress)
            outcome = asyncio.run(
                run_eval(
                    session,
                    prompt_ids=prompt_ids,
                    out_dir=out,
                    on_start=on_start,
                    on_item=on_item,
                    shard=part,
                    junit=junit,
                )
            )
        print_table(outcome.results, Console(emoji=False))
        click.echo(f"wrote {outcome.results_path}, {outcome.report_path} and report.html" + (f" (shard {part})" if part else ""))
        if outcome.error is not None:
            stderr.print(f"[bold red]error:[/] {escape(redact(str(outcome.error)))}", highlight=False)
            stderr.print("[yellow]the run stopped early: the results above are partial[/]")
        elif not outcome.complete:
            stderr.print("[yellow]the budget ran out: the results above are partial[/]")
        return outcome.exit_code

    sys.exit(_run(job))


@main.command("check")
@click.option("--base", "base_ref", required=True, help="Git ref of the base (e.g. origin/main or the PR base SHA).")
@click.option("--head", "head_ref", default=None, help="Git ref of the head (default: the working tree).")
@repo_option
@config_option
@prompt_option
@model_option
@judge_option
@click.option("--out", "out_dir", default="gradgate-out", show_default=True, help="Directory for report.md and check.json.")
@click.option(
    "--fail-on-regression/--no-fail-on-regression", default=True, show_default=True, help="Exit 1 when a prompt regressed."
)
@click.option(
    "--comment/--no-comment",
    default=True,
    show_default=True,
    help="Post or update the sticky pull-request comment (needs GITHUB_TOKEN).",
)
@shard_option
@junit_option
def check_command(
    base_ref: str,
    head_ref: str | None,
    repo_path: str,
    config_path: str | None,
    prompt_ids: tuple[str, ...],
    model: str | None,
    judge_model: str | None,
    out_dir: str,
    fail_on_regression: bool,
    comment: bool,
    shard: str | None,
    junit_path: str | None,
) -> None:
    """Gate a change: score base and head of every changed prompt on the same items and compare."""
    from gradgate.app.check_job import run_check
    from gradgate.app.progress import open_progress
    from gradgate.app.shards import Shard

    def job() -> int:
        repo = _repo(repo_path)
        out = _out_dir(out_dir, repo)
        junit = _junit(junit_path, repo)
        part = Shard.parse(shard) if shard is not None else None
        with open_progress(stderr) as progress:
            outcome = run_check(
                repo=repo,
                base_ref=base_ref,
                head_ref=head_ref,
                config_path=_path(config_path),
                prompt_ids=prompt_ids,
                model=model,
                judge_model=judge_model,
                out_dir=out,
                env=dict(os.environ),
                comment=comment,
                fail_on_regression=fail_on_regression,
                shard=part,
                junit=junit,
                progress=progress,
            )
        click.echo(redact(outcome.markdown))
        if part is not None:
            click.echo(f"shard {part}: partial result in {out}; combine the shards with `gradgate merge`")
        if outcome.error:
            stderr.print(f"[bold red]error:[/] {escape(redact(str(outcome.error)))}", highlight=False)
        return outcome.exit_code

    sys.exit(_run(job))


@main.command("optimize")
@click.option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(METHOD_NAMES),
    default=("gradsum",),
    show_default=True,
    help="Optimizer (repeatable).",
)
@repo_option
@config_option
@prompt_option
@model_option
@judge_option
@click.option("--optimizer-model", default=None, help="Model that writes gradients and candidates.")
@click.option("--budget-calls", type=click.IntRange(min=1), default=None, help="Hard limit on LLM calls.")
@click.option("--budget-tokens", type=click.IntRange(min=1), default=None, help="Hard limit on tokens.")
@click.option(
    "--budget-usd", type=click.FloatRange(min=0, min_open=True), callback=_finite, default=None, help="Hard limit on cost in USD."
)
@click.option(
    "--budget-seconds",
    type=click.FloatRange(min=0, min_open=True),
    callback=_finite,
    default=None,
    help="Hard limit on wall time.",
)
@click.option(
    "--seed", type=click.IntRange(0, MAX_SEED), default=None, help="Seed for splits and sampling (default: gradgate.yaml)."
)
@click.option("--out", "out_dir", default="gradgate-out", show_default=True, help="Directory for the artifacts.")
@click.option("--write", is_flag=True, help="Write the best prompt back into its file (front matter kept).")
@click.option("--open-pr", is_flag=True, help="Commit to gradgate/tune-<ids>, push and open or update one pull request.")
def optimize_command(
    methods: tuple[str, ...],
    repo_path: str,
    config_path: str | None,
    prompt_ids: tuple[str, ...],
    model: str | None,
    judge_model: str | None,
    optimizer_model: str | None,
    budget_calls: int | None,
    budget_tokens: int | None,
    budget_usd: float | None,
    budget_seconds: float | None,
    seed: int | None,
    out_dir: str,
    write: bool,
    open_pr: bool,
) -> None:
    """Optimize prompts within a hard budget; confirm on held-out items; optionally write back and open a PR."""
    from gradgate.app.optimize_job import run_optimize_job
    from gradgate.app.progress import open_progress, print_optimize_table
    from gradgate.app.sessions import BudgetOverride, open_session

    def job() -> int:
        repo = _repo(repo_path)
        out = _out_dir(out_dir, repo)
        models = {"task": model, "judge": judge_model, "optimizer": optimizer_model}
        budget = BudgetOverride(calls=budget_calls, tokens=budget_tokens, usd=budget_usd, seconds=budget_seconds)
        session = open_session(repo, _path(config_path), env=os.environ, models=models, budget=budget)
        with open_progress(stderr) as progress:
            outcome = asyncio.run(
                run_optimize_job(
                    session,
                    prompt_ids=prompt_ids,
                    methods=methods,
                    out_dir=out,
                    seed=seed,
                    write=write,
                    open_pr=open_pr,
                    env=dict(os.environ),
                    progress=progress,
                )
            )
        stdout = Console(emoji=False)
        if stdout.is_terminal:  # a table on a terminal; the Markdown (also in report.md) when piped
            print_optimize_table(outcome.results, stdout)
            click.echo(f"full report: {outcome.report_path} and report.html beside it")
        else:
            click.echo(redact(outcome.markdown))
        click.echo(redact(outcome.message))
        return outcome.exit_code

    sys.exit(_run(job))


@main.command("merge")
@click.argument("directories", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", default="gradgate-out", show_default=True, help="Directory for the merged reports.")
@click.option(
    "--fail-on-regression/--no-fail-on-regression", default=True, show_default=True, help="check: exit 1 when a prompt regressed."
)
@click.option("--comment/--no-comment", default=True, show_default=True, help="check: post or update the sticky comment.")
@junit_option
def merge_command(
    directories: tuple[str, ...], out_dir: str, fail_on_regression: bool, comment: bool, junit_path: str | None
) -> None:
    """Combine the shards of one `eval --shard` or `check --shard` run: one report, comment, outputs and exit code."""
    from gradgate.app.eval_report import print_table
    from gradgate.app.merge_job import run_merge

    def job() -> int:
        here = Path.cwd()
        outcome = run_merge(
            [Path(d) for d in directories],
            out_dir=_out_dir(out_dir, here),
            env=dict(os.environ),
            comment=comment,
            fail_on_regression=fail_on_regression,
            junit=_junit(junit_path, here),
        )
        if outcome.results is not None:
            print_table(outcome.results, Console(emoji=False))
        else:
            click.echo(redact(outcome.markdown))
        if outcome.check is not None and outcome.check.error:
            stderr.print(f"[bold red]error:[/] {escape(redact(str(outcome.check.error)))}", highlight=False)
        return outcome.exit_code

    sys.exit(_run(job))


@main.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def init_command(directory: str) -> None:
    """Scaffold gradgate.yaml, an example prompt and suite, and a workflow; never overwrites."""
    from gradgate.scaffold import init_repository

    def job() -> int:
        scaffold = init_repository(Path(directory))
        for path in scaffold.created:
            click.echo(f"created {path}")
        if scaffold.gitignore:
            click.echo(scaffold.gitignore)
        return EXIT_OK

    sys.exit(_run(job))


@main.command("schema")
@click.option("--results", is_flag=True, help="Print the results.json schema instead of gradgate.yaml's.")
def schema_command(results: bool) -> None:
    """Print the JSON Schema of gradgate.yaml (or of results.json)."""
    from gradgate.core.config import shipped_schema_text
    from gradgate.scoring.results import results_schema

    click.echo(json.dumps(results_schema(), indent=2) if results else shipped_schema_text().rstrip())


if __name__ == "__main__":  # pragma: no cover
    main()
