"""Demonstrations: bootstrapped from training items the task model answers correctly, searched on dev."""

__all__ = ["method", "prompts"]
