"""A llama.cpp model's prompt state to and from the prompt cache on disk (ponder.prompt_cache).

Before a prompt is processed, the entry sharing the most leading tokens with it is loaded into KV
stream 0 (where the model's own cache holds less) and cut to the shared part; after, the state is
saved (copied at once, written on a thread) when the prompt reaches the cache's min_tokens past what
is stored.
"""

from __future__ import annotations

import ctypes

import llama_cpp as lib

from ponder.prompt_cache import PromptCache, model_identity, shared_length


def cache_for(path: str, settings: dict, limit_bytes: int | None) -> PromptCache | None:
    """The prompt cache of this GGUF under these settings; None where the file cannot be described."""
    try:
        identity = model_identity(path, "llama.cpp", {**settings, "engine": lib.__version__})
    except OSError:
        return None
    return PromptCache(identity, limit_bytes=limit_bytes)


class StateOnDisk:
    """Stream 0's state on disk, for a LlamaCppModel (its context `ctx` and KvStreams `streams`)."""

    def __init__(self, ctx, streams, cache: PromptCache):
        self._ctx, self._streams, self.cache = ctx, streams, cache
        self._stored: tuple[int, ...] = ()  # the tokens of the entry last loaded or saved

    def restore(self, tokens: list[int], keep: int) -> int:
        """Load the longest stored prefix of `tokens` where it beats the `keep` tokens stream 0 shares;
        how many tokens stream 0 now holds of `tokens` (leaving at least one to process)."""
        if len(tokens) - keep < self.cache.min_tokens:
            return keep
        hit = self.cache.longest(tokens)
        if hit is None or min(hit.shared, len(tokens) - 1) <= keep:
            return keep
        payload = self.cache.load(hit)
        if payload is None:
            return keep
        source = (ctypes.c_uint8 * len(payload)).from_buffer(payload)
        self._streams.trim(0, 0)
        if lib.llama_state_seq_set_data(self._ctx, source, len(payload), 0) != len(payload):
            self._streams.trim(0, 0)  # a state this context cannot take: start afresh
            self.cache.discard(hit.path)
            return 0
        self._streams.tokens[0][:] = hit.tokens
        self._stored = hit.tokens
        return self._streams.trim(0, min(hit.shared, len(tokens) - 1))

    def remember(self, tokens: list[int]) -> None:
        """Save stream 0's state (it holds exactly `tokens`) if that much is not stored yet."""
        if len(tokens) - shared_length(self._stored, tokens) < self.cache.min_tokens:  # (stored, or short)
            return
        if self.cache.busy():  # one copy of a state at a time: this one waits for a later turn
            return
        size = lib.llama_state_seq_get_size(self._ctx, 0)
        payload = bytearray(size)
        written = lib.llama_state_seq_get_data(self._ctx, (ctypes.c_uint8 * size).from_buffer(payload), size, 0)
        if not written:
            return
        self._stored = tuple(tokens)
        self.cache.save_later(tokens, memoryview(payload)[:written])

    def close(self) -> None:
        self.cache.wait()
