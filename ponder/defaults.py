"""Defaults. DeepSeek recommends temperature 0.6, top-p 0.95 and no system prompt for R1 models."""

from __future__ import annotations

DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_TOKENS = 32768  # DeepSeek's evaluation budget; real reasoning needs thousands of tokens
DEFAULT_CONTEXT = 32768  # capped by the model's trained context
MODEL_ENV = "PONDER_MODEL"
BACKEND_ENV = "PONDER_BACKEND"
SERVER_ENV = "PONDER_SERVER"  # an OpenAI-compatible server's URL: its models instead of local ones
DEBUG_ENV = "PONDER_DEBUG"
DATA_DIR_ENV = "PONDER_DATA_DIR"  # history and input history; default: the platform's user data dir
MEMORY_ENV = "PONDER_MEMORY_GIB"  # plan for at most this much memory (leave room for other programs)
