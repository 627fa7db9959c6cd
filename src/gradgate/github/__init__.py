"""GitHub: the REST client, the run context, the Actions runtime, the tuning pull request, the action's entry."""

__all__ = ["action_entry", "actions", "client", "context", "tuning_pr"]
