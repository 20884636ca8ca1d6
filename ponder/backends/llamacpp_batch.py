"""Several sequences decoded together on one llama.cpp context (parallel samples).

The context is made with `n_seq_max` sequences, each with a KV stream of its own (llama.cpp's
non-unified cache): a sequence's context is as long as a single one's, and one that fills it ends
without touching the others. A new sequence copies the longest prefix of its prompt that any stream
already holds (`llama_memory_seq_cp`), so N samples of one prompt process it once. Each step is one
`llama_decode` of one token per live sequence; each sequence samples its own row of logits with
its own seed.

llama.cpp decodes the streams of a batch in one pass only when their ids run consecutively
(`llama_batch_allocr::split_equal`): streams 0, 2 and 3 would be two passes over the weights. So
live sequences are kept in streams 0..k-1: a new one takes the lowest free stream, and when one in
the middle ends the last one moves into its place (a stream copy). Callers know a sequence by the
handle `add` returns, which never changes.
"""

from __future__ import annotations

import codecs
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp as lib
import numpy as np

from ponder.backends.base import BatchedSequence, generation_budget, prompt_tokens, shared_prefix
from ponder.errors import BackendError
from ponder.events import BackendEvent, Continuation, Finished, FinishReason, GenerationParams, TextDelta
from ponder.sampling import Sampler


@dataclass(kw_only=True)
class _Sequence(BatchedSequence):
    stream: int  # the KV stream (llama.cpp sequence id) it lives in, 0..k-1
    position: int  # the pending token's position
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


