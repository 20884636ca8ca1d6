"""`ponder ask`: one question, one streamed answer; made for terminals and pipelines alike."""

from __future__ import annotations

from typing import Optional

import typer

from ponder import config
from ponder.cli.options import ModelOptions, SamplingOptions, reasoning_mode
from ponder.cli.terminal import Terminal


def ask(
    prompt: Optional[str] = typer.Argument(None, help="The question. Piped stdin is put before it.", show_default=False),
    model: Optional[str] = ModelOptions.model,
    backend: str = ModelOptions.backend,
    ctx: Optional[int] = ModelOptions.ctx,
    threads: Optional[int] = ModelOptions.threads,
    temperature: float = SamplingOptions.temperature,
    top_p: float = SamplingOptions.top_p,
    max_tokens: int = SamplingOptions.max_tokens,
    seed: Optional[int] = SamplingOptions.seed,
    show_reasoning: bool = typer.Option(False, "--show-reasoning", help="Keep the full reasoning on screen."),
    hide_reasoning: bool = typer.Option(False, "--hide-reasoning", help="Show no reasoning at all."),
    stats: bool = typer.Option(False, "--stats", help="Print token counts and speed to stderr."),
    debug: bool = typer.Option(False, "--debug", envvar=config.DEBUG_ENV, help="Show tracebacks and llama.cpp's log."),
) -> None:
    """Ask one question and stream the answer (reasoning to stderr when piped)."""
    from ponder.backends import LoadOptions
    from ponder.cli.app import enable_debug
    from ponder.cli.inputs import user_prompt
    from ponder.cli.loading import load_model
    from ponder.cli.render import make_renderer
    from ponder.cli.stream import format_stats, show_reply
    from ponder.events import GenerationParams, Message
    from ponder.session import generate_reply

    if debug:
        enable_debug()
    mode = reasoning_mode(show_reasoning, hide_reasoning)
    params = GenerationParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    term = Terminal.from_system()
    text = user_prompt(prompt, term)
    loaded = load_model(term, model, backend, LoadOptions(context=ctx, threads=threads))
    events = generate_reply(loaded, [Message("user", text)], params)
    reply = show_reply(events, make_renderer(term, mode, loaded.info.chat.reasoning))
    if reply is None:
        return
    if reply.finish_reason == "length":
        print(
            f"ponder: warning: stopped after {reply.stats.reasoning_tokens + reply.stats.answer_tokens} tokens "
            "(the --max-tokens budget or the context is used up)",
            file=term.stderr,
        )
    if stats:
        print(format_stats(reply.stats), file=term.stderr)


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
