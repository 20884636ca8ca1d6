"""A draft model for speculative decoding on llama.cpp (`--draft`): a smaller GGUF with the target's
vocabulary, in a context of its own, whose greedy continuation of the text so far is the guess the
target checks (ponder.speculate). Any deterministic guess leaves the target's output exact, so argmax
is enough, and it costs no sampler.

Its cache follows the target's history: each guess first cuts what the target rejected (the shared
prefix with the history), feeds only the tokens it lacks, then generates one decode a token. The
guessed tokens stay in its cache, so a guess the target kept whole costs nothing to catch up on.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence

import llama_cpp as lib
import numpy as np

from ponder.backends.llamacpp_batch import KvStreams
from ponder.backends.llamacpp_decode import feed_in_chunks
from ponder.backends.llamacpp_setup import check_gguf, last_error, log_lines
from ponder.errors import BackendError, ModelError, UsageError

SAMPLED_IDS = 4096  # token texts compared across the vocabulary at load, evenly spaced (besides both ends)
# Vocabulary sizes may differ by padding tokens at the end (R1-Distill-Qwen-1.5B has 151936, 7B 152064):
# llama.cpp's speculative example allows this much, and so does ponder, guessing only ids both know.
SIZE_SLACK = 128


def check_draft(path: str) -> None:
    """A draft path llama.cpp would reject, refused as the target's is, before anything loads."""
    try:
        check_gguf(path)
    except ModelError as error:
        raise ModelError("draft model " + error.message.removeprefix("model "), hint=error.hint) from None


def vocabulary_mismatch(target, draft) -> str | None:
    """How two llama.cpp vocabularies differ in what a guess relies on (the same id is the same text, the
    same end tokens), or None where they agree on a sample of ids."""
    sizes = lib.llama_vocab_n_tokens(target), lib.llama_vocab_n_tokens(draft)
    if abs(sizes[0] - sizes[1]) > SIZE_SLACK or min(sizes) <= 0:
        return f"it has {sizes[1]} tokens, the model {sizes[0]}"
    if lib.llama_vocab_type(target) != lib.llama_vocab_type(draft):
        return "its tokenizer is of another kind"
    for end in (lib.llama_vocab_eos, lib.llama_vocab_eot):
        if end(target) != end(draft):
            return f"its end token is {end(draft)}, the model's {end(target)}"
    shared = min(sizes)
    ids = {*range(min(256, shared)), *range(max(0, shared - 256), shared),  # the specials are at either end
           *range(0, shared, max(1, shared // SAMPLED_IDS))}
    for token in sorted(ids):
        theirs, ours = lib.llama_vocab_get_text(draft, token), lib.llama_vocab_get_text(target, token)
        if theirs != ours:
            return f"its token {token} is {theirs!r}, the model's {ours!r}"
    return None


class LlamaCppDrafter:
    """ponder.speculate's Drafter from a draft GGUF. `cparams` are the target's context parameters (the
    same threads and flash attention), `context` its tokens per sequence, `gpu_layers` its offload."""

    free = False  # (each guessed token costs a draft decode)

    def __init__(self, path: str, target_path: str, target_vocab, cparams, context: int, gpu_layers: int):
        check_draft(path)
        self._model = self._ctx = None
        params = lib.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        log_lines.clear()
        self._model = lib.llama_model_load_from_file(os.fsencode(path), params)
        if not self._model:
            detail = last_error(first=True)
            raise ModelError(f"llama.cpp could not load the draft model {path}" + (f": {detail}" if detail else ""),
                             hint="the file may be truncated or corrupt; download it again")
        self._vocab = lib.llama_model_get_vocab(self._model)
        mismatch = vocabulary_mismatch(target_vocab, self._vocab)
        if mismatch:
            self.close()
            raise UsageError(f"the draft model {path} does not share the vocabulary of {target_path}: {mismatch}",
                             hint="a draft must be a smaller model of the same family, with the same tokenizer")
        if lib.llama_model_is_recurrent(self._model) or lib.llama_model_is_hybrid(self._model):
            self.close()
            raise UsageError(f"the draft model {path} keeps a recurrent state, which cannot be cut back to a guess",
                             hint="use a transformer draft model")
        own = type(cparams).from_buffer_copy(cparams)
        own.n_ctx, own.n_seq_max = context, 1  # the target's history and guesses fit in the same context
        self._ctx = lib.llama_init_from_model(self._model, own)
        if not self._ctx:
            self.close()
            detail = last_error()
            raise BackendError(f"llama.cpp could not create a {context}-token context for the draft model {path}"
                               + (f": {detail}" if detail else ""), hint="try a smaller --ctx")
        self._chunk = lib.llama_n_batch(self._ctx)
        self._no_logits = (ctypes.c_int8 * self._chunk)()  # no logits for a chunk before the last
        self._streams = KvStreams(lib.llama_get_memory(self._ctx), 1)
        self._cached = self._streams.tokens[0]
        # Guesses only among the ids both models know (the larger may have padding tokens at its end).
        self._known = min(lib.llama_vocab_n_tokens(target_vocab), lib.llama_vocab_n_tokens(self._vocab))
        self._one = (lib.llama_token * 1)()
        self._single = lib.llama_batch_get_one(self._one, 1)  # reused for every generated token
        # The history of the last call and how much of it the cache held: within a reply the history only
        # grows, so the shared prefix is searched from there, not from the start each time.
        self._history: Sequence[int] | None = None
        self._agreed = 0
        self._cancel = threading.Event()  # the current reply's (set by prefill)

    def prefill(self, tokens: Sequence[int], cancel: threading.Event) -> bool:
        """Feed a prompt ahead of the first guess (so its time counts as the prompt's, and a cancel stops
        it between chunks); False if cancelled."""
        self._cancel = cancel  # the reply's: a guess stops at it too
        return self._follow(tokens, cancel)

    def propose(self, history: Sequence[int], limit: int) -> list[int]:
        if limit < 1:
            return []
        if not self._follow(history, self._cancel):
            return []
        guess: list[int] = []
        while True:
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, -1), shape=(self._known,))
            token = int(np.argmax(logits))  # read in place
            guess.append(token)
            if len(guess) == limit or lib.llama_vocab_is_eog(self._vocab, token) or self._cancel.is_set():
                return guess  # (cancelled: the reply's loop stops after this call)
            self._one[0] = token
            self._decode(self._single)
            self._cached.append(token)

    def _follow(self, history: Sequence[int], cancel: threading.Event | None) -> bool:
        """Bring the cache to `history` (its last token fed last, so the logits are its); False if cancelled."""
        cached = self._cached
        end = min(len(cached), len(history) - 1)  # at least one token fed: the logits must be fresh
        keep = min(self._agreed, end) if history is self._history else 0
        while keep < end and cached[keep] == history[keep]:
            keep += 1
        if keep < len(cached):
            keep = self._streams.trim(0, keep)  # (0 where it could not be cut: all is fed again)
        self._history, self._agreed = history, keep
        if len(history) - keep == 1:  # the common case: the target's own token after a kept guess
            self._one[0] = history[-1]
            self._decode(self._single)
            cached.append(history[-1])
        elif not feed_in_chunks(history, keep, self._chunk, self._no_logits, self._decode, cached, cancel):
            return False
        self._agreed = len(history)
        return True

    def _decode(self, batch) -> None:
        if lib.llama_decode(self._ctx, batch) != 0:
            self._streams.trim(0, len(self._cached))  # what the failed call may have left
            detail = last_error()
            raise BackendError("llama.cpp failed to decode with the draft model" + (f": {detail}" if detail else ""))

    def close(self) -> None:
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None
