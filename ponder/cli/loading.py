"""Finding and loading the model a command names."""

from __future__ import annotations

import os

from ponder.backends import LoadOptions, Model, get_backend, select_backend
from ponder.cli.terminal import Terminal
from ponder.config import MODEL_ENV
from ponder.errors import UsageError
from ponder.threads import call_in_thread


def resolve_model_path(model: str | None) -> str:
    path = model or os.environ.get(MODEL_ENV)
    if not path:
        raise UsageError(f"no model given: pass --model (a .gguf file or an MLX model directory) or set {MODEL_ENV}")
    path = os.path.expanduser(path)
    if ":" in path and not os.path.exists(path):  # an Ollama name, such as deepseek-r1:7b
        from ponder.models import ollama_models

        pulled = next((m for m in ollama_models() if m.name == path), None)
        if pulled is not None:
            return str(pulled.path)
    return path


def load_model(term: Terminal, model: str | None, backend: str, options: LoadOptions) -> Model:
    path = resolve_model_path(model)
    chosen = get_backend(select_backend(path, backend))
    if not term.stderr_is_tty:
        return call_in_thread(lambda: chosen.load(path, options))
    from rich.console import Console

    console = Console(file=term.stderr, no_color=not term.color)
    with console.status(f"Loading {os.path.basename(path)}…", spinner="dots"):
        return call_in_thread(lambda: chosen.load(path, options))
