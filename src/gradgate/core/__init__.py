"""Everything that needs no model and no network: config, files and paths, secrets, prompts, suites,
discovery, the budget, statistics, git, interrupts, reading a Retry-After header."""

__all__ = [
    "budget",
    "config",
    "demos",
    "discovery",
    "editdistance",
    "environment",
    "fence",
    "files",
    "git",
    "interrupts",
    "method_settings",
    "prompts",
    "retry_after",
    "secrets",
    "stats",
    "suites",
]
