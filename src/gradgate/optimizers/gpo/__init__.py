"""GPO (Tang et al.): a trajectory of winners retrieved by relevance, generation-based refinement, a decaying edit budget."""

__all__ = ["method", "prompts"]
