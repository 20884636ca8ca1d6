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


# With several sequences and no --ctx, each keeps at least this much context and fewer run at once
# instead: R1's reasoning runs to thousands of tokens, so a shorter context would cut it off.
SEQUENCE_CONTEXT_FLOOR = 8192


def fit_context(path: str, backend: str, options: LoadOptions, sequences_given: bool = False) -> Fit:
    """With no context given, the largest (up to the default) whose KV cache fits in memory;
    with one, a warning when it will not fit. For several sequences (options.sequences: parallel
    samples) each gets that context: where they do not fit, fewer run at once (unless
    `sequences_given`: the user asked for that many), and what cannot fit at all is an error."""
    from ponder.plan import GIB, largest_context, model_footprint, plan

    budget, where = memory_budget(backend)  # first: a bad PONDER_MEMORY_GIB is an error for any model
    footprint = model_footprint(path)
    if footprint is None:
        return Fit(options)
    shape, weights = footprint
    ceiling = min(DEFAULT_CONTEXT, shape.trained_context or DEFAULT_CONTEXT)
    context = options.context or ceiling
    needed = plan(weights, shape, context, sequences=options.sequences).total
    if needed <= budget:
        return Fit(options)
    if options.sequences > 1:
        return _fit_sequences(weights, shape, options, sequences_given, ceiling, budget, where)
    fits = largest_context(weights, shape, budget, ceiling=ceiling)
    if options.context is None and fits:
        return Fit(replace(options, context=fits),
                   f"ponder: note: context set to {fits} tokens so that it fits in {where} "
                   f"({budget / GIB:.1f} GiB); --ctx overrides")
    return Fit(options, f"ponder: warning: this needs about {needed / GIB:.1f} GiB (weights, {context}-token cache, "
                        f"overhead) but {where} has {budget / GIB:.1f} GiB; it may fail or swap "
                        f"(`ponder plan` shows the figures)")


def _fit_sequences(weights: int, shape, options: LoadOptions, sequences_given: bool, ceiling: int, budget: int,
                   where: str) -> Fit:
    """Several sequences that do not fit as asked: a shorter context each (down to the floor), else fewer
    at once; an error, before loading, where neither is allowed or possible."""
    from ponder.plan import GIB, largest_context, largest_sequences, plan

    wanted = options.sequences
    floor = min(SEQUENCE_CONTEXT_FLOOR, ceiling)
    if options.context is None:
        fits = largest_context(weights, shape, budget, ceiling=ceiling, sequences=wanted)
        if fits >= floor or (sequences_given and fits):
            return Fit(replace(options, context=fits),
                       f"ponder: note: context set to {fits} tokens for each of {wanted} sequences so that they fit "
                       f"in {where} ({budget / GIB:.1f} GiB); --ctx overrides")
        most = largest_sequences(weights, shape, budget, floor)
        if not sequences_given and most >= 1:
            context = largest_context(weights, shape, budget, ceiling=ceiling, sequences=most)
            return Fit(replace(options, context=context, sequences=most),
                       f"ponder: note: {most} of the {wanted} samples run at once, each with a {context}-token "
                       f"context, so that they fit in {where} ({budget / GIB:.1f} GiB); --parallel and --ctx override")
    elif not sequences_given and (most := largest_sequences(weights, shape, budget, options.context)) >= 1:
        return Fit(replace(options, sequences=most),
                   f"ponder: note: {most} of the {wanted} samples run at once, so that {options.context}-token contexts "
                   f"fit in {where} ({budget / GIB:.1f} GiB); --parallel overrides")
    context = options.context or floor
    needed = plan(weights, shape, context, sequences=wanted).total
    most = largest_sequences(weights, shape, budget, context)
    longest = largest_context(weights, shape, budget, ceiling=ceiling, sequences=wanted)
    ways = []
    if most >= 1:
        ways.append(f"--parallel {most} at this context")
    if longest:
        ways.append(f"--ctx {longest} for {wanted} sequences")
    raise UsageError(f"{wanted} sequences of {context} tokens need about {needed / GIB:.1f} GiB, but {where} has "
                     f"{budget / GIB:.1f} GiB",
                     hint=("what fits: " + " or ".join(ways)) if ways else "not even one sequence fits: a smaller model")


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
