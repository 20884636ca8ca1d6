"""Several sequences decoded together on one llama.cpp context (parallel samples).

The context is made with `n_seq_max` sequences, each with a KV stream of its own (llama.cpp's
non-unified cache): a sequence's context is as long as a single one's, and one that fills it ends
without touching the others. A stream's cache outlives its sequence. A new sequence goes where
`placement` (ponder.backends.base) says: the free stream holding the longest prefix of its prompt, or
a copy of a live one that holds more (`llama_memory_seq_cp`), so N samples of one prompt process it
once and a cut sample's continuation finds its own tokens, whatever else was placed meanwhile. Each
step is one `llama_decode` of one token per live sequence; each sequence samples its own row of
logits with its own seed, and a constrained one (--schema, --choice) keeps its own grammar state (an
AnswerMask, ponder.grammar): its row is masked before its draw, and it ends ("stop") once its answer is
complete.

llama.cpp decodes the streams of a batch in one pass only when their ids run consecutively
(`llama_batch_allocr::split_equal`): streams 0, 2 and 3 would be two passes over the weights. So
before each step the live sequences are gathered into one run of consecutive streams, the run whose
free streams hold the fewest cached tokens (a move writes over one; the stream moved from keeps a
copy). Callers know a sequence by the handle `add` returns, which never changes.
"""

from __future__ import annotations

import codecs
import itertools
import threading
import time
from dataclasses import dataclass, field

import llama_cpp as lib

from ponder.backends.base import BatchedSequence, generation_budget, placement, shared_prefix
from ponder.errors import BackendError
from ponder.events import BackendEvent, Continuation, Finished, FinishReason, GenerationParams, TextDelta
from ponder.sampling import Sampler


class KvStreams:
    """A llama.cpp context's KV streams (its sequence ids), each with the tokens whose keys and values
    it holds. LlamaCppModel.stream uses stream 0; a LlamaCppBatch all of them."""

    def __init__(self, memory, count: int):
        self._memory = memory
        self.tokens: list[list[int]] = [[] for _ in range(count)]  # (each list kept: callers hold them)

    def trim(self, stream: int, keep: int) -> int:
        """Cut a stream to its first `keep` tokens; how many it holds after (0 where its memory cannot be cut
        there, as a recurrent model's state cannot)."""
        if not lib.llama_memory_seq_rm(self._memory, stream, keep, -1):
            lib.llama_memory_seq_rm(self._memory, stream, -1, -1)
            keep = 0
        del self.tokens[stream][keep:]
        return keep

    def copy(self, source: int, target: int) -> None:
        """Make `target` hold what `source` holds (llama.cpp copies across streams only whole, at the next
        decode); `source` keeps its own."""
        lib.llama_memory_seq_rm(self._memory, target, -1, -1)
        lib.llama_memory_seq_cp(self._memory, source, target, -1, -1)
        self.tokens[target][:] = self.tokens[source]

    def forget(self) -> None:
        """Empty every stream (after a failed decode nothing in them can be trusted)."""
        for stream in range(len(self.tokens)):
            self.trim(stream, 0)


@dataclass(kw_only=True)
class _Sequence(BatchedSequence):
    stream: int  # the KV stream (llama.cpp sequence id) it lives in: one of a run of consecutive ones
    position: int  # the pending token's position
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


