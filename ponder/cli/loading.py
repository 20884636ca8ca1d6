"""Finding and loading the model a command names."""

from __future__ import annotations

import os

from ponder.backends import LoadOptions, Model, get_backend, select_backend
from ponder.cli.terminal import Terminal
from ponder.config import MODEL_ENV
from ponder.errors import ModelError
from ponder.threads import call_in_thread


def resolve_model_path(term: Terminal, model: str | None, backend: str) -> str:
    """A path for the model a user named: a file or directory, an Ollama name, a catalogue
    alias, or (none given) the default model of the backend, downloaded on first use."""
    from ponder.catalogue import CATALOGUE, DEFAULTS

    name = model or os.environ.get(MODEL_ENV)
    if name and os.path.exists(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if name and ":" in name and name.lower() not in CATALOGUE:  # an Ollama name, such as deepseek-r1:7b
        from ponder.models import ollama_models

        pulled = next((m for m in ollama_models() if m.name == name), None)
        if pulled is not None:
            return str(pulled.path)
    if name is None or name.lower() in CATALOGUE:
        from ponder.backends import AUTO, default_backend

        alias = name.lower() if name else DEFAULTS[default_backend() if backend == AUTO else backend]
        return str(_downloaded(term, CATALOGUE[alias], given=name is not None))
    return os.path.expanduser(name)


def _downloaded(term: Terminal, artifact, given: bool):
    """The artifact from the cache; on a terminal, offer to download it; in a pipe, say how."""
    from ponder.download import cached, pull

    found = cached(artifact)
    if found is not None:
        return found
    what = f"{artifact.alias} ({artifact.reference}, {artifact.size / 1e9:.2f} GB)"
    if term.stdin_is_tty and term.stderr_is_tty:
        term.stderr.write(f"{'' if given else 'No model given. '}Download {what} into the Hugging Face cache? [y/N] ")
        term.stderr.flush()
        if input().strip().lower() in ("y", "yes"):
            return pull(artifact)
    raise ModelError(
        ("" if given else f"no model given, and the default model {artifact.alias} is not downloaded")
        or f"{artifact.alias} is not downloaded",
        hint=f"ponder pull {artifact.alias}   (or pass --model, or set {MODEL_ENV})",
    )


def fit_context(term: Terminal, path: str, backend: str, options: LoadOptions) -> LoadOptions:
    """With no --ctx, the largest context (up to the default) whose KV cache fits in memory;
    with one, a warning when it will not fit. The same arithmetic as `ponder plan`."""
    from dataclasses import replace

    from ponder.config import DEFAULT_CONTEXT
    from ponder.plan import GIB, largest_context, model_footprint, plan

    footprint = model_footprint(path)
    if footprint is None:
        return options
    shape, weights = footprint
    budget, where = memory_budget(backend)
    ceiling = min(DEFAULT_CONTEXT, shape.trained_context or DEFAULT_CONTEXT)
    context = options.context or ceiling
    needed = plan(weights, shape, context).total
    if needed <= budget:
        return options
    fits = largest_context(weights, shape, budget, ceiling=ceiling)
    if options.context is None and fits:
        term.stderr.write(f"ponder: note: context set to {fits} tokens so that it fits in {where} "
                          f"({budget / GIB:.1f} GiB); --ctx overrides\n")
        return replace(options, context=fits)
    term.stderr.write(f"ponder: warning: this needs about {needed / GIB:.1f} GiB (weights, {context}-token cache, "
                      f"overhead) but {where} has {budget / GIB:.1f} GiB; it may fail or swap "
                      f"(`ponder plan` shows the figures)\n")
    return options


def memory_budget(backend: str) -> tuple[int, str]:
    """Memory a model can use: free VRAM where llama.cpp offloads to NVIDIA GPUs, Metal's share
    of unified memory on Apple Silicon, available RAM otherwise; PONDER_MEMORY_GIB caps it."""
    from ponder import machine
    from ponder.config import MEMORY_ENV

    ram = machine.ram()
    gpus = machine.nvidia_gpus() if backend == "llama.cpp" else []
    budget, where = (sum(g.free for g in gpus), "GPU memory") if gpus else (ram.available, "available RAM")
    unified = machine.unified_gpu_budget(ram)
    if unified:
        budget, where = unified, "Metal's share of memory"
    cap = os.environ.get(MEMORY_ENV)
    if cap:
        try:
            budget, where = min(budget, int(float(cap) * 2**30)), f"{MEMORY_ENV}"
        except ValueError:
            pass
    return budget, where


def load_model(term: Terminal, model: str | None, backend: str, options: LoadOptions) -> Model:
    path = resolve_model_path(term, model, backend)
    backend_name = select_backend(path, backend)
    chosen = get_backend(backend_name)
    options = fit_context(term, path, backend_name, options)
    if not term.stderr_is_tty:
        return call_in_thread(lambda: chosen.load(path, options))
    from rich.console import Console

    console = Console(file=term.stderr, no_color=not term.color)
    with console.status(f"Loading {os.path.basename(path)}…", spinner="dots"):
        return call_in_thread(lambda: chosen.load(path, options))
