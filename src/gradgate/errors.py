"""Every failure gradgate reports to a user.

Exception tree (the CLI catches only ``GradgateError`` and maps ``exit_code``)::

    GradgateError                 exit 3 unless a subclass says otherwise
    ├── UsageError                exit 2  bad command-line usage
    ├── ConfigError               exit 2  gradgate.yaml, prompt or suite files
    │   └── PathOutsideRepoError  exit 2  a path (or symlink) leads outside the repository
    │       └── PathInGitDirError exit 2  a path (or symlink) leads into .git/ (credentials, hooks)
    ├── ModelError                exit 3  an LLM could not be reached or answered nonsense
    │   ├── UnknownModelError     exit 2  the model string names nothing we can call
    │   └── MissingPackageError   exit 2  calling the model needs a Python package that is not installed
    ├── BudgetExhausted           exit 3  the hard budget ran out before a decision
    ├── Interrupted               exit 130/143  SIGINT or SIGTERM (a cancelled or timed-out CI job)
    ├── GitError                  exit 3  a git command failed or is missing
    └── GitHubError               exit 3  the GitHub REST API refused

Each message says what happened, why, and what to do (the ``hint``).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_INFRA = 3


class GradgateError(Exception):
    """Root of every error gradgate raises on purpose."""

    exit_code: int = EXIT_INFRA

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where  # "file[:key.path]" the error is about, when there is one

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class UsageError(GradgateError):
    exit_code = EXIT_USAGE


class ConfigError(GradgateError):
    exit_code = EXIT_USAGE


class PathOutsideRepoError(ConfigError):
    pass


class PathInGitDirError(PathOutsideRepoError):
    """`.git/` holds the job's token (actions/checkout) and hooks: never read it, never write there."""


class ModelError(GradgateError):
    exit_code = EXIT_INFRA


class UnknownModelError(ModelError):
    exit_code = EXIT_USAGE


class MissingPackageError(ModelError):
    """An import failed inside a model call (a provider's SDK, torch for local models): install, then rerun;
    retrying cannot help."""

    exit_code = EXIT_USAGE


BUDGET_HINT = "raise the budget (gradgate.yaml `budget:` or --budget-*) or narrow the run"


class BudgetExhausted(GradgateError):
    """A hard limit (calls, tokens, USD, seconds) refused the next call. Every raise site gets the same hint,
    so a stop caught and raised again on its way up still says what to do."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str, *, hint: str | None = BUDGET_HINT, where: str | None = None) -> None:
        super().__init__(message, hint=hint, where=where)


class GitHubError(GradgateError):
    exit_code = EXIT_INFRA


class GitError(GradgateError):
    exit_code = EXIT_INFRA


class Interrupted(GradgateError):
    """SIGINT or SIGTERM arrived: jobs write what they have (partial report, resume state) and stop.
    The exit code is 128 + the signal number, as a shell reports a process killed by it."""

    def __init__(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}: partial results were written",
            hint="rerun the same command to resume (the optimizer's state and the response cache are kept)",
        )
        self.signum = signum
        self.exit_code = 128 + signum
