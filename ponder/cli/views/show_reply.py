"""Driving one reply through a renderer: Ctrl-C, a closed pipe and the closing lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

import typer

from ponder.cli.views.render import Renderer
from ponder.cli.views.terminal import Terminal
from ponder.events import AnswerDelta, ReasoningDelta, ReasoningDone, Reply, ReplyEvent, Stats

EXIT_BROKEN_PIPE = 141


def show_reply(events: Iterator[ReplyEvent], renderer: Renderer, term: Terminal) -> Reply | None:
    """Render `events` on `term`; returns the finished Reply. Ctrl-C and a closed stdout stop the
    generation, leave the screen clean and exit (130, 141)."""
    reply = None
    try:
        for event in events:
            if isinstance(event, ReasoningDelta):
                renderer.reasoning(event.text, event.tokens)
            elif isinstance(event, AnswerDelta):
                renderer.answer(event.text)
            elif isinstance(event, ReasoningDone):
                renderer.reasoning_done(event.seconds, event.tokens)
            elif isinstance(event, Reply):
                reply = event
        renderer.finish(reply)
    except BrokenPipeError:
        _stop(events, renderer)
        term.silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except BaseException:  # Ctrl-C, a prompt too long for the context…: stop cleanly, then report
        _stop(events, renderer)
        raise
    return reply


def _stop(events, renderer: Renderer) -> None:
    try:
        events.close()  # cancels the generation and waits for the model to be idle
    finally:  # even when a second Ctrl-C came meanwhile: the live view must stop, echo come back
        try:
            renderer.finish(None)
        except (BrokenPipeError, KeyboardInterrupt):
            pass


def report(reply: Reply | None, stats: bool, err: TextIO) -> None:
    """The closing lines on `err` (stderr): a cut-off warning, and figures when asked for."""
    if reply is None:
        return
    if reply.finish_reason == "length":
        print(
            f"ponder: warning: stopped after {reply.stats.reasoning_tokens + reply.stats.answer_tokens} tokens "
            "(the --max-tokens budget or the context is used up)",
            file=err,
        )
    if stats:
        print(format_stats(reply.stats), file=err)


def format_stats(stats: Stats) -> str:
    line = (
        f"prompt {stats.prompt_tokens} tokens · reasoning {stats.reasoning_tokens} tokens · "
        f"answer {stats.answer_tokens} tokens · first token {stats.time_to_first_token_s:.2f} s · "
        f"decode {stats.decode_tokens_per_s:.1f} tokens/s"
    )
    if stats.peak_memory_bytes is not None:
        line += f" · peak memory {stats.peak_memory_bytes / 2**30:.2f} GiB"
    if stats.route:
        line += f" · via {stats.route}"
    return line
