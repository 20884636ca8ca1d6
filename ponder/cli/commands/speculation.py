"""Which speculative decoding a run gets (--speculate, --draft and their config keys), settled before a model
loads: the mode the backend is asked for, the draft model's path, and a usage error for what cannot be.

A flag beats the config file here as everywhere, and a contradiction between two flags is an error, while one
with the config file is not: `--draft` given makes the mode "draft" (unless --speculate says otherwise, an
error); a `draft` from the config file is used only when the mode is "draft". The batch decoder of parallel
samples does not speculate, and a server speculates by its own settings."""

from __future__ import annotations

from collections.abc import Callable

from ponder.errors import ModelError, UsageError

SERVER_HINT = ("start llama-server with --model-draft FILE or --spec-type ngram-simple, vLLM with"
               " --speculative-config; or --server '' to run locally")
PARALLEL_NOTE = "ponder: note: parallel samples run without speculation (the batch decoder does not speculate)"


def check_server(mode: str, draft: str | None, typed: Callable[[str], bool]) -> None:
    """Through a server, speculative decoding is the server's business: asking ponder for it is a usage error
    (a mode or draft from the config file is meant for local runs, and ignored)."""
    if draft is not None and typed("draft"):
        raise UsageError("--draft is for a local model: a server speculates by its own settings", hint=SERVER_HINT)
    if mode in ("ngram", "draft") and typed("speculate"):
        raise UsageError(f"--speculate {mode} is for a local model: a server speculates by its own settings",
                         hint=SERVER_HINT)


def local_mode(mode: str, draft: str | None, typed: Callable[[str], bool], at_once: int) -> tuple[str, str | None]:
    """The mode a local run decodes with, and a note for the user (or None). `at_once`: the sequences the
    model is loaded to decode together (more than one: the batch decoder, which does not speculate)."""
    draft_typed = draft is not None and typed("draft")
    mode_typed = typed("speculate")
    if draft_typed:
        if mode_typed and mode in ("ngram", "off"):
            raise UsageError(f"--draft is for --speculate draft, not --speculate {mode}",
                             hint="drop one of them (--draft alone speculates with the draft)")
        mode = "draft"
    if at_once <= 1:
        return mode, None
    if mode == "draft" and (draft_typed or mode_typed):  # a draft model loaded for nothing: say so now
        flag = "--draft" if draft_typed else "--speculate draft"
        raise UsageError(f"{flag}: parallel samples run without speculation ({at_once} at once: the batch decoder"
                         " does not speculate), so the draft model would go unused",
                         hint="--parallel 1 draws the samples one after another, with the draft")
    note = PARALLEL_NOTE if mode == "ngram" and mode_typed else None
    return ("auto" if mode == "draft" else mode), note  # (config's draft: a sample run alone still speculates)


def draft_path(draft: str | None, model: str | None, path: str, backend: str) -> str:
    """The draft model's path: `draft` resolved as --model is, else the catalogue's pair of the model (`model`
    as named, `path` where it resolved to), downloaded. One line of error otherwise, before any model loads."""
    from ponder.backends import model_kind
    from ponder.catalogue import draft_for
    from ponder.resolve import NotDownloaded, resolve_model

    if draft is None:
        pair = draft_for(path) or (draft_for(model) if model else None)
        if pair is None:
            raise UsageError("--speculate draft needs a draft model: the catalogue pairs none with this model",
                             hint="give one with --draft MODEL (a smaller model with the same vocabulary)")
        draft = pair.alias
    try:
        found = resolve_model(draft, backend)
    except NotDownloaded as missing:
        alias = missing.artifact.alias
        raise ModelError(f"the draft model {alias} is not downloaded",
                         hint=f"ponder pull {alias}; or --speculate auto (no draft)") from None
    kind = model_kind(found)
    if kind is not None and kind != backend:
        raise UsageError(f"the draft {draft} is {'an MLX model' if kind == 'mlx' else 'a GGUF file'}, but the model"
                         f" runs on {backend}: a draft runs on the model's engine",
                         hint="give a draft in the model's format (a .gguf file for llama.cpp, an MLX model for mlx)")
    return found
