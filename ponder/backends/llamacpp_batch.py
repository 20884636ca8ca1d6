"""Several sequences decoded together on one llama.cpp context (parallel samples).

The context is made with `n_seq_max` sequences, each with a KV stream of its own (llama.cpp's
non-unified cache): a sequence's context is as long as a single one's, and one that fills it ends
without touching the others. A new sequence copies the longest prefix of its prompt that any slot
already holds (`llama_memory_seq_cp`), so N samples of one prompt process it once. Each step is one
`llama_decode` of one token per live sequence; each sequence samples its own row of logits with
its own seed.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp as lib
import numpy as np

from ponder.backends.base import backend_stats, generation_budget, prompt_tokens, shared_prefix
from ponder.errors import BackendError
from ponder.events import BackendEvent, Continuation, Finished, FinishReason, GenerationParams, TextDelta
from ponder.sampling import Sampler


@dataclass
class _Sequence:
    sampler: Sampler
    budget: int  # tokens it may generate
    prompt_tokens: int
    prefilled: int
    started: float
    pending: int  # the token to feed in the next step (the prompt's last, then each sampled one)
    position: int  # the pending token's position
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    generated: int = 0
    first: float = 0.0
    last: float = 0.0


class LlamaCppBatch:
    """The BatchDecoder of a LlamaCppModel loaded with `sequences` > 1 (see ponder.backends.base)."""

    def __init__(self, model, last_error: Callable[[], str]):
        self._model, self._last_error = model, last_error  # (llama.cpp's log is the model module's)
        self.slots = model.info.sequences
        self._live: dict[int, _Sequence] = {}
        self._step_batch = lib.llama_batch_init(self.slots, 0, 1)
        self._prompt_batch = lib.llama_batch_init(model._chunk, 0, 1)

    def free_slots(self) -> int:
        return self.slots - len(self._live)

    # --- starting a sequence ------------------------------------------------------

    def add(self, prompt: str | Continuation, params: GenerationParams, cancel: threading.Event) -> int | None:
        model = self._model
        started = time.perf_counter()
        tokens = prompt_tokens(prompt, model.tokenize, lambda text: model._tokenize(text, False))
        budget = generation_budget(len(tokens), model.info.context, params.max_tokens)
        slot, keep = self._place(tokens)
        held = model._caches[slot]
        rest = tokens[keep:-1]  # the last prompt token is fed with the next step, for its logits
        for start in range(0, len(rest), model._chunk):
            if cancel.is_set():
                return None
            self._feed(slot, rest[start:start + model._chunk], keep + start)
            held.extend(rest[start:start + model._chunk])
        self._live[slot] = _Sequence(Sampler(model._n_vocab, params.temperature, params.top_p, params.seed),
                                     budget, len(tokens), len(tokens) - keep, started, tokens[-1], len(tokens) - 1)
        return slot

    def _place(self, tokens: list[int]) -> tuple[int, int]:
        """A free slot for `tokens`, holding the longest prefix of them that any slot's cache holds; that length."""
        caches, memory = self._model._caches, self._model._memory
        free = [slot for slot in range(self.slots) if slot not in self._live]
        slot = max(free, key=lambda s: shared_prefix(caches[s], tokens))  # ties: the lowest slot
        keep = shared_prefix(caches[slot], tokens)
        source = max(range(self.slots), key=lambda s: shared_prefix(caches[s], tokens))
        if shared_prefix(caches[source], tokens) > keep:
            # Streams are copied whole (llama.cpp copies across streams only so), then cut to the prefix.
            keep = shared_prefix(caches[source], tokens)
            lib.llama_memory_seq_rm(memory, slot, -1, -1)
            lib.llama_memory_seq_cp(memory, source, slot, -1, -1)
            caches[slot][:] = caches[source][:keep]
        lib.llama_memory_seq_rm(memory, slot, keep, -1)
        del caches[slot][keep:]
        return slot, keep

    def _feed(self, slot: int, tokens: list[int], position: int) -> None:
        """Process prompt tokens of one sequence, no logits wanted."""
        batch = self._prompt_batch
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = position + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot
            batch.logits[i] = 0
        batch.n_tokens = len(tokens)
        self._decode(batch, "process the prompt")

    def _decode(self, batch, doing: str) -> None:
        if lib.llama_decode(self._model._ctx, batch) != 0:
            self._forget_all()
            detail = self._last_error()
            raise BackendError(f"llama.cpp failed to {doing}" + (f": {detail}" if detail else ""))

    def _forget_all(self) -> None:
        """After a failed decode nothing in the cache can be trusted: every sequence ends, every slot empties."""
        self._live.clear()
        for slot, cached in enumerate(self._model._caches):
            lib.llama_memory_seq_rm(self._model._memory, slot, -1, -1)
            cached.clear()

    # --- decoding ---------------------------------------------------------------

    def step(self) -> list[tuple[int, BackendEvent]]:
        if not self._live:
            return []
        model = self._model
        batch, order = self._step_batch, sorted(self._live)  # a fixed order: results never depend on admissions
        for i, slot in enumerate(order):
            sequence = self._live[slot]
            batch.token[i] = sequence.pending
            batch.pos[i] = sequence.position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot
            batch.logits[i] = 1
        batch.n_tokens = len(order)
        self._decode(batch, "decode")
        now = time.perf_counter()
        events: list[tuple[int, BackendEvent]] = []
        ctx, vocab, n_vocab, piece = model._ctx, model._vocab, model._n_vocab, model._piece
        for i, slot in enumerate(order):
            sequence = self._live[slot]
            model._caches[slot].append(sequence.pending)
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, i), shape=(n_vocab,))  # no copy
            token = sequence.sampler.sample(logits)
            sequence.last = now
            if not sequence.generated:
                sequence.first = now
            if lib.llama_vocab_is_eog(vocab, token):
                events.extend(self._end(slot, "stop"))
                continue
            sequence.generated += 1
            n = lib.llama_token_to_piece(vocab, token, piece, 256, 0, False)
            events.append((slot, TextDelta(sequence.decoder.decode(piece.raw[:n]), ids=(token,))))
            if sequence.generated == sequence.budget:
                events.extend(self._end(slot, "length"))
                continue
            sequence.pending, sequence.position = token, sequence.position + 1
        return events

    def drop(self, slot: int, reason: FinishReason) -> Finished:
        return self._end(slot, reason)[-1][1]

    def _end(self, slot: int, reason: FinishReason) -> list[tuple[int, BackendEvent]]:
        sequence = self._live.pop(slot)
        events: list[tuple[int, BackendEvent]] = []
        tail = sequence.decoder.decode(b"", final=True)
        if tail:
            events.append((slot, TextDelta(tail, tokens=0)))
        first = sequence.first or sequence.started
        stats = backend_stats(sequence.prompt_tokens, sequence.generated, sequence.started, first,
                              sequence.last or first, time.perf_counter(), prefilled=sequence.prefilled)
        events.append((slot, Finished(reason, stats)))
        return events

    def close(self) -> None:
        self._live.clear()
        if self._step_batch is not None:
            lib.llama_batch_free(self._step_batch)
            lib.llama_batch_free(self._prompt_batch)
            self._step_batch = self._prompt_batch = None
