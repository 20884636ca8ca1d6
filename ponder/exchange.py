"""One exchange with a model: render the prompt, stream, separate reasoning from answer.

No terminal I/O here; front ends consume the events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing

from ponder.backends.base import Model
from ponder.errors import BackendError
from ponder.events import (
    AnswerDelta,
    BackendStats,
    Finished,
    GenerationParams,
    Message,
    ReasoningDelta,
    ReasoningDone,
    Reply,
    ReplyEvent,
    Stats,
    TextDelta,
)
from ponder.prompt import render_prompt
from ponder.reasoning import ThinkSplitter, strip_reasoning
from ponder.threads import model_thread


def model_prompt(model: Model, messages: Sequence[Message]) -> str | list[Message]:
    """What the backend completes: the prompt text in the model's template, or, for a server that
    renders the template itself, the messages with earlier reasoning stripped."""
    if model.info.renders_prompt:
        return render_prompt(model.info.chat, messages)
    return [Message(m.role, strip_reasoning(m.content)) if m.role == "assistant" else m for m in messages]


def generate_reply(model: Model, messages: Sequence[Message], params: GenerationParams) -> Iterator[ReplyEvent]:
    """Stream a reply to `messages`: reasoning and answer deltas, then one Reply."""
    prompt = model_prompt(model, messages)
    # Closed explicitly when this generator is: its wait for the model to stop may raise a held Ctrl-C.
    stream = model_thread(model).iterate(lambda cancel: model.stream(prompt, params, cancel))
    with closing(stream):
        yield from split_reply(stream, model.info.chat.reasoning, time.perf_counter())


def split_reply(stream: Iterator, starts_in_reasoning: bool, started: float,
                clock: Callable[[], float] = time.perf_counter) -> Iterator[ReplyEvent]:
    """Backend events to reply events: raw text through the `<think>` splitter, text a server
    already filed under reasoning or answer as it says. `clock` tells when the current event came."""
    splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
    parts = {"reasoning": [], "answer": []}
    counted = {"reasoning": 0, "answer": 0}
    reasoning = starts_in_reasoning  # whether the reply is still in its reasoning
    thinking_s: float | None = None

    for event in stream:
        if isinstance(event, TextDelta):
            if event.part is None:
                counted["reasoning" if splitter.in_reasoning else "answer"] += event.tokens
                segments = splitter.feed(event.text)
                now_reasoning = splitter.in_reasoning
            else:
                counted[event.part] += event.tokens
                text = event.text.lstrip() if event.part == "reasoning" and not parts["reasoning"] else event.text
                segments = [(event.part, text)] if text else []  # reasoning's leading blank dropped, as raw
                now_reasoning = event.part == "reasoning"
                if not now_reasoning:
                    splitter.answer_from_here()  # raw text after a server's answer text is answer too
            for kind, text in segments:
                if kind == "answer" and reasoning:  # the reasoning ends where the answer begins
                    reasoning = False
                    if counted["reasoning"]:
                        thinking_s = clock() - started
                        yield ReasoningDone(thinking_s, counted["reasoning"])
                parts[kind].append(text)
                yield ReasoningDelta(text, counted["reasoning"]) if kind == "reasoning" else AnswerDelta(text)
            if reasoning and not now_reasoning and counted["reasoning"]:  # closed, no answer text yet
                thinking_s = clock() - started
                yield ReasoningDone(thinking_s, counted["reasoning"])
            reasoning = now_reasoning
        elif isinstance(event, Finished):
            for kind, text in splitter.flush():
                parts[kind].append(text)
                yield ReasoningDelta(text, counted["reasoning"]) if kind == "reasoning" else AnswerDelta(text)
            if reasoning:  # cut off while thinking
                thinking_s = clock() - started
                end = "length" if event.finish_reason == "length" else \
                    "model" if event.finish_reason == "stop" else "cancelled"
            else:
                end = "model" if counted["reasoning"] or parts["reasoning"] else None
            yield Reply(
                reasoning="".join(parts["reasoning"]),
                answer="".join(parts["answer"]),
                finish_reason=event.finish_reason,
                stats=_stats(event.stats, counted, thinking_s, end),
                error=event.error,
            )


def _stats(backend: BackendStats, counted: dict, thinking_s: float | None, reasoning_end: str | None) -> Stats:
    """Token counts as counted, unless the backend knows them (a server's usage figures)."""
    reasoning_tokens, answer_tokens = counted["reasoning"], counted["answer"]
    if backend.reasoning_tokens is not None:
        reasoning_tokens = backend.reasoning_tokens
        answer_tokens = max(backend.generated_tokens - reasoning_tokens, 0)
    elif backend.generated_tokens and backend.generated_tokens != reasoning_tokens + answer_tokens:
        answer_tokens = max(backend.generated_tokens - reasoning_tokens, 0)  # chunks of several tokens
    return Stats(
        prompt_tokens=backend.prompt_tokens,
        reasoning_tokens=reasoning_tokens,
        answer_tokens=answer_tokens,
        time_to_first_token_s=backend.time_to_first_token_s,
        decode_tokens_per_s=backend.decode_tokens_per_s,
        thinking_s=thinking_s or 0.0,
        total_s=backend.total_s,
        peak_memory_bytes=backend.peak_memory_bytes,
        route=backend.route,
        reasoning_end=reasoning_end,
    )


def collect_reply(events: Iterator[ReplyEvent]) -> Reply:
    """Run a reply to its end without showing it; a reply the backend broke off is an error here."""
    reply = None
    for event in events:
        if isinstance(event, Reply):
            reply = event
    assert reply is not None  # every stream ends with a Reply
    if reply.error:
        raise BackendError(reply.error)
    return reply
