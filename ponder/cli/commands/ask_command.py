"""`ponder ask`: one question, one streamed answer; made for terminals and pipelines alike."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import ModelOptions, OutputOptions, SamplingOptions
from ponder.settings import Reasoning


def ask(
    invocation: typer.Context,  # tells where --reasoning came from
    prompt: Optional[str] = typer.Argument(None, help="The question. Piped stdin is put before it.", show_default=False),
    model: Optional[str] = ModelOptions.model,
    backend: str = ModelOptions.backend,
    ctx: Optional[int] = ModelOptions.ctx,
    threads: Optional[int] = ModelOptions.threads,
    temperature: float = SamplingOptions.temperature,
    top_p: float = SamplingOptions.top_p,
    max_tokens: int = SamplingOptions.max_tokens,
    seed: Optional[int] = SamplingOptions.seed,
    reasoning: Reasoning = OutputOptions.reasoning,
    show_reasoning: bool = OutputOptions.show_reasoning,
    hide_reasoning: bool = OutputOptions.hide_reasoning,
    stats: bool = OutputOptions.stats,
    json: bool = OutputOptions.json,
    jsonl: bool = OutputOptions.jsonl,
    no_log: bool = typer.Option(False, "--no-log", help="Keep this exchange out of the history database."),
    debug: bool = OutputOptions.debug,
) -> None:
    """Ask one question and stream the answer (reasoning to stderr when piped).

    Exit codes: 0 answered, 1 model or runtime failure, 2 usage error, 130 interrupted,
    141 stdout closed early.
    """
    from ponder.cli.commands.model_run import Run

    run = Run.start(debug, reasoning, show_reasoning, hide_reasoning, json, jsonl, invocation=invocation,
                    temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    text = run.prompt(prompt)
    loaded = run.load(model, backend, ctx, threads)
    reply = run.show(loaded, text)
    if not no_log:
        run.log(loaded, text, reply)
    run.report(reply, stats)


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
