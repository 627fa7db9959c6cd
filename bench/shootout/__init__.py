"""Helpers of the optimizer shoot-out benchmark (`bench/optimizers.py`)."""
