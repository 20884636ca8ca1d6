"""Loading the model a command names: the first-use download offer, fitting notes, a spinner."""

from __future__ import annotations

import os
from collections.abc import Callable

from ponder.backends import LoadOptions, Model, get_backend, select_backend
from ponder.cli.views.terminal import Terminal, Working
from ponder.threads import call_in_thread

# How a user sets each load option a backend may be unable to honour (ModelInfo.ignored).
IGNORED_OPTIONS = {"threads": "--threads", "gpu_layers": "GPU offload", "flash_attention": "flash attention off",
                   "sequences": "parallel samples (this model's cache cannot be batched: one after another)"}


def load_model(term: Terminal, model: str | None, backend: str, options: LoadOptions,
               sequences_given: bool = False, sample_context: int | None = None,
               with_draft: bool = False, draft: str | None = None) -> Model:
    """`sample_context`: the context each of several sequences should keep (see ponder.fitting). `with_draft`:
    speculative decoding uses a draft model, `draft` (None: the catalogue's pair of the model)."""
    from ponder.fitting import fit_context

    path = _model_path(term, model, backend)
    backend_name = select_backend(path, backend)
    if with_draft:
        from dataclasses import replace

        from ponder.cli.commands.speculation import draft_path

        options = replace(options, draft=draft_path(draft, model, path, backend_name))
    chosen = get_backend(backend_name)
    fit = fit_context(path, backend_name, options, sequences_given, sample_context)
    if fit.note:
        term.stderr.write(fit.note + "\n")
    drafted = f" (draft {os.path.basename(fit.options.draft)})" if fit.options.draft else ""
    with Working(term, f"Loading {os.path.basename(path)}{drafted}…"):
        model = call_in_thread(lambda: chosen.load(path, fit.options))
    if model.info.ignored:
        names = ", ".join(IGNORED_OPTIONS.get(name, name) for name in model.info.ignored)
        term.stderr.write(f"ponder: note: the {model.info.backend} backend ignores {names} here\n")
    if options.context and model.info.context > options.context:  # (--ctx 10 gives llama.cpp's 256)
        term.stderr.write(f"ponder: note: the context is {model.info.context} tokens: {model.info.backend} rounds"
                          f" --ctx {options.context} up\n")
    return model


def connect_server(term: Terminal, url: str, model: str | None, backend: str, options: LoadOptions,
                   timeout: float | None, model_kind: str, typed: Callable[[str], bool]) -> Model:
    """The model `model` on the server at `url` (its only one when None). `typed(name)`: whether an
    option was given on the command line; a model or backend from the environment or the config
    file is meant for local runs, so with a server it is only a preference (or ignored)."""
    from ponder.backends.server import connect
    from ponder.backends.server_http import shown_url
    from ponder.errors import UsageError

    if backend != "auto" and typed("backend"):
        raise UsageError(f"--backend {backend} picks a local engine, but a server is named (--server, PONDER_SERVER"
                         " or the config file)", hint="drop one of them; --server '' runs locally")
    unused = [flag for flag, value in (("--ctx", options.context), ("--threads", options.threads)) if value]
    if unused:
        verb = "apply" if len(unused) > 1 else "applies"
        term.stderr.write(f"ponder: note: {' and '.join(unused)} {verb} to local models; the server sets its own\n")
    reasoning = {"reasoning": True, "plain": False}.get(model_kind)
    named, preferred = (model, None) if typed("model") else (None, model)
    with Working(term, f"Connecting to {shown_url(url)}…"):
        connected = call_in_thread(lambda: connect(url, named, timeout, reasoning, preferred))
    from ponder.errors import debugging

    if debugging():
        term.stderr.write(f"ponder: debug: {connected.facts.kind} at {connected.facts.url}, model "
                          f"{connected.info.name}; requests go to {connected.route}\n")
    return connected


def close_model(model: Model) -> None:
    """Close `model` at its command's end, on its own thread (after whatever is queued there): the prompt-cache
    entry it is writing is finished first. A Ctrl-C, SIGTERM or SIGHUP meanwhile is held until the model is
    closed, then delivered (ModelThread.iterate waits so for a stopped generation).

    Else the write would be waited for inside interpreter shutdown (its thread is no daemon), where a Ctrl-C
    prints a traceback and leaves the entry's temporary file; here it ends the command as interrupted (130),
    the entry whole."""
    from ponder.threads import model_thread

    def closing(_cancel):
        model.close()
        return iter(())

    for _ in model_thread(model).iterate(closing):
        pass


def set_model_kind(model: Model, model_kind: str) -> None:
    """--model-kind reasoning|plain: say whether the model thinks in <think> tags, whatever its template says."""
    if model_kind in ("reasoning", "plain"):
        from dataclasses import replace

        model.info = replace(model.info, chat=replace(model.info.chat, reasoning=model_kind == "reasoning"))


def _model_path(term: Terminal, model: str | None, backend: str) -> str:
    """The model's path; a catalogue model not downloaded yet is offered for download on a
    terminal (in a pipe, the error says how to get it)."""
    from ponder.resolve import NotDownloaded, resolve_model

    warnings: list[str] = []
    try:
        return resolve_model(model, backend, warnings)
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
    finally:  # entries of the model folders skipped while looking for the name: one may have been it
        for line in warnings:
            term.stderr.write(f"ponder: warning: {line}\n")
