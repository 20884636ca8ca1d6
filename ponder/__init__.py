"""ponder: a command-line assistant for <think>-style reasoning models."""

__version__ = "0.1.0"
