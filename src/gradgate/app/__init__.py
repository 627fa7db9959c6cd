"""The jobs the CLI runs (eval, check, optimize, merge) and what they write: reports, progress, JUnit, shards."""

__all__ = ["check_job", "eval_job", "eval_report", "html_report", "junit", "merge_job", "optimize_job", "progress", "shards"]
