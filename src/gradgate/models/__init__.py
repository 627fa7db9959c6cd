"""Every model call: the gateway (cache, retries, budget), the litellm backend, the embedded local models,
embeddings, the scripted test double, and the session that gate and optimizers receive."""

__all__ = ["embeddings", "gateway", "litellm_backend", "scripted", "session"]
