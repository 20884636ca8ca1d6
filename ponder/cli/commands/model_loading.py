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
    with _working(term, f"Loading {os.path.basename(path)}…"):
        model = call_in_thread(lambda: chosen.load(path, fit.options))
    if model.info.ignored:
        names = ", ".join(IGNORED_OPTIONS.get(name, name) for name in model.info.ignored)
        term.stderr.write(f"ponder: note: the {model.info.backend} backend ignores {names} here\n")
    return model


def connect_server(term: Terminal, url: str, model: str | None, backend: str, options: LoadOptions,
                   timeout: float | None, model_kind: str) -> Model:
    """The model `model` on the server at `url` (its only one when None)."""
    from ponder.backends.server import connect
    from ponder.backends.server_http import shown_url
    from ponder.errors import UsageError

    if backend != "auto":
        raise UsageError(f"--backend {backend} picks a local engine, but --server (or PONDER_SERVER) names a server",
                         hint="drop one of them")
    unused = [flag for flag, value in (("--ctx", options.context), ("--threads", options.threads)) if value]
    if unused:
        term.stderr.write(f"ponder: note: {' and '.join(unused)} apply to local models; the server sets its own\n")
    reasoning = {"reasoning": True, "plain": False}.get(model_kind)
    with _working(term, f"Connecting to {shown_url(url)}…"):
        connected = call_in_thread(lambda: connect(url, model, timeout, reasoning))
    from ponder.errors import debugging

    if debugging():
        term.stderr.write(f"ponder: debug: {connected.facts.kind} at {connected.facts.url}, model "
                          f"{connected.info.name}; requests go to {connected.route}\n")
    return connected


def set_model_kind(model: Model, model_kind: str) -> None:
    """--model-kind reasoning|plain: say whether the model thinks in <think> tags, whatever its template says."""
    if model_kind in ("reasoning", "plain"):
        from dataclasses import replace

        model.info = replace(model.info, chat=replace(model.info.chat, reasoning=model_kind == "reasoning"))


def _working(term: Terminal, label: str):
    """A spinner on stderr while loading or connecting (a terminal only)."""
    import contextlib

    if not term.stderr_is_tty:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(file=term.stderr, no_color=not term.color).status(label, spinner="dots")


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
