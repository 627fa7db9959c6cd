"""gradgate: guard and improve the LLM prompts kept in a repository.

Layers, imported one way only (README "Architecture"): errors → core → models → scoring → {gate | optimizers}
→ github → app → cli.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