class LlamaCppBatch:
    """The BatchDecoder of a LlamaCppModel loaded with `sequences` > 1 (see ponder.backends.base)."""

    def __init__(self, model, last_error: Callable[[], str]):
        self._model, self._last_error = model, last_error  # (llama.cpp's log is the model module's)
        self.slots = model.info.sequences
        self._live: dict[int, _Sequence] = {}  # by handle
        self._handles = itertools.count()
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
        stream, keep = self._place(tokens)
        held = model._caches[stream]
        rest = tokens[keep:-1]  # the last prompt token is fed with the next step, for its logits
        for start in range(0, len(rest), model._chunk):
            if cancel.is_set():
                return None
            self._feed(stream, rest[start:start + model._chunk], keep + start)
            held.extend(rest[start:start + model._chunk])
        handle = next(self._handles)
        self._live[handle] = _Sequence(stream=stream, sampler=Sampler(params.temperature, params.top_p, params.seed),
                                       budget=budget, prompt_tokens=len(tokens), prefilled=len(tokens) - keep,
                                       started=started, pending=tokens[-1], position=len(tokens) - 1)
        return handle

    def _place(self, tokens: list[int]) -> tuple[int, int]:
        """The lowest free stream, made to hold the longest prefix of `tokens` that any stream holds; that length."""
        caches = self._model._caches
        used = {sequence.stream for sequence in self._live.values()}
        stream = min(s for s in range(self.slots) if s not in used)
        keep = self._trim(stream, shared_prefix(caches[stream], tokens))
        source = max(range(self.slots), key=lambda s: shared_prefix(caches[s], tokens))
        if shared_prefix(caches[source], tokens) > keep:
            self._move(source, stream)
            keep = self._trim(stream, shared_prefix(caches[stream], tokens))
        return stream, keep

    def _trim(self, stream: int, keep: int) -> int:
        """Cut a stream's cache to its first `keep` tokens; what it holds after (0 where the memory cannot be
        cut there, as a recurrent model's state cannot)."""
        memory, cached = self._model._memory, self._model._caches[stream]
        if not lib.llama_memory_seq_rm(memory, stream, keep, -1):
            lib.llama_memory_seq_rm(memory, stream, -1, -1)
            keep = 0
        del cached[keep:]
        return keep

    def _move(self, source: int, target: int) -> None:
        """Make stream `target` hold what `source` holds (llama.cpp copies across streams only whole, at the
        next decode); `source` keeps its copy, a prefix for later prompts."""
        memory, caches = self._model._memory, self._model._caches
        lib.llama_memory_seq_rm(memory, target, -1, -1)
        lib.llama_memory_seq_cp(memory, source, target, -1, -1)
        caches[target][:] = caches[source]

    def _compact(self) -> None:
        """Move the last live sequences into the streams below them that ended, so the live ones run 0..k-1."""
        live = len(self._live)
        used = {sequence.stream for sequence in self._live.values()}
        gaps = [s for s in range(live) if s not in used]
        movers = sorted((q for q in self._live.values() if q.stream >= live), key=lambda q: q.stream, reverse=True)
        for gap, sequence in zip(gaps, movers):
            self._move(sequence.stream, gap)
            sequence.stream = gap

    def _feed(self, stream: int, tokens: list[int], position: int) -> None:
        """Process prompt tokens of one sequence, no logits wanted."""
        batch = self._prompt_batch
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = position + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = stream
            batch.logits[i] = 0
        batch.n_tokens = len(tokens)
        self._decode(batch, "process the prompt")

    def _decode(self, batch, doing: str) -> None:
        if lib.llama_decode(self._model._ctx, batch) != 0:
            self._forget_all()
            detail = self._last_error()
            raise BackendError(f"llama.cpp failed to {doing}" + (f": {detail}" if detail else ""))

    def _forget_all(self) -> None:
        """After a failed decode nothing in the cache can be trusted: every sequence ends, every stream empties."""
        self._live.clear()
        for stream, cached in enumerate(self._model._caches):
            lib.llama_memory_seq_rm(self._model._memory, stream, -1, -1)
            cached.clear()

    # --- decoding ---------------------------------------------------------------

    def step(self) -> list[tuple[int, BackendEvent]]:
        if not self._live:
            return []
        self._compact()
        model = self._model
        # In stream order (consecutive ids: one pass), which also keeps results from depending on admissions.
        order = sorted(self._live.items(), key=lambda item: item[1].stream)
        batch = self._step_batch
        for i, (_, sequence) in enumerate(order):
            batch.token[i] = sequence.pending
            batch.pos[i] = sequence.position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence.stream
            batch.logits[i] = 1
        batch.n_tokens = len(order)
        self._decode(batch, "decode")
        now = time.perf_counter()
        events: list[tuple[int, BackendEvent]] = []
        ctx, vocab, n_vocab, piece = model._ctx, model._vocab, model._n_vocab, model._piece
        for i, (handle, sequence) in enumerate(order):
            model._caches[sequence.stream].append(sequence.pending)
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, i), shape=(n_vocab,))  # no copy
            token = sequence.sampler.sample(logits)
            sequence.stepped(now)
            if lib.llama_vocab_is_eog(vocab, token):
                events.extend(self._end(handle, "stop"))
                continue
            sequence.generated += 1
            n = lib.llama_token_to_piece(vocab, token, piece, 256, 0, False)
            events.append((handle, TextDelta(sequence.decoder.decode(piece.raw[:n]), ids=(token,))))
            if sequence.generated == sequence.budget:
                events.extend(self._end(handle, "length"))
                continue
            sequence.pending, sequence.position = token, sequence.position + 1
        self._compact()  # (again at the next step: a drop meanwhile may leave a gap)
        return events

    def drop(self, handle: int, reason: FinishReason) -> Finished:
        return self._end(handle, reason)[-1][1]

    def _end(self, handle: int, reason: FinishReason) -> list[tuple[int, BackendEvent]]:
        sequence = self._live.pop(handle)
        events: list[tuple[int, BackendEvent]] = []
        tail = sequence.decoder.decode(b"", final=True)
        if tail:
            events.append((handle, TextDelta(tail, tokens=0)))
        events.append((handle, Finished(reason, sequence.stats())))
        return events

    def close(self) -> None:
        self._live.clear()
        if self._step_batch is not None:
            lib.llama_batch_free(self._step_batch)
            lib.llama_batch_free(self._prompt_batch)
            self._step_batch = self._prompt_batch = None
