"""The jobs the CLI runs (eval, check, optimize, merge), the session they run with, and what they write: reports,
progress, JUnit, shards."""

__all__ = [
    "check_job",
    "eval_job",
    "eval_report",
    "html_report",
    "junit",
    "merge_job",
    "optimize_job",
    "progress",
    "sessions",
    "shards",
]
