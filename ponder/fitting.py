"""Memory fitting: how much memory a model may use here, and the context that fits in it
(`ponder plan`'s arithmetic). No terminal here: what the user should be told comes back as text."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

from ponder.backends import LLAMA_CPP, LoadOptions
from ponder.defaults import DEFAULT_CONTEXT, MEMORY_ENV
from ponder.errors import UsageError

MAX_MEMORY_GIB = 2**30  # an exbibyte: more than any machine, and a byte count that stays exact
# llama.cpp keeps a cache's size in a uint32 and its positions in an int32: a larger --ctx wraps round
# (2**32 runs with the model's own context, 10**23 hangs in llama_init_from_model).
MAX_CACHE_TOKENS = 2**31 - 1
HOPELESS = 2  # a context needing this many times the machine's memory is refused (swap is no help there)


@dataclass(frozen=True)
class Fit:
    options: LoadOptions  # with the context chosen, where none was given
    note: str | None = None  # "ponder: note: …" or "ponder: warning: …", for the user


def fit_context(path: str, backend: str, options: LoadOptions, sequences_given: bool = False,
                sample_context: int | None = None) -> Fit:
    """With no context given, the largest (up to the default) whose KV cache fits in memory;
    with one, a warning when it will not fit. For several sequences (options.sequences: parallel
    samples) each gets that context; see _fit_sequences for what gives where they do not fit."""
    from ponder.plan import model_footprint, plan

    if options.context and options.context * options.sequences > MAX_CACHE_TOKENS:
        each = f" for each of {options.sequences} samples" if options.sequences > 1 else ""
        raise UsageError(f"--ctx {options.context}{each} is beyond what a model's cache can hold "
                         f"({MAX_CACHE_TOKENS} tokens in all)", hint="`ponder plan` shows what a context needs")
    budget, where = memory_budget(backend)  # first: a bad PONDER_MEMORY_GIB is an error for any model
    footprint = model_footprint(path)
    if footprint is None:
        return Fit(options)
    shape, weights = footprint
    if options.context:
        _check_possible(weights, shape, options.context, budget if where == "GPU memory" else 0)
    ceiling = min(DEFAULT_CONTEXT, shape.trained_context or DEFAULT_CONTEXT)
    needed = plan(weights, shape, options.context or ceiling, sequences=options.sequences).total
    if needed <= budget:
        return Fit(options)
    if options.sequences > 1:
        fit = _fit_sequences(weights, shape, options, sequences_given, min(sample_context or ceiling, ceiling),
                             ceiling, budget, where)
        if fit is not None:
            return fit
        one = _fit_one(weights, shape, replace(options, sequences=1), ceiling, budget, where)
        alone = f"ponder: note: the samples run one after another: two at once do not fit in {where} ({_gib(budget)})"
        return Fit(one.options, alone + (f"\n{one.note}" if one.note else ""))
    return _fit_one(weights, shape, options, ceiling, budget, where)


def _check_possible(weights: int, shape, context: int, vram: int) -> None:
    """A --ctx that needs several times all the memory of this machine is an error, not a warning:
    llama.cpp would fill the RAM setting its cache up (by gigabytes a second) before it failed."""
    from ponder import machine
    from ponder.plan import plan

    needed = plan(weights, shape, context).total
    memory = machine.ram().total + vram
    if needed > HOPELESS * memory:
        raise UsageError(f"--ctx {context} needs about {_gib(needed)} for this model, far beyond this machine's "
                         f"{_gib(memory)} of memory", hint="a smaller --ctx; `ponder plan` shows the figures")


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**30:.2f} GiB"


def _fit_one(weights: int, shape, options: LoadOptions, ceiling: int, budget: int, where: str) -> Fit:
    from ponder.plan import GIB, largest_context, plan

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


def _fit_sequences(weights: int, shape, options: LoadOptions, sequences_given: bool, sample_context: int,
                   ceiling: int, budget: int, where: str) -> Fit | None:
    """Several sequences that do not fit as asked. Each sample keeps room for what it may generate
    (`sample_context`): with no --ctx, the contexts shrink only down to that, then fewer run at once, and
    below two at once they run one after another (None: fit one). What --parallel asks for and cannot
    fit is an error before loading, naming what would."""
    from ponder.plan import OVERHEAD_BYTES, largest_context, largest_sequences, plan

    wanted = options.sequences
    room = f"{where} ({_gib(budget)})"
    if options.context is None:
        fits = largest_context(weights, shape, budget, ceiling=ceiling, sequences=wanted)
        if fits >= sample_context:
            return Fit(replace(options, context=fits),
                       f"ponder: note: context set to {fits} tokens for each of {wanted} samples so that they fit in "
                       f"{room}; --ctx overrides")
    context = options.context or sample_context
    most = min(largest_sequences(weights, shape, budget, context), wanted)
    if not sequences_given:
        if most < 2:
            return None
        if options.context is None:
            context = largest_context(weights, shape, budget, ceiling=ceiling, sequences=most)
        return Fit(replace(options, context=context, sequences=most),
                   f"ponder: note: {most} of the {wanted} samples run at once, each with a {context}-token context, "
                   f"so that they fit in {room}; --parallel and --ctx override")
    needed = plan(weights, shape, context, sequences=wanted).total
    longest = largest_context(weights, shape, budget, ceiling=ceiling, sequences=wanted)
    ways = [f"--parallel {most} at this context"] if most >= 1 else []
    ways += [f"--ctx {longest} for {wanted} at once"] if longest else []
    alone = (f"not even one {context}-token context fits beside the weights ({_gib(weights)}) and the runtime's "
             f"allowance ({_gib(OVERHEAD_BYTES)}): a smaller --ctx or more memory")
    raise UsageError(f"{wanted} samples at once with a {context}-token context each need about {_gib(needed)}, but "
                     f"{where} has {_gib(budget)}", hint=("what fits: " + " or ".join(ways)) if ways else alone)


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
    if gib > MAX_MEMORY_GIB:  # 1e308 GiB has no byte count
        raise UsageError(f"{MEMORY_ENV} must be at most {MAX_MEMORY_GIB} GiB, not {value!r}")
    return int(gib * 2**30)
