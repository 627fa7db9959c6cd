"""GReaTer (Das et al.): token gradients through a small open model's own reasoning."""

__all__ = ["candidates", "decoding", "encoding", "engine", "method", "prompts", "search", "settings"]
