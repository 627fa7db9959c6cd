"""gradgate: guard and improve the LLM prompts kept in a repository."""

__version__ = "0.1.0"
