"""Memory fitting: how much memory a model may use here, and the context that fits in it
(`ponder plan`'s arithmetic). No terminal here: what the user should be told comes back as text."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

from ponder.backends import LLAMA_CPP, LoadOptions
from ponder.defaults import DEFAULT_CONTEXT, MEMORY_ENV
from ponder.errors import UsageError


@dataclass(frozen=True)
class Fit:
    options: LoadOptions  # with the context chosen, where none was given
    note: str | None = None  # "ponder: note: …" or "ponder: warning: …", for the user


def fit_context(path: str, backend: str, options: LoadOptions) -> Fit:
    """With no context given, the largest (up to the default) whose KV cache fits in memory;
    with one, a warning when it will not fit."""
    from ponder.plan import GIB, largest_context, model_footprint, plan

    budget, where = memory_budget(backend)  # first: a bad PONDER_MEMORY_GIB is an error for any model
    footprint = model_footprint(path)
    if footprint is None:
        return Fit(options)
    shape, weights = footprint
    ceiling = min(DEFAULT_CONTEXT, shape.trained_context or DEFAULT_CONTEXT)
    context = options.context or ceiling
    needed = plan(weights, shape, context).total
    if needed <= budget:
        return Fit(options)
    fits = largest_context(weights, shape, budget, ceiling=ceiling)
    if options.context is None and fits:
        return Fit(replace(options, context=fits),
                   f"ponder: note: context set to {fits} tokens so that it fits in {where} "
                   f"({budget / GIB:.1f} GiB); --ctx overrides")
    return Fit(options, f"ponder: warning: this needs about {needed / GIB:.1f} GiB (weights, {context}-token cache, "
                        f"overhead) but {where} has {budget / GIB:.1f} GiB; it may fail or swap "
                        f"(`ponder plan` shows the figures)")


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
