"""Options shared by the commands that run a model, declared once."""

from __future__ import annotations

import typer

from ponder import config
from ponder.errors import UsageError


def _positive(name: str):
    def check(value):
        if value is not None and value <= 0:
            raise typer.BadParameter(f"{name} must be greater than 0")
        return value

    return check


def _probability(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter("top-p must be in (0, 1]")
    return value


def _temperature(value: float) -> float:
    if value < 0:
        raise typer.BadParameter("temperature must be 0 (greedy) or more")
    return value


class ModelOptions:
    model = typer.Option(
        None, "--model", "-m", envvar=config.MODEL_ENV, show_default=False,
        help="A .gguf file (llama.cpp), an MLX model directory or hub repo id (mlx).",
    )
    backend = typer.Option(
        "auto", "--backend", envvar=config.BACKEND_ENV,
        help="Inference backend: auto (what the model implies; MLX on Apple Silicon, else llama.cpp), mlx or llama.cpp.",
    )
    ctx = typer.Option(
        None, "--ctx", help=f"Context size in tokens [default: {config.DEFAULT_CONTEXT}, capped by the model].",
        callback=_positive("--ctx"), show_default=False,
    )
    threads = typer.Option(
        None, "--threads", "-t", help="CPU threads [default: physical cores].", callback=_positive("--threads"),
        show_default=False,
    )


class SamplingOptions:
    temperature = typer.Option(config.DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature (0: greedy).",
                               callback=_temperature)
    top_p = typer.Option(config.DEFAULT_TOP_P, "--top-p", help="Nucleus sampling threshold.", callback=_probability)
    max_tokens = typer.Option(config.DEFAULT_MAX_TOKENS, "--max-tokens", help="Most tokens to generate, reasoning included.",
                              callback=_positive("--max-tokens"))
    seed = typer.Option(None, "--seed", help="Random seed, for repeatable samples.", show_default=False)


class OutputOptions:
    show_reasoning = typer.Option(False, "--show-reasoning", help="Keep the full reasoning on screen.")
    hide_reasoning = typer.Option(False, "--hide-reasoning", help="Show no reasoning at all.")
    stats = typer.Option(False, "--stats", help="Print token counts and speed to stderr.")
    json = typer.Option(False, "--json", help="Print one JSON object: reasoning, answer, boxed, stats.")
    jsonl = typer.Option(False, "--jsonl", help="Stream JSON lines: reasoning and answer deltas, then done.")
    debug = typer.Option(False, "--debug", envvar=config.DEBUG_ENV, help="Show tracebacks and llama.cpp's log.")


def reasoning_mode(show: bool, hide: bool):
    if show and hide:
        raise UsageError("--show-reasoning and --hide-reasoning cannot be used together")
    return "show" if show else "hide" if hide else "collapse"


def output_format(json: bool, jsonl: bool):
    if json and jsonl:
        raise UsageError("--json and --jsonl cannot be used together")
    return "json" if json else "jsonl" if jsonl else "text"
