"""From a prompt and items to scores: metrics, the LLM judge and its texts, the scorer, the results schema."""

__all__ = ["answers", "calibration", "judge", "judge_prompts", "metrics", "results", "scorer"]