class LlamaCppBatch:
    """The BatchDecoder of a LlamaCppModel loaded with `sequences` > 1 (see ponder.backends.base)."""

    def __init__(self, model):
        self._model, self._streams = model, model.streams
        self.slots = model.info.sequences
        self._live: dict[int, _Sequence] = {}  # by handle
        self._handles = itertools.count()
        self._step_batch = lib.llama_batch_init(self.slots, 0, 1)
        self._prompt_batch = lib.llama_batch_init(model.chunk, 0, 1)

    def free_slots(self) -> int:
        return self.slots - len(self._live)

    # --- starting a sequence ------------------------------------------------------

    def add(self, prompt: str | Continuation, params: GenerationParams, cancel: threading.Event) -> int | None:
        chunk = self._model.chunk
        started = time.perf_counter()
        tokens = self._model.prompt_ids(prompt)
        budget = generation_budget(len(tokens), self._model.info.context, params.max_tokens)
        mask = self._model.answer_mask(prompt, params)  # (before placing: nothing to undo if it fails)
        stream, keep = self._place(tokens)
        rest = tokens[keep:-1]  # the last prompt token is fed with the next step, for its logits
        for start in range(0, len(rest), chunk):
            if cancel.is_set():
                return None
            self._feed(stream, rest[start:start + chunk], keep + start)
            self._streams.tokens[stream].extend(rest[start:start + chunk])
        handle = next(self._handles)
        self._live[handle] = _Sequence(stream=stream, sampler=Sampler(params.temperature, params.top_p, params.seed),
                                       budget=budget, prompt_tokens=len(tokens), prefilled=len(tokens) - keep,
                                       started=started, pending=tokens[-1], position=len(tokens) - 1, mask=mask)
        return handle

    def _place(self, tokens: list[int]) -> tuple[int, int]:
        """The stream a new sequence takes (see `placement`), cut to the prefix of `tokens` it holds; that length."""
        held = self._streams.tokens
        used = {sequence.stream for sequence in self._live.values()}
        reach = [shared_prefix(cached, tokens) for cached in held]
        stream, source = placement(reach, [len(cached) for cached in held],
                                   [s for s in range(self.slots) if s not in used])
        if source != stream:
            self._streams.copy(source, stream)
        return stream, self._streams.trim(stream, reach[source])

    def _compact(self) -> None:
        """Gather the live sequences into one run of consecutive streams: the run whose free streams (those
        the moves write over) hold the fewest tokens, then the one needing the fewest moves, then the lowest."""
        count, used = len(self._live), {sequence.stream for sequence in self._live.values()}
        if not used or max(used) - min(used) == count - 1:
            return
        held = self._streams.tokens

        def gaps(start: int) -> list[int]:
            return [s for s in range(start, start + count) if s not in used]

        start = min(range(self.slots - count + 1),
                    key=lambda a: (sum(len(held[s]) for s in gaps(a)), len(gaps(a)), a))
        movers = sorted((q for q in self._live.values() if not start <= q.stream < start + count),
                        key=lambda q: q.stream)
        for gap, sequence in zip(gaps(start), movers):
            self._streams.copy(sequence.stream, gap)
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
        try:
            self._model.decode(batch, doing)
        except BackendError:
            self._forget_all()
            raise

    def _forget_all(self) -> None:
        """After a failed step nothing in the cache can be trusted: every sequence ends, every stream empties."""
        self._live.clear()
        self._streams.forget()

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
        broken: dict[int, str] = {}  # handle -> why its grammar failed (ponder's bug): that sequence alone ends
        try:  # every row sampled before anything changes (a broken model's NaN scores fail them all)
            tokens = [self._draw(handle, sequence, model.logits(i), broken)
                      for i, (handle, sequence) in enumerate(order)]
        except BackendError:
            self._forget_all()
            raise
        now = time.perf_counter()
        events: list[tuple[int, BackendEvent]] = []
        for (handle, sequence), token in zip(order, tokens):
            self._streams.tokens[sequence.stream].append(sequence.pending)
            sequence.stepped(now)
            if handle in broken:
                events.extend(self._end(handle, "interrupted", broken[handle]))
                continue
            if model.is_end(token):
                events.extend(self._end(handle, "stop"))
                continue
            sequence.generated += 1
            text = sequence.decoder.decode(model.piece(token))
            events.append((handle, TextDelta(text, ids=(token,))))
            if sequence.mask is not None and self._complete(handle, sequence, token, text, broken):
                # Complete: it ends as at an end of generation ("interrupted" where its grammar broke instead).
                events.extend(self._end(handle, "interrupted" if handle in broken else "stop", broken.get(handle)))
                continue
            if sequence.generated == sequence.budget:
                events.extend(self._end(handle, "length"))
                continue
            sequence.pending, sequence.position = token, sequence.position + 1
        self._compact()  # (again at the next step: a drop meanwhile may leave a gap)
        return events

    @staticmethod
    def _draw(handle: int, sequence: _Sequence, logits, broken: dict[int, str]) -> int:
        """The sequence's next token, from its row masked by its grammar (where its answer is constrained)."""
        if sequence.mask is None:
            return sequence.sampler.sample(logits)
        try:
            return sequence.mask.draw(sequence.sampler, logits)
        except BackendError as exc:
            broken[handle] = exc.one_line()
            return -1

    @staticmethod
    def _complete(handle: int, sequence: _Sequence, token: int, text: str, broken: dict[int, str]) -> bool:
        """Whether the drawn token completed the sequence's constrained answer (or broke its grammar)."""
        try:
            return sequence.mask.took(token, text)
        except BackendError as exc:
            broken[handle] = exc.one_line()
            return True

    def drop(self, handle: int, reason: FinishReason) -> Finished:
        return self._end(handle, reason)[-1][1]

    def _end(self, handle: int, reason: FinishReason, error: str | None = None) -> list[tuple[int, BackendEvent]]:
        sequence = self._live.pop(handle)
        events: list[tuple[int, BackendEvent]] = []
        tail = sequence.decoder.decode(b"", final=True)
        if tail:
            events.append((handle, TextDelta(tail, tokens=0)))
        events.append((handle, Finished(reason, sequence.stats(), error)))
        return events

    def close(self) -> None:
        self._live.clear()
        if self._step_batch is not None:
            lib.llama_batch_free(self._step_batch)
            lib.llama_batch_free(self._prompt_batch)
            self._step_batch = self._prompt_batch = None
