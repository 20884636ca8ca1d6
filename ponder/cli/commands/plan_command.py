"""`ponder plan`: the memory a model needs at a context size, and whether this machine has it."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import MAX_PARALLEL

MODELS = ("7b", "1.5b", "14b")  # ponder.plan.KNOWN_MODELS, named here so that --help imports no arithmetic
KV_TYPES = ("f16", "q8_0", "q4_0")  # ponder.plan.KV_BYTES


def _choice(values):
    def check(value):
        if value is not None and value not in values:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(values)}")
        return value

    return check


def _gib(value):
    """--memory's GiB: a range that nan is outside of (a range check alone would call nan above the maximum)."""
    if value is not None and not 0.1 <= value <= 2**30:  # (false for nan and inf alike)
        raise typer.BadParameter(f"a number of GiB from 0.1 to {2**30} is needed, not {value}")
    return value


def plan_command(
    model: str = typer.Option("7b", "--model", "-m", help="DeepSeek-R1 distill: " + ", ".join(MODELS) + ".",
                              callback=_choice(MODELS)),
    ctx: int = typer.Option(32768, "--ctx", help="Context size in tokens.", min=1),
    quant: Optional[str] = typer.Option(None, "--quant", help="One quantization (Q4_K_M, Q8_0, mlx-4bit…); "
                                        "default: all.", show_default=False),
    kv_type: str = typer.Option("f16", "--kv-type", help="KV cache element type: " + ", ".join(KV_TYPES) + ".",
                                callback=_choice(KV_TYPES)),
    memory: Optional[float] = typer.Option(None, "--memory", help="Plan for this many GiB (another machine) "
                                           "instead of this one's RAM and VRAM (0.1 or more).",
                                           callback=_gib, show_default=False),
    samples: int = typer.Option(1, "--samples", "-n", min=1, max=MAX_PARALLEL,
                                help="Samples decoded together (--parallel of solve and batch; by default all of solve's "
                                     "--samples): each has a cache of --ctx tokens."),
) -> None:
    """Weights + KV cache + overhead for each quantization, and whether it fits in RAM / VRAM."""
    from ponder import machine
    from ponder.errors import UsageError, shortened
    from ponder.plan import GIB, KNOWN_MODELS, KV_BYTES, kv_bytes_per_token, largest_context, largest_sequences, plan

    known = KNOWN_MODELS[model]
    sizes = known.sizes
    if quant is not None:
        match = {q.lower(): q for q in sizes}.get(quant.lower())
        if match is None:
            raise UsageError(f"no quantization {shortened(quant, 40)!r} for {known.name}", hint="one of " + ", ".join(sizes))
        sizes = {match: sizes[match]}
    if ctx > known.shape.trained_context:
        raise UsageError(f"{known.name} was trained on {known.shape.trained_context} tokens; --ctx {ctx} is beyond it")

    if memory is not None:
        ram, gpus, vram = machine.Memory(int(memory * GIB), int(memory * GIB)), [], None
    else:
        ram = machine.ram()
        gpus = machine.nvidia_gpus()
        vram = sum(g.free for g in gpus) if gpus else machine.unified_gpu_budget(ram)
    vram_label = "VRAM free" if gpus else "Metal budget"
    per_token = kv_bytes_per_token(known.shape, kv_type)
    sequences = f"; {samples} sequences, a {ctx}-token cache each" if samples > 1 else ""
    print(f"{known.name} at {ctx} tokens of context{sequences}; KV cache {kv_type}: {per_token / 1024:g} KiB a token "
          f"(2 x {known.shape.layers} layers x {known.shape.kv_heads} KV heads x {known.shape.head_dim} dims "
          f"x {KV_BYTES[kv_type]:g} bytes)")
    memory = f"RAM {ram.available / GIB:.1f} GiB available of {ram.total / GIB:.1f} GiB"
    if vram is not None:
        memory += f"; {vram_label} {vram / GIB:.1f} GiB" + (f" ({', '.join(g.name for g in gpus)})" if gpus else "")
    print(memory)
    gib = lambda n: f"{n / GIB:6.2f} GiB"  # noqa: E731
    print(f"{'quant':10} {'weights':>10} {'KV cache':>10} {'overhead':>10} {'total':>10}  fits")
    for name, size in sizes.items():
        figures = plan(size, known.shape, ctx, kv_type, sequences=samples)
        where = [label for label, budget in (("GPU", vram), ("RAM", ram.available)) if budget and figures.total <= budget]
        fits = " and ".join(where) if where else "no"
        if not where:
            largest = max(vram or 0, ram.available)
            most = largest_context(size, known.shape, largest, kv_type, sequences=samples)
            context_fits = f"{most} tokens of context" + (" each" if samples > 1 else "")
            fewer = largest_sequences(size, known.shape, largest, ctx, kv_type) if samples > 1 else 0
            if most or fewer:
                ways = [f"{context_fits}"] if most else []
                ways += [f"{fewer} sequence{'s' if fewer > 1 else ''} of {ctx}"] if fewer else []
                fits += f" (at most {' or '.join(ways)} would)"
            elif size + figures.overhead <= largest:
                fits += " (the weights fit, not the cache: a smaller --ctx)"
            else:
                fits += " (not even the weights)"
        print(f"{name:10} {gib(figures.weights)} {gib(figures.kv_cache)} {gib(figures.overhead)} "
              f"{gib(figures.total)}  {fits}")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
