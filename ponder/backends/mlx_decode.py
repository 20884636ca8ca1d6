"""The token loops of MlxModel.stream, and the draws they share.

Without speculation the loop is mlx-lm's own `stream_generate`: it computes step n+1 while ponder handles
token n (an asynchronous pipeline), which is the speed benchmarks/decode.py measures against mlx-lm. A loop
with guesses cannot compute ahead: which guesses were kept, so what the next call is fed, is known only once
the call's rows are drawn. So with speculation (ponder.speculate) the loop is ponder's own: one model call
on the drawn token and a guess over mlx-lm's KV cache, each row drawn in order, the rejected guesses cut
from the cache (`trim_prompt_cache`); a cache that cannot be cut back gets no guesses.

Both loops draw with MlxSampler, one draw per token given and in the same order, and process the prompt in
the same chunks, so a greedy or seeded reply is the same with speculation as without: MLX's logits for a
position do not depend on how many positions one call computes (bit for bit on CPU, tests/
test_speculate_mlx.py; on Metal a kernel chosen by shape could round otherwise).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream, stream_generate, wired_limit
from mlx_lm.models.cache import trim_prompt_cache
from mlx_lm.sample_utils import apply_top_p

from ponder.backends.mlx_batch import masked
from ponder.events import TextDelta
from ponder.speculate import LONGEST, Speculation

PROMPT_CHUNK = 512  # prompt tokens per model call; cancellation is checked between them


class MlxSampler:
    """Temperature, then top-p, then a draw: the order Hugging Face, vLLM and ponder's llama.cpp backend use
    (mlx-lm's make_sampler filters top-p before the temperature). Called on log-probabilities, one row.

    The draws take the reply's own `key`, split at each draw, not MLX's global random state: so nothing else
    drawing or seeding meanwhile changes them, and they change nothing else."""

    def __init__(self, temperature: float, top_p: float, seed: int | None):
        self.temperature, self.top_p = temperature, top_p
        self.key = None  # greedy
        if temperature > 0:
            self.key = mx.random.key(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))

    def __call__(self, logprobs: mx.array) -> mx.array:
        if self.key is None:
            return mx.argmax(logprobs, axis=-1)
        self.key, draw = mx.random.split(self.key)
        scaled = logprobs * (1.0 / self.temperature)
        if self.top_p < 1.0:
            scaled = apply_top_p(scaled, self.top_p)
        return mx.random.categorical(scaled, key=draw)


class DecodeResult:
    """How a reply's token loop went, for its Finished: the ids given, why it ended, when."""

    def __init__(self, started: float):
        self.reason = "length"
        self.ids: list[int] = []
        self.first = self.last = started

    def stepped(self) -> None:
        self.last = time.perf_counter()
        if not self.ids:
            self.first = self.last


class _Cancelled(Exception):
    pass


class AnswerLogits:
    """mlx-lm's logits processor for a constrained reply. mlx-lm prepares step n+1 before it yields token n,
    so the grammar follows the drawn tokens here (the last of `tokens`), not in the loop. Once the
    answer is complete only an end token is allowed: the stream then ends as a free one does, mlx-lm's
    detokenizer giving up the text it held back, and no token of text is wasted."""

    def __init__(self, mask, piece, ends: np.ndarray):
        self.mask, self._piece, self._ends = mask, piece, ends
        self.complete = False
        self._drawn = False  # the first call is on the prompt's last token: nothing drawn yet

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._drawn and not self.complete:
            token = tokens[-1].item()
            self.complete = self.mask.took(token, "" if self.mask.active else self._piece(token))
        self._drawn = True
        allowed = self._ends if self.complete else self.mask.allowed()
        return logits if allowed is None else masked(logits, allowed)


def plain_reply(model, new: list[int], sampler: MlxSampler, mask, budget: int, cancel: threading.Event,
                result: DecodeResult) -> Generator[TextDelta, None, None]:
    """mlx-lm's stream_generate from `model.prompt_cache` on the prompt's tokens it lacks (`new`)."""
    processors = []
    if mask is not None:
        ends = np.zeros(model.n_vocab, dtype=bool)
        ends[[token for token in model.end_ids if token < model.n_vocab]] = True
        processors = [AnswerLogits(mask, model.piece, ends)]

    def check_cancel(done: int, total: int) -> None:
        if cancel.is_set() and done < total:
            raise _Cancelled

    responses = stream_generate(
        model._model, model._tokenizer, mx.array(new), max_tokens=budget, sampler=sampler,
        prompt_cache=model.prompt_cache.cache, prefill_step_size=PROMPT_CHUNK, prompt_progress_callback=check_cancel,
        logits_processors=processors,
    )
    try:
        for response in responses:
            result.stepped()
            if response.finish_reason == "stop":  # the end-of-sequence token: not text
                result.reason = "stop"
                if response.text:
                    yield TextDelta(response.text, tokens=0)
                break
            result.ids.append(response.token)
            yield TextDelta(response.text, ids=(response.token,))
            if cancel.is_set() and response.finish_reason is None:
                result.reason = "cancelled"
                break
    except _Cancelled:
        result.reason = "cancelled"
    finally:
        responses.close()
    if processors and processors[0].complete and result.reason == "length":
        result.reason = "stop"  # (complete with the budget's last token)


def _logprobs(row: mx.array) -> mx.array:
    return row - mx.logsumexp(row, keepdims=True)  # (as mlx-lm's generate_step: the same numbers to draw from)


class _Rows:
    """The draws of one model call's rows, in order (row j: after the j-th token fed). Free rows are drawn
    all at once (one wait for all), and the sampler's key is then set back to after the draws used; a
    constrained reply's rows one at a time, since each row's mask follows the token drawn before it."""

    def __init__(self, logits: mx.array, sampler: MlxSampler, mask):
        self.logits, self.sampler, self.mask = logits, sampler, mask
        self._drawn: list[int] | None = None
        self._keys: list = []

    def draw(self, row: int) -> int:
        with mx.stream(generation_stream):
            if self.mask is not None:
                allowed = self.mask.allowed()
                logits = self.logits[:, row, :]
                return self.sampler(_logprobs(logits if allowed is None else masked(logits, allowed))).item()
            if self._drawn is None:
                draws = []
                for j in range(self.logits.shape[1]):
                    draws.append(self.sampler(_logprobs(self.logits[:, j, :])))
                    self._keys.append(self.sampler.key)
                self._drawn = mx.concatenate(draws).tolist()
        return self._drawn[row]

    def used(self, draws: int) -> None:
        """Only the first `draws` draws gave tokens: the next draw takes the key after them."""
        if self._drawn is not None and self.sampler.key is not None:
            self.sampler.key = self._keys[draws - 1]


def speculative_reply(model, new: list[int], sampler: MlxSampler, mask, speculation: Speculation, budget: int,
                      cancel: threading.Event, history: list[int], result: DecodeResult
                      ) -> Generator[TextDelta, None, None]:
    """Generate up to `budget` tokens after the prompt `history` (of which `model.prompt_cache` lacks `new`),
    feeding a guess after each drawn token. The rejected guesses leave the cache before any text is yielded,
    so wherever this stops, the cache holds a prefix of the prompt and `result.ids` (MlxModel settles it)."""
    cache = model.prompt_cache.cache
    detokenizer = model.detokenizer()
    with wired_limit(model._model, [generation_stream]):
        logits = _prefill(model, cache, new, cancel)
        if logits is None:
            result.reason = "cancelled"
            return
        guess: list[int] = []  # the guessed tokens the last call was fed after its first
        called = time.perf_counter()
        calls = 0
        while True:
            rows, given, kept, ended = _Rows(logits, sampler, mask), [], 0, None
            for row in range(len(guess) + 1):
                token = rows.draw(row)
                result.stepped()
                if token in model.end_ids:
                    ended = "stop"
                    break
                given.append(token)
                if mask is not None and mask.took(token, "" if mask.active else model.piece(token)):
                    ended = "stop"  # the answer is complete
                    break
                if len(result.ids) + len(given) == budget:
                    ended = "length"
                    break
                if row == len(guess) or token != guess[row]:
                    break
                kept += 1
            rows.used(kept + 1)
            if len(guess) > kept:  # the rejected guesses leave the cache
                trim_prompt_cache(cache, len(guess) - kept)
            if calls:
                speculation.settle(len(guess), kept, time.perf_counter() - called)
            history.extend(given)
            for token in given:
                detokenizer.add_token(token)
                result.ids.append(token)
                if ended == "length" and len(result.ids) == budget:
                    detokenizer.finalize()  # (as stream_generate: the held-back text goes with the last token)
                yield TextDelta(detokenizer.last_segment, ids=(token,))
            if ended is None and cancel.is_set():
                ended = "cancelled"
            if ended:
                result.reason = ended
                break
            called = time.perf_counter()
            room = budget - len(result.ids) - 1
            if room > 0 and not _cuttable(cache, min(room, LONGEST) + 1):  # (a sliding window about full)
                room = 0  # (asked before the guess is made: a draft model's guess costs its decodes)
            guess = speculation.guess(history, room)
            if cancel.is_set():  # (a draft model's guess may have taken a while)
                result.reason = "cancelled"
                break
            with mx.stream(generation_stream):
                logits = model.forward(mx.array([history[-1]] + guess)[None], cache)
            calls += 1
            if calls % 256 == 0:
                mx.clear_cache()
    if result.reason != "length":
        detokenizer.finalize()
        if detokenizer.last_segment:
            yield TextDelta(detokenizer.last_segment, tokens=0)


def _prefill(model, cache: list, new: list[int], cancel: threading.Event) -> mx.array | None:
    """Feed the prompt's tokens the cache lacks in the chunks mlx-lm's generate_step uses (all but the last,
    then the last alone: the cache then holds the numbers it would), checking `cancel` between them; the
    last token's logits, or None if cancelled."""
    with mx.stream(generation_stream):
        done = 0
        while len(new) - done > 1:
            if cancel.is_set():
                return None
            part = new[done : done + min(PROMPT_CHUNK, len(new) - done - 1)]
            model.forward(mx.array(part)[None], cache)
            mx.eval([layer.state for layer in cache])
            done += len(part)
            mx.clear_cache()
        if cancel.is_set():
            return None
        return model.forward(mx.array(new[done:])[None], cache)


def _cuttable(layers: list, fed: int) -> bool:
    """Whether a cache can still be cut back after `fed` more tokens: every layer trimmable, and a rotating
    (sliding-window) one not yet full then (once it wraps, the tokens it dropped cannot come back)."""
    for layer in layers:
        inner = getattr(layer, "caches", None)  # (a CacheList)
        if inner is not None:
            if not _cuttable(list(inner), fed):
                return False
            continue
        size = getattr(layer, "max_size", None)
        if not layer.is_trimmable() or (size is not None and layer.offset + fed >= size):
            return False
    return True
