"""The regression gate: which prompts changed, the paired decision, the base-score cache, the report."""

__all__ = ["changes", "check", "report"]
