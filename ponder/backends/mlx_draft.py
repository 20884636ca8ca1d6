"""A draft model for speculative decoding on MLX (--speculate draft, LoadOptions.draft): a smaller MLX model
with the model's vocabulary, whose greedy continuation is the guess the model checks (ponder.speculate's
Drafter).

It keeps a cache of its own, in step with the reply the way the model's is: before each guess it is cut back
to what it shares with the text so far (rejected guesses, or an earlier reply), fed the rest, and then run
greedily for the guess, one token a call, all evaluated at once at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import mlx.core as mx
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

from ponder.backends.base import shared_prefix
from ponder.errors import UsageError

PROMPT_CHUNK = 512  # prompt tokens per call of the draft model; cancellation is checked between them


def check_vocabulary(draft_tokenizer, tokenizer, draft: str, path: str) -> None:
    """A draft's guesses are token ids: they mean the model's tokens only where both tokenizers map the same
    text to the same ids. (The logits may still differ in width: R1-Distill-Qwen-1.5B's embedding is 151936
    wide, 7B's 152064, over one tokenizer.)"""
    if draft_tokenizer.vocab != tokenizer.vocab:
        raise UsageError(f"the draft model {draft} does not share the vocabulary of {path}",
                         hint="a draft model must use the same tokenizer (a smaller model of the same family)")


class DraftModel:
    free = False  # (each guessed token costs a draft decode)

    def __init__(self, network, n_vocab: int):
        self._network = network
        self._n_vocab = n_vocab  # the model's logits: a guess past them (a draft's wider embedding) is cut there
        self._cache = make_prompt_cache(network)
        self._tokens: list[int] = []  # what `_cache` holds
        self.cancel: threading.Event | None = None  # the reply's: a long prompt stops between chunks

    def propose(self, history: Sequence[int], limit: int) -> list[int]:
        try:
            return self._propose(history, limit)
        except BaseException:  # (an MLX failure, or a stop mid-call: the cache may not match its tokens)
            self._cache, self._tokens = make_prompt_cache(self._network), []
            raise

    def _propose(self, history: Sequence[int], limit: int) -> list[int]:
        if limit < 1:
            return []
        keep = shared_prefix(self._tokens, list(history))
        if keep < len(self._tokens):
            if can_trim_prompt_cache(self._cache):
                trim_prompt_cache(self._cache, len(self._tokens) - keep)
            else:  # (a rotating cache that wrapped: start again)
                self._cache, keep = make_prompt_cache(self._network), 0
            del self._tokens[keep:]
        rest = list(history[keep:])
        with mx.stream(generation_stream):
            for start in range(0, len(rest) - 1, PROMPT_CHUNK):  # all but the last token
                if self.cancel is not None and self.cancel.is_set():
                    return []
                part = rest[start : min(start + PROMPT_CHUNK, len(rest) - 1)]
                self._network(mx.array(part)[None], cache=self._cache)
                mx.eval([layer.state for layer in self._cache])
                self._tokens.extend(part)
            token = mx.array(rest[-1:])
            guesses = []
            for _ in range(limit):
                token = mx.argmax(self._network(token[None], cache=self._cache)[:, -1, :], axis=-1)
                guesses.append(token)
            guess = mx.concatenate(guesses).tolist()
        self._tokens.extend(rest[-1:] + guess[:-1])  # (the last guess is not fed yet)
        usable = next((i for i, token in enumerate(guess) if token >= self._n_vocab), len(guess))
        return guess[:usable]

    def close(self) -> None:
        self._network = self._cache = None
