"""Loading the model a command names: the first-use download offer, fitting notes, a spinner."""

from __future__ import annotations

import os

from ponder.backends import LoadOptions, Model, get_backend, select_backend
from ponder.cli.views.terminal import Terminal
from ponder.threads import call_in_thread

# How a user sets each load option a backend may be unable to honour (ModelInfo.ignored).
IGNORED_OPTIONS = {"threads": "--threads", "gpu_layers": "GPU offload", "flash_attention": "flash attention off"}


def load_model(term: Terminal, model: str | None, backend: str, options: LoadOptions) -> Model:
    from ponder.fitting import fit_context

    path = _model_path(term, model, backend)
    backend_name = select_backend(path, backend)
    chosen = get_backend(backend_name)
    fit = fit_context(path, backend_name, options)
    if fit.note:
        term.stderr.write(fit.note + "\n")
    if term.stderr_is_tty:
        from rich.console import Console

        console = Console(file=term.stderr, no_color=not term.color)
        with console.status(f"Loading {os.path.basename(path)}…", spinner="dots"):
            model = call_in_thread(lambda: chosen.load(path, fit.options))
    else:
        model = call_in_thread(lambda: chosen.load(path, fit.options))
    if model.info.ignored:
        names = ", ".join(IGNORED_OPTIONS.get(name, name) for name in model.info.ignored)
        term.stderr.write(f"ponder: note: the {model.info.backend} backend ignores {names} here\n")
    return model


def _model_path(term: Terminal, model: str | None, backend: str) -> str:
    """The model's path; a catalogue model not downloaded yet is offered for download on a
    terminal (in a pipe, the error says how to get it)."""
    from ponder.resolve import NotDownloaded, resolve_model

    try:
        return resolve_model(model, backend)
    except NotDownloaded as missing:
        if not (term.stdin_is_tty and term.stderr_is_tty):
            raise
        artifact = missing.artifact
        term.stderr.write(f"{'' if missing.given else 'No model given. '}Download {artifact.alias} "
                          f"({artifact.reference}, {artifact.size / 1e9:.2f} GB) into the Hugging Face cache? [y/N] ")
        term.stderr.flush()
        if term.stdin.readline().decode(errors="replace").strip().lower() not in ("y", "yes"):
            raise
        from ponder.download import pull

        return str(pull(artifact))
