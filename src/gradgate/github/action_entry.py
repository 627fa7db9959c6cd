"""The container action's entry point: GitHub inputs in, one ``gradgate`` CLI call out.

GitHub hands a container action its inputs as environment variables named ``INPUT_<ID>``: the input id
upper-cased, spaces turned into underscores, dashes kept (``base-ref`` arrives as ``INPUT_BASE-REF``).
This module only maps them: ``parse_action_inputs`` validates every input into a frozen ``ActionInputs``,
``to_cli_args`` and ``to_cli_env`` turn that into a command line and environment, and ``main`` masks secrets,
then replaces itself with ``python -m gradgate`` so the CLI's exit code (0 ok, 1 regression, 2 usage/config,
3 infrastructure) is the step's exit code.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from gradgate.core.config import check_api_base
from gradgate.core.environment import prepare_process_env
from gradgate.core.git import Git
from gradgate.core.method_settings import MAX_SEED
from gradgate.core.secrets import redact
from gradgate.errors import EXIT_INFRA, EXIT_USAGE, GitError, UsageError
from gradgate.github import actions
from gradgate.github.context import dig, read_event
from gradgate.optimizers.registry import METHOD_NAMES

logger = logging.getLogger(__name__)

MODES = ("check", "optimize")
METHODS = METHOD_NAMES
DEFAULT_METHODS = ("gradsum",)

# Every input action.yml declares; a test keeps the two lists equal.
INPUT_NAMES = (
    "mode",
    "config",
    "working-directory",
    "prompts",
    "base-ref",
    "head-ref",
    "methods",
    "budget-calls",
    "budget-tokens",
    "budget-usd",
    "budget-seconds",
    "seed",
    "task-model",
    "judge-model",
    "optimizer-model",
    "api-base",
    "fail-on-regression",
    "comment",
    "write",
    "open-pr",
    "out",
    "github-token",
    "env",
)

# Inputs that only mean something to `gradgate optimize`; set in check mode they are reported as ignored.
_OPTIMIZE_ONLY = ("methods", "budget-calls", "budget-tokens", "budget-usd", "budget-seconds", "seed", "optimizer-model")

# A git revision the CLI may pass to git: no leading dash (it would read as an option), no spaces, no "..".
_REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/~^@{}+-]*$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROMPT_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")
# Variables the runner owns: the env input setting them could redirect GITHUB_OUTPUT or GITHUB_STEP_SUMMARY,
# or point GITHUB_API_URL (and with it the token) at another host.
RESERVED_ENV_PREFIXES = ("GITHUB_", "RUNNER_", "INPUT_", "ACTIONS_")


@dataclass(frozen=True)
class ActionInputs:
    """Every action input, validated. Empty strings mean "not set": the CLI or gradgate.yaml decides."""

    mode: str
    config: str = ""
    working_directory: str = ""
    prompts: tuple[str, ...] = ()
    base_ref: str = ""
    head_ref: str = ""
    methods: tuple[str, ...] = ()
    budget_calls: int | None = None
    budget_tokens: int | None = None
    budget_usd: float | None = None
    budget_seconds: float | None = None
    seed: int | None = None
    task_model: str = ""
    judge_model: str = ""
    optimizer_model: str = ""
    api_base: str = ""
    fail_on_regression: bool = True
    comment: bool = True
    write: bool = False
    open_pr: bool = False
    out: str = ""
    github_token: str = field(default="", repr=False)
    extra_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # Inputs that were set but mean nothing in this mode, for main() to warn about.
    ignored: tuple[str, ...] = ()

    def secrets(self) -> list[str]:
        """Values that must never be printed: the token and every value passed through the ``env`` input."""
        values = [self.github_token, *(value for _, value in self.extra_env)]
        return [v for v in values if v]


def read_input(env: Mapping[str, str], name: str) -> str:
    """The raw value of input ``name``, stripped; "" when GitHub did not set it.

    GitHub keeps dashes (``INPUT_BASE-REF``); the underscore spelling is accepted too because most shells
    cannot export a name with a dash, which matters when running the container by hand.
    """
    key = "INPUT_" + name.replace(" ", "_").upper()
    value = env.get(key)
    if value is None:
        value = env.get(key.replace("-", "_"), "")
    return value.strip()


def _split_list(raw: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", raw) if item]


class _Parser:
    """Collects every input error so one run reports all of them."""

    def __init__(self, env: Mapping[str, str], workspace: Path) -> None:
        self.env = env
        self.workspace = workspace
        self.errors: list[str] = []

    def raw(self, name: str) -> str:
        return read_input(self.env, name)

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.raw(name).lower() or default
        if value not in allowed:
            self.errors.append(f"{name} must be {_or_list(allowed)}, got {self.raw(name)!r}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name).lower()
        if not value:
            return default
        if value in ("true", "false"):
            return value == "true"
        self.errors.append(f'{name} must be "true" or "false", got {self.raw(name)!r}')
        return default

    def integer(self, name: str, *, minimum: int, maximum: int | None = None) -> int | None:
        value = self.raw(name)
        if not value:
            return None
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum or (maximum is not None and number > maximum):
            self.errors.append(f"{name} must be a whole number {bounds} (for example 100), got {value!r}")
            return None
        return number

    def positive_float(self, name: str) -> float | None:
        value = self.raw(name)
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not number > 0 or number == float("inf"):
            self.errors.append(f"{name} must be a number > 0 (for example 1.5), got {value!r}")
            return None
        return number

    def ref(self, name: str) -> str:
        value = self.raw(name)
        if value and (not _REF_RE.match(value) or ".." in value):
            self.errors.append(f"{name} must be a git branch, tag or commit (for example main), got {value!r}")
            return ""
        return value

    def text(self, name: str) -> str:
        value = self.raw(name)
        if value.startswith("-"):
            self.errors.append(f"{name} must not start with '-', got {value!r}")
            return ""
        return value

    def prompts(self, name: str) -> tuple[str, ...]:
        ids = _split_list(self.raw(name))
        bad = [i for i in ids if not _PROMPT_ID_RE.match(i)]
        if bad:
            self.errors.append(
                f"{name} must list prompt ids separated by commas (for example summarize,"
                f"classify), got {', '.join(map(repr, bad))}"
            )
            return ()
        return tuple(ids)

    def methods(self, name: str) -> tuple[str, ...]:
        methods = [m.lower() for m in _split_list(self.raw(name))]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            self.errors.append(
                f"{name} must list methods from {_or_list(METHODS)} separated by commas "
                f"(for example gradsum,gpo), got {', '.join(map(repr, bad))}"
            )
            return ()
        return tuple(dict.fromkeys(methods))  # drop repeats, keep order

    def api_base(self, name: str) -> str:
        value = self.raw(name)
        if not value:
            return value
        try:
            return check_api_base(value)
        except ValueError:
            self.errors.append(f"{name} must be an http(s) URL with a host (for example http://127.0.0.1:8000/v1), got {value!r}")
            return ""

    def env_lines(self, name: str) -> tuple[tuple[str, str], ...]:
        pairs: list[tuple[str, str]] = []
        for number, line in enumerate(self.raw(name).splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not _ENV_KEY_RE.match(key):
                # Never echo the line: it likely holds a secret.
                self.errors.append(
                    f"{name} line {number} must look like KEY=VALUE (for example "
                    f"OPENAI_API_KEY=${{{{ secrets.OPENAI_API_KEY }}}})"
                )
                continue
            if key.upper().startswith(RESERVED_ENV_PREFIXES):
                self.errors.append(
                    f"{name} line {number} sets {key}, which the env input may not set: names starting with "
                    f"{_or_list(RESERVED_ENV_PREFIXES)} belong to the runner (they could redirect GITHUB_OUTPUT or "
                    "send the token to another host); give the token through the github-token input and leave "
                    "the others to the runner"
                )
                continue
            pairs.append((key, value.strip()))
        return tuple(pairs)

    def workspace_path(self, name: str, bases: tuple[str, ...] = ("",)) -> str:
        """A path input that, taken from each of ``bases`` (relative to the workspace), stays inside it."""
        value = self.text(name)
        if value and not all(_inside(self.workspace, base, value) for base in bases):
            self.errors.append(
                f"{name} must stay inside the workspace {self.workspace} (no '..' leading out of it, no absolute "
                f"path elsewhere, no symlink pointing elsewhere), got {value!r}"
            )
            return ""
        return value


def _inside(workspace: Path, base: str, value: str) -> bool:
    """``value`` joined to ``workspace/base`` (an absolute ``value`` stays itself) resolves inside ``workspace``.

    Symlinks are followed as far as the path exists, so a link inside the workspace that points out is refused.
    """
    root = Path(os.path.realpath(workspace))
    target = Path(os.path.realpath(workspace / base / value))
    return target == root or target.is_relative_to(root)


def _or_list(values: tuple[str, ...]) -> str:
    quoted = [f'"{v}"' for v in values]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def parse_action_inputs(
    env: Mapping[str, str], event: Mapping[str, Any] | None = None, workspace: str | Path | None = None
) -> ActionInputs:
    """Validate every ``INPUT_*`` variable in ``env``; ``event`` is the workflow event payload, if any.

    Raises ``UsageError`` naming each bad input and a valid value. Reads nothing but its arguments, except
    that the path inputs (``working-directory``, ``config``, ``out``) are resolved in the file system to
    follow symlinks: each must stay inside ``workspace`` (default ``$GITHUB_WORKSPACE``, else the current
    directory), the directory the CLI runs in. ``working-directory`` is taken from the workspace; ``config``
    and ``out`` from both the workspace and the working directory, because the CLI reads some of them from
    one and some from the other, so either reading must stay inside. The ``env`` input may not set
    variables the runner owns (``RESERVED_ENV_PREFIXES``).
    """
    root = Path(workspace or env.get("GITHUB_WORKSPACE") or os.getcwd())
    p = _Parser(env, root)
    mode = p.choice("mode", MODES, "check")
    base_ref = p.ref("base-ref")
    if mode == "check" and not p.raw("base-ref"):
        sha = dig(event, "pull_request", "base", "sha")
        base_ref = sha if isinstance(sha, str) else ""
        if not base_ref:
            p.errors.append(
                "base-ref must name the commit to compare against in check mode "
                "(for example main); outside pull_request events set it explicitly"
            )
    methods = p.methods("methods")
    working_directory = p.workspace_path("working-directory")
    bases = ("", working_directory) if working_directory else ("",)
    inputs = ActionInputs(
        mode=mode,
        config=p.workspace_path("config", bases),
        working_directory=working_directory,
        prompts=p.prompts("prompts"),
        base_ref=base_ref,
        head_ref=p.ref("head-ref"),
        methods=methods or (DEFAULT_METHODS if mode == "optimize" else ()),
        budget_calls=p.integer("budget-calls", minimum=1),
        budget_tokens=p.integer("budget-tokens", minimum=1),
        budget_usd=p.positive_float("budget-usd"),
        budget_seconds=p.positive_float("budget-seconds"),
        seed=p.integer("seed", minimum=0, maximum=MAX_SEED),
        task_model=p.text("task-model"),
        judge_model=p.text("judge-model"),
        optimizer_model=p.text("optimizer-model"),
        api_base=p.api_base("api-base"),
        fail_on_regression=p.boolean("fail-on-regression", True),
        comment=p.boolean("comment", True),
        write=p.boolean("write", False),
        open_pr=p.boolean("open-pr", False),
        out=p.workspace_path("out", bases),
        github_token=p.raw("github-token"),
        extra_env=p.env_lines("env"),
        ignored=_ignored(env, mode),
    )
    if p.errors:
        raise UsageError(
            "invalid action input: " + "; ".join(p.errors),
            hint="fix the `with:` block of the gradgate step; action.yml lists every input",
        )
    return inputs


def _ignored(env: Mapping[str, str], mode: str) -> tuple[str, ...]:
    if mode == "check":
        names = [*_OPTIMIZE_ONLY]
        names += [n for n in ("write", "open-pr") if read_input(env, n).lower() == "true"]
    else:
        names = ["head-ref"]
        names += [n for n in ("fail-on-regression", "comment") if read_input(env, n).lower() == "false"]
    return tuple(n for n in names if read_input(env, n))


def to_cli_args(inputs: ActionInputs) -> list[str]:
    """The ``gradgate`` command line (without the program name) for ``inputs``."""
    args = [inputs.mode]
    if inputs.mode == "check":
        args += ["--base", inputs.base_ref]
        if inputs.head_ref:
            args += ["--head", inputs.head_ref]
    for flag, value in (("--repo", inputs.working_directory), ("--config", inputs.config)):
        if value:
            args += [flag, value]
    for prompt_id in inputs.prompts:
        args += ["--prompt", prompt_id]
    for flag, value in (("--model", inputs.task_model), ("--judge-model", inputs.judge_model)):
        if value:
            args += [flag, value]
    if inputs.mode == "check":
        if not inputs.fail_on_regression:
            args.append("--no-fail-on-regression")
        if not inputs.comment:
            args.append("--no-comment")
    else:
        for method in inputs.methods:
            args += ["--method", method]
        if inputs.optimizer_model:
            args += ["--optimizer-model", inputs.optimizer_model]
        budgets: tuple[tuple[str, int | float | None], ...] = (
            ("--budget-calls", inputs.budget_calls),
            ("--budget-tokens", inputs.budget_tokens),
            ("--budget-usd", inputs.budget_usd),
            ("--budget-seconds", inputs.budget_seconds),
            ("--seed", inputs.seed),
        )
        for flag, number in budgets:
            if number is not None:  # a seed of 0 is a seed
                args += [flag, _number(number)]
        if inputs.write:
            args.append("--write")
        if inputs.open_pr:
            args.append("--open-pr")
    if inputs.out:
        args += ["--out", inputs.out]
    return args


def _number(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def to_cli_env(inputs: ActionInputs) -> dict[str, str]:
    """Environment variables the CLI reads, on top of the container's own."""
    env = dict(inputs.extra_env)
    if inputs.api_base:
        env["GRADGATE_API_BASE"] = inputs.api_base
    if inputs.github_token:
        env["GITHUB_TOKEN"] = inputs.github_token
    return env


