"""Requests adapted to a server's refusals, and a prompt its context cannot hold told apart (ContextOverflow).

Optional fields the server refuses are dropped or renamed for good; a max_tokens beyond its context is
cut to the room left, for that request."""

from __future__ import annotations

import re
import threading

from ponder.backends.server_errors import ServerRefused
from ponder.errors import ContextOverflow

REFUSES = ("not supported", "unsupported", "unknown", "unrecognized", "not permitted", "extra inputs", "instead")
# Error types and codes servers give a prompt beyond the context: llama-server's, OpenAI's (and vLLM's).
OVERFLOW_TYPES = ("exceed_context_size_error", "context_length_exceeded")
# What their messages say (vLLM, SGLang, llama-server, LM Studio, TGI, OpenAI).
OVERFLOW_WORDS = re.compile(r"(?i)maximum context length|context (?:length|size|window)|context the overflows"
                            r"|prompt is too long|too many tokens|must be <= \d+")


class Adaptations:
    """The request fields this server wants otherwise, learnt from its refusals (shared by its lanes)."""

    def __init__(self) -> None:
        self._changes: dict = {}
        self._lock = threading.Lock()

    def apply(self, body: dict) -> dict:
        """`body` as this server wants it."""
        body = dict(body)
        with self._lock:
            changes = dict(self._changes)
        for name, value in changes.items():
            if value is None:
                body.pop(name, None)
            elif name == "max_completion_tokens" and "max_tokens" in body:
                body["max_completion_tokens"] = body.pop("max_tokens")
        return body

    def retry(self, refused: ServerRefused, body: dict) -> dict:
        """The body to send again after `refused`: max_tokens cut to the room left (this request), or a
        field the server refuses changed (for good). Raises ContextOverflow where the prompt itself
        does not fit, and `refused` itself where nothing can be changed."""
        room = room_left(refused.said)
        if room is not None and 0 < room < max_tokens(body):
            return {**body, ("max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"): room}
        change = adaptation(refused, body)
        if change is None:
            raise self.explained(refused) from None
        with self._lock:
            self._changes.update(change)
        return self.apply(body)

    @staticmethod
    def explained(refused: ServerRefused) -> ServerRefused | ContextOverflow:
        """The error to raise for a refusal no change meets: ContextOverflow for a prompt too long."""
        return context_overflow(refused) or refused


def adaptation(refused: ServerRefused, body: dict) -> dict | None:
    """A change to the request that meets a 400/422 refusing one of its optional fields."""
    if refused.status not in (400, 422):
        return None
    said = refused.said.lower()
    if not any(word in said for word in REFUSES):
        return None
    if "stream_options" in said and "stream_options" in body:
        return {"stream_options": None}
    if "max_tokens" in said and "max_completion_tokens" in said and "max_tokens" in body:
        return {"max_completion_tokens": True}  # OpenAI's newer name
    if "seed" in said and "seed" in body:
        return {"seed": None}
    return None


def room_left(said: str) -> int | None:
    """The tokens a request may still generate, from vLLM's and SGLang's refusal of a max_tokens beyond the
    context ("This model's maximum context length is 32768 tokens and your request has 20 input tokens")."""
    context = re.search(r"maximum context length is (\d+)", said)
    used = re.search(r"(\d+) input tokens|has (\d+) tokens? in the (?:messages|prompt)", said)
    if not (context and used):
        return None
    return int(context.group(1)) - int(used.group(1) or used.group(2))


def max_tokens(body: dict) -> int:
    return int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)


def context_overflow(refused: ServerRefused) -> ContextOverflow | None:
    """ContextOverflow if `refused` says the prompt does not fit the server's context, else None."""
    error = refused.payload.get("error") if isinstance(refused.payload, dict) else None
    error = error if isinstance(error, dict) else {}
    kind = {str(error.get("type", "")), str(error.get("code", ""))}
    if not (kind & set(OVERFLOW_TYPES) or (refused.status in (0, 400, 413, 422) and OVERFLOW_WORDS.search(refused.said))):
        return None
    prompt, context = error.get("n_prompt_tokens"), error.get("n_ctx")  # llama-server
    if not (isinstance(prompt, int) and isinstance(context, int)):
        prompt, context = _figures(refused.said)
    hint = "shorten the input, or give the server a larger context"
    if prompt and context:
        return ContextOverflow(f"the prompt is {prompt} tokens, but the server's context holds {context}", hint=hint)
    return ContextOverflow(f"the prompt does not fit the server's context: {refused.said}", hint=hint)


def _figures(said: str) -> tuple[int | None, int | None]:
    """(prompt tokens, context) where the message names both (vLLM, SGLang, OpenAI)."""
    context = re.search(r"maximum context length (?:is|of) (\d+)|context length \((\d+) tokens\)", said)
    prompt = re.search(r"(\d+) input tokens|input \((\d+) tokens\)|resulted in (\d+) tokens|\((\d+) in the messages"
                       r"|(\d+) tokens from the input", said)
    if not (context and prompt):
        return None, None
    return next(int(g) for g in prompt.groups() if g), next(int(g) for g in context.groups() if g)
