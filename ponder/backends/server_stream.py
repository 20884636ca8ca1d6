"""A server's streamed events decoded into each choice's TextDeltas and Finished, their types checked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ponder.backends.server_errors import ServerErrors, StreamBroken, visible
from ponder.events import BackendStats, Finished, TextDelta, decode_timing

FINISH_REASONS = {"stop": "stop", "eos": "stop", "length": "length", "max_tokens": "length"}


def json_events(events: Iterable, errors: ServerErrors) -> Iterator[dict]:
    """The JSON object of each server-sent event, up to [DONE]. StreamBroken for one that is not an
    object or that reports an error mid-reply; an error as the first event is the server's refusal."""
    began = False
    for event in events:
        data = event.data.strip()
        if data == "[DONE]":
            return
        if not data:
            continue
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):  # (arrays nested beyond Python's recursion limit)
            parsed = None
        if not isinstance(parsed, dict):
            raise StreamBroken(f"the server sent a malformed event: {errors.redact(data[:200])[:80]!r}")
        if parsed.get("error"):  # some servers report failures in the stream, even before it began
            if not began:
                raise errors.refused_in_stream(parsed)
            raise StreamBroken(f"the server reported an error mid-reply: {errors.error_text(parsed)}")
        began = True
        yield parsed


@dataclass
class Choice:
    """One choice of a streamed reply as it arrives."""

    counted: int = 0  # deltas, about one token each
    first: float | None = None
    last: float | None = None
    finish: str | None = None
    parsed: bool = False  # the server separates reasoning: its content is then answer

    def deltas(self, reasoning: str, content: str) -> list[TextDelta]:
        if not (reasoning or content):
            return []
        now = time.perf_counter()
        self.first, self.last = self.first or now, now
        self.counted += 1
        out = []
        if reasoning:
            self.parsed = True
            out.append(TextDelta(reasoning, 1, "reasoning"))
        if content:
            out.append(TextDelta(content, 0 if reasoning else 1, "answer" if self.parsed else None))
        return out


class ChoiceStream:
    """The choices of one request for `n`, fed the server's events one by one: each choice's deltas as
    they come, then how each ended (`ends`). A choice the server finished keeps its end whatever
    happens to the stream after it; only the unfinished ones are interrupted or cancelled."""

    def __init__(self, n: int, route: str):
        self.n, self.route = n, route
        self.started = time.perf_counter()
        self.choices: dict[int, Choice] = {}
        self.usage: dict = {}

    def feed(self, event: dict) -> list[tuple[int, TextDelta]]:
        """The deltas in one event, by choice; StreamBroken for an event whose types are not the API's."""
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.usage = usage  # (odd figures in it are ignored where they are read)
        raw_choices = event.get("choices")
        if raw_choices is None:
            return []
        if not isinstance(raw_choices, list):
            raise StreamBroken(f"the server sent `choices` that are not a list: {_shown(raw_choices)}")
        out = []
        for raw in raw_choices:
            if not isinstance(raw, dict):
                raise StreamBroken(f"the server sent a malformed choice: {_shown(raw)}")
            index = raw.get("index", 0)
            if not _is_count(index) or index >= self.n:
                raise StreamBroken(f"the server sent a choice index {_shown(index)} for a request of {self.n}")
            choice = self.choices.setdefault(index, Choice())
            finish = raw.get("finish_reason")
            if finish is not None and not isinstance(finish, str):
                raise StreamBroken(f"the server sent a finish_reason that is not text: {_shown(finish)}")
            choice.finish = finish or choice.finish
            out += [(index, delta) for delta in choice.deltas(*texts(raw))]
        return out

    def unfinished(self) -> bool:
        """Whether a choice is still waiting for its finish_reason."""
        return any(c.finish is None for c in self.choices.values())

    def ends(self, cancelled: bool = False, error: str | None = None) -> list[tuple[int, Finished]]:
        """Each choice's Finished, in index order: the server's finish reason where it gave one; else
        interrupted with `error` (the stream broke), or cancelled."""
        out = []
        for index, choice in sorted(self.choices.items()) or [(0, Choice())]:
            stats = self.stats(choice)
            if choice.finish in FINISH_REASONS:
                out.append((index, Finished(FINISH_REASONS[choice.finish], stats)))
            elif choice.finish is not None:  # vLLM's and SGLang's "abort", or a reason ponder does not know
                out.append((index, Finished("interrupted", stats, error=f"the server ended the reply: {visible(choice.finish)[:80]}")))
            elif error is not None:
                out.append((index, Finished("interrupted", stats, error=error)))
            elif cancelled:
                out.append((index, Finished("cancelled", stats)))
            else:
                out.append((index, Finished("interrupted", stats, error="the server ended the stream before the reply "
                                                                         "finished")))
        return out

    def stats(self, choice: Choice) -> BackendStats:
        """Figures for one choice: the server's usage where it is this choice's alone, else counted."""
        usage = self.usage
        own = usage if self.n == 1 else {}
        completion = own.get("completion_tokens")
        generated = completion if _is_count(completion) and completion > 0 else choice.counted
        details = own.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        prompt = usage.get("prompt_tokens")
        now = time.perf_counter()
        first_token_s, rate = decode_timing(generated, self.started, choice.first or now, choice.last or now)
        return BackendStats(
            prompt_tokens=prompt if _is_count(prompt) else 0,
            generated_tokens=generated,
            time_to_first_token_s=first_token_s if choice.counted else 0.0,
            decode_tokens_per_s=rate,
            total_s=now - self.started,
            reasoning_tokens=reasoning if _is_count(reasoning) and reasoning > 0 else None,
            route=self.route,
        )


def texts(choice: dict) -> tuple[str, str]:
    """(reasoning, content) of one streamed choice, whichever convention the server follows;
    StreamBroken where a field has a type the API does not give it."""
    if "text" in choice and "delta" not in choice:  # /v1/completions
        return "", _text(choice.get("text"), "text")
    delta = choice.get("delta", choice.get("message"))  # (a server that streams whole messages)
    if delta is None:
        return "", ""
    if not isinstance(delta, dict):
        raise StreamBroken(f"the server sent a delta that is not an object: {_shown(delta)}")
    reasoning = _text(delta.get("reasoning_content"), "reasoning_content") or _text(delta.get("reasoning"), "reasoning")
    return reasoning, _text(delta.get("content"), "content")


def _text(value, name: str) -> str:
    """A text field: a string, null, or (content) a list of text parts, as OpenAI's message content."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise StreamBroken(f"the server sent a `{name}` that is not text: {_shown(value)}")


def _is_count(value) -> bool:
    """Whether `value` can be a count of tokens (an int, not a bool, from 0 to far beyond any context)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 40


def _shown(value) -> str:
    """A value from the server, short, for a message (its repr: control characters escaped)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
