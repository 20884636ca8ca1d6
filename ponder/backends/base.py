"""The backend protocol: load a model, then complete prompt text as a stream of events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ponder.errors import ContextOverflow, UsageError
from ponder.events import (BackendEvent, BackendStats, Continuation, Finished, FinishReason, GenerationParams, Message,
                           decode_timing)
from ponder.prompt import ChatFormat


@dataclass(frozen=True)
class LoadOptions:
    context: int | None = None  # tokens; None: the default, capped by what the model was trained on
    threads: int | None = None  # None: the backend's choice (physical cores)
    gpu_layers: int | None = None  # None: all of them where the backend can offload
    flash_attention: bool = True
    # Sequences decoded together (parallel samples): each gets a context of its own of `context` tokens.
    sequences: int = 1
    # Keep prompt states on disk (ponder.prompt_cache) within this many bytes in all; None: no prompt cache.
    prompt_cache_bytes: int | None = None
    # A smaller model with the same vocabulary whose guesses speculative decoding checks (--draft): its path.
    draft: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    backend: str
    # The most tokens one call takes, prompt and generation together, as `stream` enforces it:
    # a prompt of `context` tokens is refused, and generation stops when the two reach it.
    # llama.cpp rounds the request up (to a multiple of 256) and this is what it allocated;
    # MLX's cache grows as needed, so there it is the request itself.
    context: int
    trained_context: int
    chat: ChatFormat
    # LoadOptions fields the user set that this backend cannot honour, e.g. ("threads",) on MLX.
    # Backends never print, so the front end tells the user.
    ignored: tuple[str, ...] = ()
    # False for a server that applies the chat template itself: `stream` then takes the messages
    # (reasoning already stripped) instead of prompt text.
    renders_prompt: bool = True
    # A server that bounds a --think-budget itself (vLLM's thinking_token_budget on its chat route).
    native_budget: bool = False
    # How many sequences `Model.batch()` decodes together (LoadOptions.sequences); 1 where it cannot.
    sequences: int = 1

    @property
    def reasoning_end(self) -> str | None:
        """Who can end this model's reasoning early: "ponder" (the closing text fed after the tokens the
        model generated, which needs a prompt ponder renders: budgets, answer now, loop rescue), "server"
        (only a budget, in the request), or None (it does not reason, or nothing can end it)."""
        if not self.chat.reasoning:
            return None
        if self.renders_prompt:
            return "ponder"
        return "server" if self.native_budget else None


@dataclass(frozen=True)
class BackendProbe:
    """Whether a backend can run here, for `ponder backends`."""

    usable: bool
    version: str = ""
    acceleration: str = ""  # "Metal", "CUDA", "none (CPU only)"…
    reason: str = ""  # why not usable


class Model(Protocol):
    """A loaded model. Hashable and weakly referable, as plain objects are: ponder runs each
    model's generations on a thread of its own, found by the model. A local model loaded with
    `LoadOptions.sequences` > 1 also has `batch() -> BatchDecoder`."""

    info: ModelInfo

    def tokenize(self, text: str) -> list[int]:
        """Token ids of prompt text (special tokens parsed, no BOS added twice)."""

    def stream(
        self, prompt: str | list[Message] | Continuation, params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[BackendEvent]:
        """Complete `prompt`: TextDelta events, then exactly one Finished. `prompt` is text in the
        model's template (or a Continuation of it), or messages where `info.renders_prompt` is False.

        Checks `cancel` between tokens (and between prompt chunks) and then finishes
        with reason "cancelled". Raises ContextOverflow if the prompt does not fit (see
        ModelInfo.context), and BackendError, one line, if the engine fails.
        """

    def close(self) -> None: ...


class BatchDecoder(Protocol):
    """Several sequences of one model decoded together: each `step` is one model call that gives every
    live sequence its next token, so the weights are read once for all of them. A local model with
    `info.sequences` > 1 offers one through `Model.batch()`. Used only on the model's own thread.

    A sequence lives in a slot (one of `slots`), known by the handle `add` returns; a slot's cache
    outlives its sequence, so a later prompt that begins with what a slot holds (another sample of the
    same prompt, or a continuation of the sequence itself) only processes the rest."""

    slots: int

    def free_slots(self) -> int: ...

    def add(self, prompt: str | Continuation, params: GenerationParams, cancel: threading.Event) -> int | None:
        """Start a sequence in a free slot and return its handle, or None if `cancel` was set while its prompt
        was processed. Raises ContextOverflow if the prompt does not fit the sequence's context."""

    def step(self) -> list[tuple[int, BackendEvent]]:
        """One decode: for each live sequence its next token (a TextDelta), and a Finished where it ended
        (end of generation, max tokens, its context full); an ended sequence's slot is free again."""

    def drop(self, slot: int, reason: FinishReason) -> Finished:
        """End a live sequence now (its slot is free again); its Finished."""

    def close(self) -> None:
        """Free what the decoder holds beside the model (live sequences end unreported)."""


