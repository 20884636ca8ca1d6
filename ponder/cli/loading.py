"""Finding and loading the model a command names."""

from __future__ import annotations

import math
import os

from ponder.backends import LLAMA_CPP, LoadOptions, Model, get_backend, select_backend
from ponder.cli.terminal import Terminal
from ponder.config import MEMORY_ENV, MODEL_ENV
from ponder.errors import ModelError, UsageError
from ponder.threads import call_in_thread


def resolve_model_path(term: Terminal, model: str | None, backend: str) -> str:
    """A path for the model a user named: a file or directory, a name `ponder models` lists, a
    catalogue alias, or (none given) the default model of the backend, downloaded on first use."""
    from ponder.catalogue import CATALOGUE, DEFAULTS

    name = model or os.environ.get(MODEL_ENV)
    path = os.path.expanduser(name) if name else None
    if path and os.path.exists(path):
        if not (os.path.isfile(path) or os.path.isdir(path)):  # a FIFO or a device: reading it could block
            raise ModelError(f"{path} is not a regular file or a directory",
                             hint="pass a .gguf file or an MLX model directory")
        return path
    if name and name.lower() not in CATALOGUE:
        from ponder.backends import MLX, model_kind
        from ponder.models import find_local

        # Any name `ponder models` prints (owner/repo/file.gguf, deepseek-r1:7b…) runs from its path;
        # but an MLX repo id goes to mlx-lm as it is: mlx-lm reads the same cache, and names the model by it.
        listed = find_local(name)
        if listed is not None and not (listed.backend == MLX and model_kind(name) == MLX):
            return str(listed.path)
    if name is None or name.lower() in CATALOGUE:
        from ponder.backends import AUTO, default_backend

        alias = name.lower() if name else DEFAULTS[default_backend() if backend == AUTO else backend]
        return str(_downloaded(term, CATALOGUE[alias], given=name is not None))
    return path


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

    budget, where = memory_budget(backend)  # first: a bad PONDER_MEMORY_GIB is an error for any model
    footprint = model_footprint(path)
    if footprint is None:
        return options
    shape, weights = footprint
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
    """Memory a model can use: free VRAM where this llama.cpp build offloads to NVIDIA GPUs,
    Metal's share of unified memory on Apple Silicon, available RAM otherwise;
    PONDER_MEMORY_GIB caps it."""
    from ponder import machine

    cap = memory_cap()
    ram = machine.ram()
    gpus = []
    if backend == LLAMA_CPP:
        from ponder.backends.llamacpp import gpu_offload_supported

        gpus = machine.nvidia_gpus() if gpu_offload_supported() else []  # a CPU build cannot use VRAM
    budget, where = (sum(g.free for g in gpus), "GPU memory") if gpus else (ram.available, "available RAM")
    unified = machine.unified_gpu_budget(ram)
    if unified:
        budget, where = unified, "Metal's share of memory"
    if cap is not None:
        budget, where = min(budget, cap), MEMORY_ENV
    return budget, where


def memory_cap() -> int | None:
    """PONDER_MEMORY_GIB in bytes, None if unset; anything but a positive number is an error."""
    value = os.environ.get(MEMORY_ENV, "")
    if not value:
        return None
    try:
        gib = float(value)
    except ValueError:
        gib = math.nan
    if not 0 < gib < math.inf:  # also false for nan
        raise UsageError(f"{MEMORY_ENV} must be a number of GiB above 0, not {value!r}",
                         hint=f"for example {MEMORY_ENV}=6, or unset it")
    return int(gib * 2**30)


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
