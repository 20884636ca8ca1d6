"""The token loop of LlamaCppModel.stream: draw a token from the last call's logits, feed it, repeat;
with speculation (ponder.speculate), feed a guess of the next tokens with it and draw along every row."""

from __future__ import annotations

import codecs
import ctypes
import threading
import time
from collections.abc import Generator

import llama_cpp as lib

from ponder.events import TextDelta
from ponder.speculate import LONGEST, Speculation

_EVERY_ROW = (ctypes.c_int8 * (LONGEST + 1))(*([1] * (LONGEST + 1)))  # logits for each token fed


def feed_in_chunks(tokens, start: int, chunk: int, no_logits, decode, cached: list[int],
                   cancel: threading.Event | None) -> bool:
    """Feed `tokens[start:]` in calls of `chunk` tokens, logits only for the last token (a chunk before the last
    needs none: computing them costs a small model with a large vocabulary 8% of its prompt speed); each chunk
    fed is added to `cached`. False where `cancel` was set between chunks."""
    for begin in range(start, len(tokens), chunk):
        if cancel is not None and cancel.is_set():
            return False
        part = tokens[begin : begin + chunk]
        ids = (lib.llama_token * len(part))(*part)  # (held here: the batch only points at it)
        batch = lib.llama_batch_get_one(ids, len(part))
        if begin + len(part) < len(tokens):
            batch.logits = ctypes.cast(no_logits, ctypes.POINTER(ctypes.c_int8))
        decode(batch)
        cached.extend(part)
    return True


class DecodeResult:
    """How a reply's token loop ended, for its Finished."""

    def __init__(self, started: float):
        self.reason = "length"
        self.generated = 0
        self.first = self.last = started


def decode_reply(model, sampler, mask, speculation: Speculation | None, budget: int, cancel: threading.Event,
                 history: list[int], result: DecodeResult) -> Generator[TextDelta, None, None]:
    """Generate up to `budget` tokens after the prompt `history` (which the model's stream 0 holds but for
    its last token's logits, already computed), yielding each token's text; `result` tells how it ended.
    `history` grows by each token given (the drafter reads it)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fed = (lib.llama_token * (LONGEST + 1))()
    cached = model.streams.tokens[0]
    guess: list[int] = []  # the guessed tokens the last call was fed after its first
    called = None  # when the last call began (its guess included)
    while result.generated < budget:
        if cancel.is_set():
            result.reason = "cancelled"
            break
        kept, ended = 0, None
        for row in range(len(guess) + 1):  # row j: the logits after the j-th token fed
            logits = model.logits(row if guess else -1)
            token = sampler.sample(logits) if mask is None else mask.draw(sampler, logits)
            result.last = time.perf_counter()
            if not result.generated:
                result.first = result.last
            if model.is_end(token):
                ended = "stop"
                break
            result.generated += 1
            history.append(token)
            text = decoder.decode(model.piece(token))
            yield TextDelta(text, ids=(token,))
            if mask is not None and mask.took(token, text):  # the answer is complete
                ended = "stop"
                break
            if result.generated == budget:
                ended = "length"
                break
            if row == len(guess) or token != guess[row]:
                break
            kept += 1
        if guess:  # the rejected guesses leave the cache
            model.streams.trim(0, len(cached) - len(guess) + kept)
        if speculation is not None and called is not None:
            speculation.settle(len(guess), kept, time.perf_counter() - called)
        if ended:
            result.reason = ended
            break
        called = time.perf_counter()
        guess = speculation.guess(history, budget - result.generated - 1) if speculation is not None else []
        fed[0] = token
        for i, guessed in enumerate(guess, 1):
            fed[i] = guessed
        batch = lib.llama_batch_get_one(fed, len(guess) + 1)
        if guess:
            batch.logits = ctypes.cast(_EVERY_ROW, ctypes.POINTER(ctypes.c_int8))
        model.decode(batch, "decode")
        cached.append(token)
        cached.extend(guess)
    tail = decoder.decode(b"", final=True)
    if tail:
        yield TextDelta(tail, tokens=0)