class Backend(Protocol):
    name: str

    def load(self, path: str, options: LoadOptions) -> Model: ...

    @staticmethod
    def probe() -> BackendProbe: ...


# --- helpers every local backend shares ------------------------------------------


def generation_budget(prompt_tokens: int, context: int, max_tokens: int) -> int:
    """How many tokens may be generated after the prompt; refuses a prompt of no tokens (there is nothing
    to take the next token's logits from) and one that leaves no room in `context` (ModelInfo.context)
    for one generated token."""
    if not prompt_tokens:
        raise UsageError("the prompt is empty: the model needs at least one token to go on from")
    if max_tokens < 1:
        raise UsageError(f"max_tokens must be at least 1 (it is {max_tokens})")
    if prompt_tokens >= context:
        raise ContextOverflow(
            f"the prompt is {prompt_tokens} tokens, but the context holds {context}",
            hint="shorten the input or raise --ctx",
        )
    return min(max_tokens, context - prompt_tokens)


def shared_prefix(cached: list[int], tokens: list[int]) -> int:
    """How many leading tokens of `tokens` the cache already holds, leaving at least one to
    feed (the model must process a token to give fresh logits)."""
    keep, limit = 0, min(len(cached), len(tokens) - 1)
    while keep < limit and cached[keep] == tokens[keep]:
        keep += 1
    return keep


def placement(reach: list[int], held: list[int], free: list[int]) -> tuple[int, int]:
    """Where a BatchDecoder starts a new sequence, from how many tokens of its prompt each slot's cache can
    give (`reach`) and how many it holds (`held`): (the slot it takes, the slot whose cache it starts from).
    A slot's cache outlives its sequence (a cut sample's continuation comes back for it), so only the slot
    taken loses anything: the free slot that gives the most (of equals, the one holding the least, then
    the lowest), cut past what it gives; or, where a live slot gives more, a copy of that one goes over
    the free slot holding the least."""
    best = min(free, key=lambda s: (-reach[s], held[s], s))
    source = max(range(len(reach)), key=lambda s: reach[s])
    if reach[source] <= reach[best]:
        return best, best
    return min(free, key=lambda s: (held[s], s)), source


def prompt_tokens(prompt: str | Continuation, tokenize: Callable[[str], list[int]],
                  tokenize_plain: Callable[[str], list[int]], vocabulary: int) -> list[int]:
    """The token ids of a prompt: its text's, or for a Continuation the prompt's, then the generated ids
    as they were, then the forced text's (without a BOS). Refuses generated ids outside the model's
    `vocabulary` (ids 0 to vocabulary - 1): an engine would read past its embeddings (MLX crashes)."""
    if isinstance(prompt, Continuation):
        ids = list(prompt.ids)
        if ids and (min(ids) < 0 or max(ids) >= vocabulary):
            raise UsageError("the continuation holds token ids this model does not have"
                             f" (it has 0 to {vocabulary - 1})")
        return tokenize(prompt.prompt) + ids + tokenize_plain(prompt.forced)
    return tokenize(prompt)


def backend_stats(prompt_tokens: int, generated: int, started: float, first: float, last: float, now: float,
                  peak_memory_bytes: int | None = None, prefilled: int | None = None) -> BackendStats:
    """Figures from timestamps: the first and last generated tokens, after starting at `started`."""
    first_token_s, rate = decode_timing(generated, started, first, last)
    return BackendStats(
        prompt_tokens=prompt_tokens,
        generated_tokens=generated,
        time_to_first_token_s=first_token_s,
        decode_tokens_per_s=rate,
        total_s=now - started,
        peak_memory_bytes=peak_memory_bytes,
        prefilled_tokens=prefilled,
    )


@dataclass(kw_only=True)
class BatchedSequence:
    """What every BatchDecoder keeps of a live sequence: its next token, its budget, and the counts and
    times its Finished reports."""

    sampler: object
    pending: int  # the token to feed in the next step (the prompt's last, then each sampled one)
    budget: int  # tokens it may generate
    prompt_tokens: int
    prefilled: int
    started: float
    mask: object = None  # its AnswerMask (ponder.grammar), where params.constraint constrains its answer
    generated: int = 0
    first: float = 0.0
    last: float = 0.0

    def stepped(self, now: float) -> None:
        """A step gave it a token (at `now`)."""
        self.last = now
        if not self.generated:
            self.first = now

    def stats(self, peak_memory_bytes: int | None = None) -> BackendStats:
        first = self.first or self.started
        return backend_stats(self.prompt_tokens, self.generated, self.started, first, self.last or first,
                             time.perf_counter(), peak_memory_bytes, self.prefilled)
