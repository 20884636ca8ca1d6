"""Driving one reply through a renderer: Ctrl-C, a closed pipe and the closing lines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import typer

from ponder.cli.views.render import Renderer
from ponder.cli.views.terminal import Terminal
from ponder.events import AnswerDelta, ReasoningDelta, ReasoningDone, Reply, ReplyEvent, SpeculationStats, Stats

EXIT_BROKEN_PIPE = 141
EXIT_NO_ANSWER = 3  # the reply ended without an answer (ask; chat with piped input)


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


@contextmanager
def exit_on_closed_stdout(term) -> Iterator[None]:
    """A reader that closed stdout early (`| head -1`) ends the command quietly with 141, as while streaming."""
    try:
        yield
    except BrokenPipeError:
        term.silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None


def _stop(events, renderer: Renderer) -> None:
    try:
        events.close()  # cancels the generation and waits for the model to be idle
    finally:  # even when a second Ctrl-C came meanwhile: the live view must stop, echo come back
        try:
            renderer.finish(None)
        except (OSError, KeyboardInterrupt):  # (a closed or full stream) the reason for stopping is what counts
            pass


def report(reply: Reply | None, stats: bool, err: TextIO) -> None:
    """The closing lines on `err` (stderr): a cut-off warning, why there is no answer, and figures
    when asked for."""
    if reply is None:
        return
    if reply.finish_reason == "length":
        print(
            f"ponder: warning: stopped after {reply.stats.reasoning_tokens + reply.stats.answer_tokens} tokens "
            "(the --max-tokens budget or the context is used up)",
            file=err,
        )
    if reply.stats.reasoning_end == "loop" and reply.finish_reason != "loop":
        print("ponder: warning: the reasoning repeated itself; ponder ended it, and the model answered", file=err)
    if reply.finish_reason == "loop":
        print("ponder: warning: the reply repeated itself; ponder stopped it (--on-loop)", file=err)
    if not reply.answer.strip() and reply.finish_reason != "interrupted":  # (interrupted: the error says why)
        print(f"ponder: no answer: {no_answer_reason(reply)}", file=err)
    if stats:
        print(format_stats(reply.stats), file=err)


def no_answer_reason(reply: Reply) -> str:
    if reply.finish_reason == "length":
        return "the token budget ran out " + ("while the model was still thinking" if reply.stats.reasoning_end ==
                                                "length" else "before it answered")
    if reply.finish_reason == "cancelled":
        return "stopped before the model answered"
    if reply.finish_reason == "loop":
        return "the reasoning repeated itself and --on-loop stop ended the reply"
    if reply.stats.reasoning_end == "model" and reply.reasoning:
        return "the model wrote nothing after its reasoning"
    return "the model wrote nothing"


def _cached(stats: Stats) -> str:
    """How many prompt tokens came from a cache (the model's memory or the prompt cache on disk)."""
    if stats.prefilled_tokens is None or stats.prefilled_tokens >= stats.prompt_tokens:
        return ""
    return f" ({stats.prompt_tokens - stats.prefilled_tokens} cached)"


def format_stats(stats: Stats) -> str:
    line = (
        f"prompt {stats.prompt_tokens} tokens{_cached(stats)} · reasoning {stats.reasoning_tokens} tokens · "
        f"answer {stats.answer_tokens} tokens · first token {stats.time_to_first_token_s:.2f} s · "
        f"decode {stats.decode_tokens_per_s:.1f} tokens/s"
    )
    if stats.peak_memory_bytes is not None:
        line += f" · peak memory {stats.peak_memory_bytes / 2**30:.2f} GiB"
    if stats.reasoning_end:
        line += f" · reasoning end: {stats.reasoning_end}"
    if stats.route:
        line += f" · via {stats.route}"
    if stats.speculation is not None:
        line += f" · {_speculation(stats.speculation)}"
    return line


def _speculation(spec: SpeculationStats) -> str:
    """What speculative decoding did: guesses kept, and tokens per model call (1 without speculation)."""
    if not spec.drafted:
        return "speculation: nothing drafted"
    per_call = f", {(spec.calls + spec.accepted) / spec.calls:.2f} tokens per model call" if spec.calls else ""
    return (f"speculation: {spec.accepted} of {spec.drafted} drafted tokens accepted "
            f"({spec.accepted / spec.drafted:.0%}){per_call}")
