"""Several sequences decoded together on one MLX model (parallel samples).

The live sequences share one batched cache (mlx-lm's BatchKVCache, left-padded): each step is one
model call on one token per sequence, and each sequence samples its own row of log-probabilities
with its own sampler (ponder's, with its own seed); a constrained one (--schema, --choice) keeps its own
grammar state (an AnswerMask, ponder.grammar): its row is masked before its draw, and it ends ("stop")
once its answer is complete. A sequence's prompt is processed alone into a
cache of its own (the slot's), which then joins the batch; when the sequence ends its row leaves the
batch and becomes the slot's cache again. A new prompt starts from the longest prefix of it that any
slot holds (cut from that cache, not computed again), so N samples of one prompt process it once and
a continuation of a sequence just ended only processes its new tokens (`placement` in
ponder.backends.base, the rule llama.cpp's batch follows too).

Slot 0's cache is `MlxModel.stream`'s, so a batch and single calls reuse each other's prompts. The
other slots' caches are freed when the batch closes.

mlx-lm's own BatchGenerator is not used: it processes prompts inside its `next` calls (here `add`
processes them, checking `cancel` between chunks), gives a sequence that joins a first forward pass
apart from the others (a step would be two model calls), and computes each step one ahead, so each
ended or dropped sequence costs one more forward. Its caches are used as it uses them.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import KVCache
from mlx_lm.utils import maybe_set_recommended_wired_limit

from ponder.backends.base import BatchedSequence, generation_budget, placement, shared_prefix
from ponder.errors import BackendError
from ponder.events import BackendEvent, Continuation, Finished, FinishReason, GenerationParams, TextDelta


def masked(logits: mx.array, allowed: np.ndarray) -> mx.array:
    """`logits` (a row, or a row per sequence) with what a grammar forbids (`allowed` False) set to -inf: a
    select in MLX, so the logits stay where they are (no copy to numpy and back)."""
    return mx.where(mx.array(allowed), logits, -mx.inf)


def batchable(cache: list) -> bool:
    """Whether mlx-lm can batch a model's cache: every layer's merges into one that extracts,
    filters and extends rows (plain and rotating KV caches, SSM state caches…)."""
    return bool(cache) and all(hasattr(layer, "merge") for layer in cache)


@dataclass(kw_only=True)
class _Sequence(BatchedSequence):
    fed: list[int]  # the tokens its row of the batched cache holds
    detokenizer: object


@dataclass
class PromptCache:
    """A prompt cache and the tokens whose keys and values it holds: MlxModel.stream's, and each batch
    slot's own (slot 0's is the model's). While a slot's sequence is live this is its prompt (less the
    last token), which the batch holds too; when it ends, its row of the batch."""

    cache: list | None = None
    tokens: list[int] = field(default_factory=list)


class MlxBatch:
    """The BatchDecoder of an MlxModel loaded with `sequences` > 1 (see ponder.backends.base)."""

    def __init__(self, model, make_sampler, chunk: int):
        self._model = model
        self._make_sampler = make_sampler  # (temperature, top_p, seed) -> sampler, as `stream` samples
        self._chunk = chunk  # prompt tokens per model call
        self.slots = model.info.sequences
        self._spare = [PromptCache() for _ in range(self.slots - 1)]  # slots 1…; slot 0 is the model's own
        self._live: dict[int, _Sequence] = {}
        self._rows: list[int] = []  # the slot of each row of the batched cache
        self._batch: list | None = None  # the batched cache, one per layer
        self._steps = 0
        self._old_wired_limit = maybe_set_recommended_wired_limit()
        mx.reset_peak_memory()

    def free_slots(self) -> int:
        return self.slots - len(self._live)

    # --- slots' own caches ------------------------------------------------------

    def _held(self, slot: int) -> PromptCache:
        return self._model.prompt_cache if slot == 0 else self._spare[slot - 1]

    def _hold(self, slot: int, cache: list | None, tokens: list[int]) -> None:
        if slot == 0:  # (the model's stays a cache: its `stream` extends it)
            self._model.prompt_cache = PromptCache(cache, tokens) if cache is not None else PromptCache(
                self._model.new_cache())
        else:
            self._spare[slot - 1] = PromptCache(cache, tokens)

    # --- starting a sequence ------------------------------------------------------

    def add(self, prompt: str | Continuation, params: GenerationParams, cancel: threading.Event) -> int | None:
        model, chunk = self._model, self._chunk
        started = time.perf_counter()
        tokens = model.prompt_ids(prompt)
        budget = generation_budget(len(tokens), model.info.context, params.max_tokens)
        mask = model.answer_mask(prompt, params)  # (before placing: nothing to undo if it fails)
        slot = self._place(tokens)
        held = self._held(slot)
        keep = len(held.tokens)
        cache, fed = held.cache, held.tokens
        rest = tokens[keep:-1]  # the last prompt token is fed with the next step, for its logits
        try:
            with mx.stream(generation_stream):
                for start in range(0, len(rest), chunk):
                    if cancel.is_set():
                        return None
                    part = rest[start:start + chunk]
                    model.forward(mx.array(part)[None], cache)
                    mx.eval([layer.state for layer in cache])
                    fed = fed + part
                    self._hold(slot, cache, fed)
                    mx.clear_cache()
                row = [layer.merge([layer]) for layer in cache]
                if self._batch is None:
                    self._batch = row
                else:
                    for batched, new in zip(self._batch, row):
                        batched.extend(new)
        except Exception as exc:  # one line for the user, as `stream` gives
            self._forget_all()  # a layer's cache may have taken the prompt, or joined the batch, and the next not
            raise BackendError(f"MLX failed to process the prompt: {one_line(exc)}") from exc
        self._rows.append(slot)
        self._live[slot] = _Sequence(sampler=self._make_sampler(params.temperature, params.top_p, params.seed),
                                     budget=budget, prompt_tokens=len(tokens), prefilled=len(tokens) - keep,
                                     started=started, pending=tokens[-1], fed=list(fed),
                                     detokenizer=model.detokenizer(), mask=mask)
        return slot

    def _place(self, tokens: list[int]) -> int:
        """The slot a new sequence takes (see `placement`), its own cache cut to the prefix of `tokens` it
        gives (a copy of another slot's where that one gives more)."""
        held = [self._held(slot) for slot in range(self.slots)]
        reach = [self._reach(h, tokens) for h in held]
        slot, source = placement(reach, [len(h.tokens) for h in held],
                                 [s for s in range(self.slots) if s not in self._live])
        keep = reach[source]
        cache = _prefix(held[source].cache, keep, copied=source != slot) if keep else None
        self._hold(slot, cache or self._model.new_cache(), held[source].tokens[:keep])
        return slot

    @staticmethod
    def _reach(held: PromptCache, tokens: list[int]) -> int:
        """How much of `tokens` a slot's cache can give: its shared prefix, where the cache can be cut there."""
        if held.cache is None:
            return 0
        keep = shared_prefix(held.tokens, tokens)
        if keep < len(held.tokens) and not all(layer.is_trimmable() for layer in held.cache):
            return 0
        return keep

    # --- decoding ---------------------------------------------------------------

    def step(self) -> list[tuple[int, BackendEvent]]:
        if not self._live:
            return []
        sequences = [self._live[slot] for slot in self._rows]
        broken: dict[int, str] = {}  # slot -> why its grammar failed (ponder's bug): that sequence alone ends
        try:
            with mx.stream(generation_stream):
                inputs = mx.array([[sequence.pending] for sequence in sequences])
                logits = self._model.forward(inputs, self._batch)[:, -1, :]
                logits = self._limit(logits, sequences, broken)
                logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
                sampled = mx.concatenate([sequence.sampler(logprobs[i:i + 1]) for i, sequence in enumerate(sequences)])
                tokens = sampled.tolist()
        except Exception as exc:
            self._forget_all()
            raise BackendError(f"MLX failed to decode: {one_line(exc)}") from exc
        now = time.perf_counter()
        events: list[tuple[int, BackendEvent]] = []
        ended: list[tuple[int, FinishReason]] = []
        for slot, sequence, token in zip(list(self._rows), sequences, tokens):
            sequence.fed.append(sequence.pending)
            sequence.stepped(now)
            if slot in broken:
                ended.append((slot, "interrupted"))
                continue
            if token in self._model.end_ids:  # the end-of-sequence token: not text, not counted
                ended.append((slot, "stop"))
                continue
            sequence.generated += 1
            sequence.detokenizer.add_token(token)
            complete = sequence.mask is not None and self._complete(slot, sequence, token, broken)
            if complete or sequence.generated == sequence.budget:
                sequence.detokenizer.finalize()  # as `stream` gives the last token: with what was held back
                events.append((slot, TextDelta(sequence.detokenizer.last_segment, ids=(token,))))
                # A complete answer ends as at an end of generation ("interrupted" where its grammar broke).
                ended.append((slot, ("interrupted" if slot in broken else "stop") if complete else "length"))
                continue
            events.append((slot, TextDelta(sequence.detokenizer.last_segment, ids=(token,))))
            sequence.pending = token
        for slot, reason in ended:
            events.extend(self._end(slot, reason, broken.get(slot)))
        self._steps += 1
        if not self._steps % 256:
            mx.clear_cache()
        return events

    def _limit(self, logits: mx.array, sequences: list[_Sequence], broken: dict[int, str]) -> mx.array:
        """The rows masked by their sequences' grammars (a row without one, or still reasoning, left as it is)."""
        rows = [self._allowed(slot, sequence, broken) for slot, sequence in zip(self._rows, sequences)]
        if all(row is None for row in rows):
            return logits
        free = np.ones(logits.shape[-1], dtype=bool)
        return masked(logits, np.stack([free if row is None else row for row in rows]))

    @staticmethod
    def _allowed(slot: int, sequence: _Sequence, broken: dict[int, str]) -> np.ndarray | None:
        if sequence.mask is None:
            return None
        try:
            return sequence.mask.allowed()
        except BackendError as exc:
            broken[slot] = exc.one_line()
            return None

    def _complete(self, slot: int, sequence: _Sequence, token: int, broken: dict[int, str]) -> bool:
        """Whether the drawn token completed the sequence's constrained answer (or broke its grammar). The
        grammar sees the token's own text: the detokenizer may hold back the `</think>` it waits for."""
        mask = sequence.mask
        try:
            return mask.took(token, "" if mask.active else self._model.piece(token))
        except BackendError as exc:
            broken[slot] = exc.one_line()
            return True

    def drop(self, slot: int, reason: FinishReason) -> Finished:
        return self._end(slot, reason)[-1][1]

    def _end(self, slot: int, reason: FinishReason, error: str | None = None) -> list[tuple[int, BackendEvent]]:
        sequence = self._live.pop(slot)
        row = self._rows.index(slot)
        # The row leaves the batch and becomes the slot's own cache again.
        if any(layer.empty() for layer in self._batch):  # nothing processed yet (one-token prompts, no step)
            self._hold(slot, None, [])
        else:
            self._hold(slot, [layer.extract(row) for layer in self._batch], sequence.fed)
        del self._rows[row]
        if self._rows:
            for layer in self._batch:
                layer.filter([i for i in range(len(self._rows) + 1) if i != row])
        else:
            self._batch = None
        events: list[tuple[int, BackendEvent]] = []
        sequence.detokenizer.finalize()
        tail = sequence.detokenizer.last_segment
        if tail:
            events.append((slot, TextDelta(tail, tokens=0)))
        events.append((slot, Finished(reason, sequence.stats(mx.get_peak_memory()), error)))
        return events

    def _forget_all(self) -> None:
        """After a failed step nothing in the batch can be trusted: every sequence ends, every slot empties."""
        self._live.clear()
        self._rows.clear()
        self._batch = None
        for slot in range(self.slots):
            self._hold(slot, None, [])

    def close(self) -> None:
        self._live.clear()
        self._rows.clear()
        self._batch = None
        self._spare = [PromptCache() for _ in range(self.slots - 1)]
        if self._old_wired_limit is not None:
            mx.synchronize(generation_stream)
            mx.set_wired_limit(self._old_wired_limit)
            self._old_wired_limit = None


def _prefix(cache: list, keep: int, copied: bool) -> list:
    """`cache` cut to its first `keep` tokens: in place, or a copy of it."""
    if copied:
        if all(type(layer) is KVCache for layer in cache):
            return [_kv_prefix(layer, keep) for layer in cache]
        cache = copy.deepcopy(cache)
    for layer in cache:
        if layer.size() > keep:
            layer.trim(layer.size() - keep)
    return cache


def _kv_prefix(layer: KVCache, keep: int) -> KVCache:
    """A KVCache holding the first `keep` tokens of `layer`: a slice of its arrays, which MLX never
    writes into (a write makes a new array), so the two stay apart."""
    cut = KVCache()
    if layer.keys is not None and keep:
        cut.keys, cut.values = layer.keys[..., :keep, :], layer.values[..., :keep, :]
        cut.offset = keep
    return cut




def one_line(exc: BaseException) -> str:
    """An exception's first line, for a one-line error."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
