"""One exchange with a model: render the prompt, stream, separate reasoning from answer.

No terminal I/O here; front ends consume the events.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import closing

from ponder.backends.base import Model
from ponder.events import (
    AnswerDelta,
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
from ponder.reasoning import ThinkSplitter
from ponder.threads import model_thread


def generate_reply(model: Model, messages: Sequence[Message], params: GenerationParams) -> Iterator[ReplyEvent]:
    """Stream a reply to `messages`: reasoning and answer deltas, then one Reply."""
    prompt = render_prompt(model.info.chat, messages)
    started = time.perf_counter()
    splitter = ThinkSplitter(starts_in_reasoning=model.info.chat.reasoning)
    parts = {"reasoning": [], "answer": []}
    reasoning_tokens = answer_tokens = 0
    thinking_s: float | None = None

    def deltas(segments):
        for kind, text in segments:
            parts[kind].append(text)
            yield ReasoningDelta(text, reasoning_tokens) if kind == "reasoning" else AnswerDelta(text)

    # Closed explicitly when this generator is: its wait for the model to stop may raise a held Ctrl-C.
    stream = model_thread(model).iterate(lambda cancel: model.stream(prompt, params, cancel))
    with closing(stream):
        for event in stream:
            if isinstance(event, TextDelta):
                was_reasoning = splitter.in_reasoning
                if was_reasoning:
                    reasoning_tokens += event.tokens
                else:
                    answer_tokens += event.tokens
                yield from deltas(splitter.feed(event.text))
                if was_reasoning and not splitter.in_reasoning:
                    thinking_s = time.perf_counter() - started
                    yield ReasoningDone(thinking_s, reasoning_tokens)
            elif isinstance(event, Finished):
                yield from deltas(splitter.flush())
                if splitter.in_reasoning:  # cut off while thinking
                    thinking_s = time.perf_counter() - started
                backend = event.stats
                yield Reply(
                    reasoning="".join(parts["reasoning"]),
                    answer="".join(parts["answer"]),
                    finish_reason=event.finish_reason,
                    stats=Stats(
                        prompt_tokens=backend.prompt_tokens,
                        reasoning_tokens=reasoning_tokens,
                        answer_tokens=answer_tokens,
                        time_to_first_token_s=backend.time_to_first_token_s,
                        decode_tokens_per_s=backend.decode_tokens_per_s,
                        thinking_s=thinking_s or 0.0,
                        total_s=backend.total_s,
                        peak_memory_bytes=backend.peak_memory_bytes,
                    ),
                )


def collect_reply(events: Iterator[ReplyEvent]) -> Reply:
    """Run a reply to its end without showing it."""
    reply = None
    for event in events:
        if isinstance(event, Reply):
            reply = event
    assert reply is not None  # every stream ends with a Reply
    return reply
