"""GReaTer (Das et al.): token gradients through a small open model's own reasoning."""

__all__ = ["encoding", "engine", "method", "prompts", "search", "settings"]
