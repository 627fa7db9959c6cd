"""The regression gate: what changed, per-item scores and their cache, the paired decision, its power, the report."""

__all__ = ["changes", "check", "power", "report", "scores"]
