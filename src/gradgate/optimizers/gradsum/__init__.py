"""GRAD-SUM (Austin & Chartock): textual gradients per failure, one summarized gradient, editor candidates, beam."""

__all__ = ["method", "prompts"]
