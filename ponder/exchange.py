"""One exchange with a model: render the prompt, stream, separate reasoning from answer.

No terminal I/O here; front ends consume the events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import astuple, replace

from ponder.backends.base import Model, backend_stats
from ponder.constraint import ConstraintBroken
from ponder.errors import BackendError, ContextOverflow
from ponder.events import (
    AnswerDelta,
    BackendEvent,
    BackendStats,
    Continuation,
    Finished,
    GenerationParams,
    Message,
    ReasoningDelta,
    ReasoningDone,
    Reply,
    ReplyEvent,
    SpeculationStats,
    Stats,
    TextDelta,
    decode_timing,
)
from ponder.prompt import render_prompt
from ponder.reasoning import ThinkSplitter, strip_reasoning
from ponder.thinking import STOP, ReasoningGuard
from ponder.threads import model_thread


def model_prompt(model: Model, messages: Sequence[Message]) -> str | list[Message]:
    """What the backend completes: the prompt text in the model's template, or, for a server that
    renders the template itself, the messages with earlier reasoning stripped."""
    if model.info.renders_prompt:
        return render_prompt(model.info.chat, messages)
    return [Message(m.role, strip_reasoning(m.content)) if m.role == "assistant" else m for m in messages]


def generate_reply(model: Model, messages: Sequence[Message], params: GenerationParams,
                   answer_now: threading.Event | None = None) -> Iterator[ReplyEvent]:
    """Stream a reply to `messages`: reasoning and answer deltas, then one Reply. The reasoning ends
    early at `params.think_budget`, when `answer_now` is set, or when it loops (see ponder.thinking)."""
    guarded = GuardedReply(model, model_prompt(model, messages), params, answer_now)
    splitter = ReplySplitter(model.info.chat.reasoning, guarded.started, guard=guarded.guard)
    events = _run(model, guarded)
    with closing(events):  # closed with this generator, not whenever it is collected: the model stops here
        for event in events:
            for out in splitter.feed(event):
                yield checked(out, params, model) if isinstance(out, Reply) else out


def checked(reply: Reply, params: GenerationParams, model: Model | None = None) -> Reply:
    """A constrained reply with its answer's value (`parsed`), checked against the constraint; a reply
    cut off before its answer was complete stays without one. A mismatch from a server may be the server's
    (its grammar may skip a keyword ponder's keeps): the error says so."""
    if params.constraint is None or reply.finish_reason != "stop" or reply.error or not reply.answer.strip():
        return reply  # (no answer at all, the model ending while it reasoned: the front end's "no answer")
    try:
        return replace(reply, parsed=params.constraint.check(reply.answer))
    except ConstraintBroken as exc:
        if getattr(model, "route", None) is None:  # a local model: ponder's own grammar let it through
            raise
        raise ConstraintBroken(exc.message, hint="the server may not enforce every keyword of the schema") from None


def _run(model: Model, guarded: GuardedReply) -> Iterator:
    """The backend events of a guarded reply, from one model stream after another on the model's thread."""
    thread = model_thread(model)
    yield from guarded.start()
    while not guarded.done:
        request = guarded.request
        # Closed explicitly when this generator is: its wait for the model to stop may raise a held Ctrl-C.
        stream = thread.iterate(lambda cancel: model.stream(*request, cancel))
        try:
            with closing(stream):
                for event in stream:
                    yield from guarded.feed(event)
                    if guarded.done or guarded.request is not request:
                        break
        except ContextOverflow:
            if not guarded.cut_after_reasoning:  # the prompt itself does not fit: that is the error
                raise
            yield from guarded.overflow()
        if not guarded.done:  # stopped for the continuation: the guesses it checked count in the reply's figures
            guarded.speculated(getattr(model, "speculation", None))


class GuardedReply:
    """One reply's requests to the model, kept in bounds by a ReasoningGuard: feed it the model's events;
    it hands back those to pass on. When the guard ends the reasoning it asks for a new request (`request`
    changes: stop the current stream and start this one): the prompt, the tokens generated so far, then
    the closing text (a Continuation: the cache already holds every token before the cut)."""

    def __init__(self, model: Model, prompt, params: GenerationParams, answer_now: threading.Event | None = None):
        if params.think_budget is not None and model.info.chat.reasoning and model.info.reasoning_end is None:
            raise BackendError(f"{model.info.backend} is asked through its chat endpoint, where ponder cannot end"
                               " the reasoning for the model",
                               hint="drop --think-budget (and --no-think) for this server")
        # A server that bounds the reasoning itself gets the budget in its request; the guard then leaves it be.
        ours = isinstance(prompt, str)  # (a continuation is prompt text: the model's reasoning_end is "ponder")
        watched = params if ours else replace(params, think_budget=None)
        self.guard = ReasoningGuard(watched, model.info.chat.reasoning, answer_now if ours else None)
        self.model, self.prompt, self.params = model, prompt, params
        self.started = time.perf_counter()
        self.request: tuple = (prompt, params)  # the (prompt, params) to stream now
        self.done = False
        self._taken = _Taken(self.started)
        self.continued = False  # the request is the continuation after a cut

    def start(self) -> list[BackendEvent]:
        """What comes before the first request's events: the closing text already, where thinking is off."""
        return self._cut() if self.guard.cut is not None else []

    def feed(self, event: BackendEvent) -> list[BackendEvent]:
        if isinstance(event, Finished):
            self.done = True
            if self.continued:
                event = replace(event, stats=self._taken.merged(self.model, self.prompt, event.stats))
            return [event]
        decision = self.guard.before(event)
        if decision is None or (self.continued and decision != STOP):
            self._taken.add(event)
            return [event]
        if decision == STOP or not isinstance(self.prompt, str):  # (a chat endpoint cannot be continued: stop)
            return self._end("loop")
        return self._cut()

    def speculated(self, speculation) -> None:
        """The Speculation of the stream just stopped for the continuation (None: none)."""
        if speculation is not None:
            self._taken.speculation = speculation.stats()

    @property
    def cut_after_reasoning(self) -> bool:
        """Whether the request is a continuation after some reasoning. If that does not fit, the reasoning
        filled the context (see overflow); the first request, or the closing text right after the prompt
        (no thinking), does not fit because the prompt is too long for the context: a ContextOverflow."""
        return self.continued and bool(self._taken.before_cut)

    def overflow(self) -> list[BackendEvent]:
        """The continuation after some reasoning did not fit: no room left for the closing text, so the
        reply ends there, as "length"."""
        return self._end("length")

    def _end(self, reason) -> list[BackendEvent]:
        self.done = True
        return [Finished(reason, self._taken.stats(self.model, self.prompt))]

    def _cut(self) -> list[BackendEvent]:
        forced = self.guard.cut.forced
        taken = self._taken
        rest = replace(self.params, max_tokens=max(self.params.max_tokens - taken.generated, 1))
        self.request = (Continuation(self.prompt, tuple(taken.ids), "".join(taken.texts), forced), rest)
        self.continued = True
        taken.cut()
        return [TextDelta(forced, tokens=0)]


class _Taken:
    """What the model generated (before the cut, and after it), and when, for the reply's figures."""

    def __init__(self, started: float):
        self.started, self.ids, self.texts, self.generated = started, [], [], 0
        self.first = self.last = None
        self.before_cut: int | None = None  # tokens generated before the cut
        self.speculation: SpeculationStats | None = None  # what speculation did before the cut

    def add(self, event: TextDelta) -> None:
        now = time.perf_counter()
        self.first, self.last = self.first or now, now
        self.generated += event.tokens
        if self.before_cut is None:
            self.ids.extend(event.ids)
            self.texts.append(event.text)

    def cut(self) -> None:
        self.before_cut = self.generated

    def stats(self, model: Model, prompt) -> BackendStats:
        """Figures of a reply that ended here, without a Finished from the backend."""
        now = time.perf_counter()
        stats = backend_stats(_prompt_length(model, prompt), self.generated, self.started, self.first or now,
                              self.last or now, now)
        return replace(stats, route=getattr(model, "route", None))

    def merged(self, model: Model, prompt, after: BackendStats) -> BackendStats:
        """The figures of the whole reply: before the cut, and the continuation's."""
        before = self.before_cut or 0
        generated = before + after.generated_tokens
        now = time.perf_counter()
        first = self.first or (now - after.total_s + after.time_to_first_token_s)
        first_token_s, rate = decode_timing(generated, self.started, first, now)
        prompt_tokens = _prompt_length(model, prompt) or max(after.prompt_tokens - before, 0)  # (a server: about)
        speculation = after.speculation
        if self.speculation is not None and speculation is not None:
            speculation = SpeculationStats(*(a + b for a, b in zip(astuple(self.speculation), astuple(speculation))))
        return replace(after, prompt_tokens=prompt_tokens, generated_tokens=generated, speculation=speculation,
                       time_to_first_token_s=first_token_s, reasoning_tokens=None, decode_tokens_per_s=rate,
                       prefilled_tokens=None,  # (the continuation's are the closing text's: not the prompt's)
                       total_s=now - self.started)


def _prompt_length(model: Model, prompt) -> int:
    try:
        return len(model.tokenize(prompt))
    except BackendError:  # a server that does not tokenize
        return 0


def split_reply(stream: Iterator, starts_in_reasoning: bool, started: float,
                clock: Callable[[], float] = time.perf_counter) -> Iterator[ReplyEvent]:
    """Backend events to reply events (see ReplySplitter)."""
    splitter = ReplySplitter(starts_in_reasoning, started, clock)
    for event in stream:
        yield from splitter.feed(event)


class ReplySplitter:
    """Backend events to reply events: raw text through the `<think>` splitter, text a server already
    filed under reasoning or answer as it says. `clock` tells when the current event came; `guard` is
    told where the reply stands after each, and why the reasoning ended early."""

    def __init__(self, starts_in_reasoning: bool, started: float, clock: Callable[[], float] = time.perf_counter,
                 guard: ReasoningGuard | None = None):
        self.started, self.clock, self.guard = started, clock, guard
        self.splitter = ThinkSplitter(starts_in_reasoning=starts_in_reasoning)
        self.parts: dict[str, list[str]] = {"reasoning": [], "answer": []}
        self.counted = {"reasoning": 0, "answer": 0}
        self.reasoning = starts_in_reasoning  # whether the reply is still in its reasoning
        self.thinking_s: float | None = None

    def feed(self, event: BackendEvent) -> list[ReplyEvent]:
        if isinstance(event, TextDelta):
            return self._text(event)
        return self._finish(event)

    def _text(self, event: TextDelta) -> list[ReplyEvent]:
        out: list[ReplyEvent] = []
        counted, parts, splitter = self.counted, self.parts, self.splitter
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
            if kind == "answer" and self.reasoning:  # the reasoning ends where the answer begins
                self.reasoning = False
                if counted["reasoning"]:
                    out.append(self._reasoning_done())
            parts[kind].append(text)
            out.append(ReasoningDelta(text, counted["reasoning"]) if kind == "reasoning" else AnswerDelta(text))
        if self.reasoning and not now_reasoning and counted["reasoning"]:  # closed, no answer text yet
            out.append(self._reasoning_done())
        self.reasoning = now_reasoning
        if self.guard is not None:
            self.guard.observe(self.reasoning, counted["reasoning"])
        return out

    def _reasoning_done(self) -> ReasoningDone:
        self.thinking_s = self.clock() - self.started
        return ReasoningDone(self.thinking_s, self.counted["reasoning"])

    def _finish(self, event: Finished) -> list[ReplyEvent]:
        out: list[ReplyEvent] = []
        for kind, text in self.splitter.flush():
            self.parts[kind].append(text)
            out.append(ReasoningDelta(text, self.counted["reasoning"]) if kind == "reasoning" else AnswerDelta(text))
        guard = self.guard
        cut = guard.cut.reason if guard is not None and guard.cut is not None else None
        if self.reasoning:  # cut off while thinking
            self.thinking_s = self.clock() - self.started
            end = {"length": "length", "stop": "model", "loop": "loop"}.get(event.finish_reason, "cancelled")
        else:
            end = cut or ("model" if self.counted["reasoning"] or self.parts["reasoning"] else None)
        out.append(Reply(
            reasoning="".join(self.parts["reasoning"]),
            answer="".join(self.parts["answer"]),
            finish_reason=event.finish_reason,
            stats=_stats(event.stats, self.counted, self.thinking_s, end),
            error=event.error,
        ))
        return out


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
        prefilled_tokens=backend.prefilled_tokens,
        speculation=backend.speculation,
    )


def _backend_error(reply: Reply) -> Exception:
    return BackendError(reply.error)


def collect_reply(events: Iterator[ReplyEvent], broken: Callable[[Reply], Exception] = _backend_error) -> Reply:
    """Run a reply to its end without showing it; a reply the backend broke off raises `broken(reply)`."""
    reply = None
    for event in events:
        if isinstance(event, Reply):
            reply = event
    assert reply is not None  # every stream ends with a Reply
    return unbroken(reply, broken)


def unbroken(reply: Reply, broken: Callable[[Reply], Exception] = _backend_error) -> Reply:
    """The reply, unless the backend broke it off: then `broken(reply)` (a BackendError) is raised."""
    if reply.error:
        raise broken(reply)
    return reply