def _raw_secrets(env: Mapping[str, str]) -> list[str]:
    """Secret values read straight from the environment, so they are masked even when parsing fails."""
    secrets = [read_input(env, "github-token")]
    for line in read_input(env, "env").splitlines():
        _, sep, value = line.partition("=")
        if sep and value.strip():
            secrets.append(value.strip())
    return [s for s in secrets if s]


def _trust_workspace(workspace: str) -> None:
    """Let git work in the mounted workspace: it belongs to the runner's user, not the container's root."""
    git = Git(Path(workspace))
    try:
        known = git.run("config", "--global", "--get-all", "safe.directory", check=False).stdout.split()
        if workspace not in known:
            git.run("config", "--global", "--add", "safe.directory", workspace)
    except GitError as exc:
        logger.warning("could not mark %s as a safe git directory: %s", workspace, exc.message)


def main() -> NoReturn:
    """Container entry point: mask secrets, parse inputs, then become ``python -m gradgate ARGS``."""
    prepare_process_env()
    env = dict(os.environ)
    # Masks first: nothing may be written before GitHub knows what to hide. Outside a runner nobody reads
    # workflow commands, and printing one would only show the secret (mask_secret then prints nothing).
    for secret in _raw_secrets(env):
        actions.mask_secret(secret, env=env)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        inputs = parse_action_inputs(env, read_event(env.get("GITHUB_EVENT_PATH")) or None)
    except UsageError as exc:
        actions.annotate("error", redact(exc.message), title="gradgate action inputs", env=env)
        print(f"gradgate: {redact(str(exc))}", file=sys.stderr)
        sys.stdout.flush()
        sys.exit(EXIT_USAGE)
    for name in inputs.ignored:
        logger.warning("input %s has no effect in %s mode", name, inputs.mode)
    workspace = env.get("GITHUB_WORKSPACE")
    if workspace:
        _trust_workspace(workspace)
        # The path inputs were checked against the workspace; the CLI resolves them from its working directory.
        try:
            os.chdir(workspace)
        except OSError as exc:
            print(f"gradgate: cannot enter the workspace {workspace}: {exc}", file=sys.stderr)
            sys.exit(EXIT_INFRA)
    args = to_cli_args(inputs)
    logger.info("running: gradgate %s", redact(" ".join(args)))
    sys.stdout.flush()
    sys.stderr.flush()
    # exec keeps the CLI's exit code, signals and output ordering exactly as if it were the entry point.
    os.execve(sys.executable, [sys.executable, "-m", "gradgate", *args], {**env, **to_cli_env(inputs)})


if __name__ == "__main__":
    main()
