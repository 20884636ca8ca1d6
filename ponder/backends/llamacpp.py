"""llama.cpp through llama-cpp-python's low-level bindings.

The high-level `Llama` class is skipped on purpose: its per-token path copies the full
logits row and runs Python-side stop checks (82-91% of llama.cpp's own decode speed),
its `verbose=False` points fds 1 and 2 at /dev/null while loading, and it prints to
stderr. Here one reused single-token batch feeds the decoder, sampling reads the logits
in place (ponder.sampling), and llama.cpp's log goes to a buffer that error messages and
`--debug` draw on.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import llama_cpp as lib
import numpy as np

from ponder.backends.base import (BackendProbe, LoadOptions, ModelInfo, backend_stats, generation_budget, prompt_tokens,
                                 shared_prefix)
from ponder.backends.llamacpp_batch import KvStreams, LlamaCppBatch
from ponder.backends.llamacpp_decode import DecodeResult, decode_reply, feed_in_chunks
from ponder.backends.llamacpp_draft import LlamaCppDrafter, check_draft
from ponder.backends.llamacpp_setup import MAX_THREADS, log_lines, check_gguf, last_error, physical_cores
from ponder.defaults import DEFAULT_CONTEXT
from ponder.errors import BackendError, ModelError, UsageError
from ponder.events import BackendEvent, Continuation, Finished, GenerationParams, TextDelta
from ponder.prompt import ChatFormat, is_reasoning_model
from ponder.reasoning import OPEN_TAG
from ponder.sampling import Sampler
from ponder.speculate import Speculation, speculation_for

PROMPT_CHUNK = 512  # prompt tokens per decode call; cancellation is checked between chunks


class LlamaCppBackend:
    name = "llama.cpp"

    def load(self, path: str, options: LoadOptions) -> LlamaCppModel:
        return LlamaCppModel(path, options)

    @staticmethod
    def probe() -> BackendProbe:
        offload = gpu_offload_supported()
        return BackendProbe(
            usable=True,
            version=f"llama-cpp-python {lib.__version__}",
            acceleration="GPU offload" if offload else "none (CPU build)",
        )


def gpu_offload_supported() -> bool:
    return bool(lib.llama_supports_gpu_offload())


class LlamaCppModel:
    # Every llama.cpp model computes on one thread (ponder.threads). llama.cpp's CPU backend runs each call on
    # an OpenMP team of the calling thread's; a thread of another model keeps its own team, and once libgomp
    # manages more threads than there are cores it sleeps at every barrier instead of spinning: a model loaded
    # after another one was used decoded 25-35% slower (250 context switches a token, not 0.5).
    shares_thread = True

    def __init__(self, path: str, options: LoadOptions):
        check_gguf(path)
        if options.draft:
            check_draft(options.draft)  # before the larger model loads
        if options.threads is not None and not 1 <= options.threads <= MAX_THREADS:
            raise UsageError(f"threads must be from 1 to {MAX_THREADS}, not {options.threads}")
        self._model = self._ctx = self._drafter = None
        self.speculation: Speculation | None = None  # the latest reply's (read after a stream stopped early)
        params = lib.llama_model_default_params()
        if options.gpu_layers is not None:
            params.n_gpu_layers = options.gpu_layers
        else:
            params.n_gpu_layers = 999 if gpu_offload_supported() else 0
        log_lines.clear()
        self._model = lib.llama_model_load_from_file(os.fsencode(path), params)
        if not self._model:
            detail = last_error(first=True)
            raise ModelError(
                f"llama.cpp could not load {path}" + (f": {detail}" if detail else ""),
                hint="the file may be truncated or corrupt; download it again",
            )
        self._vocab = lib.llama_model_get_vocab(self._model)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._logits_row = ctypes.c_float * max(self._n_vocab, 1)
        if lib.llama_vocab_type(self._vocab) == lib.LLAMA_VOCAB_TYPE_NONE or self._n_vocab <= 0:
            self.close()  # (llama.cpp aborts the process on the first tokenize without one)
            raise ModelError(f"{path} has no vocabulary: llama.cpp cannot read or write its text",
                             hint="it was converted without its tokenizer; use a GGUF that has one")
        trained = lib.llama_model_n_ctx_train(self._model)
        context = options.context or min(DEFAULT_CONTEXT, trained)

        sequences = max(1, options.sequences)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = context * sequences  # a KV stream of `context` tokens for each sequence
        cparams.n_seq_max = sequences
        cparams.kv_unified = False
        cparams.n_batch = PROMPT_CHUNK
        cparams.n_ubatch = PROMPT_CHUNK
        threads = options.threads or physical_cores()
        cparams.n_threads = threads
        # Calls of many tokens (prompt chunks, guesses) gain from every logical CPU, unless --threads says how many:
        # on a busy machine a thread more than the cores free spins at every barrier (with -t 1, guesses ran 8-15x slower)
        cparams.n_threads_batch = threads if options.threads else max(threads, os.cpu_count() or threads)
        cparams.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_AUTO if options.flash_attention else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            detail = last_error()
            raise BackendError(
                f"llama.cpp could not create a {context}-token context"
                + (f" for each of {sequences} sequences" if sequences > 1 else "") + (f": {detail}" if detail else ""),
                hint="try a smaller --ctx" + (" or fewer parallel samples" if sequences > 1 else ""),
            )
        self.chunk = lib.llama_n_batch(self._ctx)  # prompt tokens per decode (llama.cpp lowers it for small contexts)
        # llama_batch_get_one asks for the logits of each call's last token; a prompt chunk before the last
        # needs none, and computing them costs a small model with a large vocabulary 8% of its prompt speed.
        self._no_logits = (ctypes.c_int8 * self.chunk)()
        # A KV stream per sequence and the tokens each holds; `stream` uses stream 0, `batch()` all.
        self.streams = KvStreams(lib.llama_get_memory(self._ctx), sequences)
        self._cached = self.streams.tokens[0]
        self._piece = ctypes.create_string_buffer(256)
        self._vocabulary = None  # llguidance's view of the vocabulary, built for the first constrained answer
        self._disk = self._state_on_disk(path, options, params.n_gpu_layers)

        template = lib.llama_model_chat_template(self._model, None)
        template_text = template.decode("utf-8") if template else None
        bos = lib.llama_vocab_bos(self._vocab)
        eos = lib.llama_vocab_eos(self._vocab)
        self._add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab)) and bos >= 0
        self._bos_text = self._token_text(bos)
        chat = ChatFormat(
            template=template_text,
            bos_token=self._bos_text,
            eos_token=self._token_text(eos),
            reasoning=is_reasoning_model(template_text, self._tokenize(OPEN_TAG, add_bos=False)),
        )
        self.info = ModelInfo(
            name=self._meta("general.name") or Path(path).stem,
            path=path,
            backend=LlamaCppBackend.name,
            context=lib.llama_n_ctx_seq(self._ctx),
            trained_context=trained,
            chat=chat,
            ignored=("gpu_layers",) if options.gpu_layers and not gpu_offload_supported() else (),  # a CPU build
            sequences=sequences,
        )
        if options.draft:  # its own context, as large as a sequence's here, with the same threads and offload
            try:
                self._drafter = LlamaCppDrafter(options.draft, path, self._vocab, cparams, self.info.context,
                                                params.n_gpu_layers)
            except BaseException:
                self.close()
                raise

    def _state_on_disk(self, path: str, options: LoadOptions, gpu_layers: int):
        """Stream 0's prompt states on disk (ponder.backends.llamacpp_state), where asked for."""
        if options.prompt_cache_bytes is None:
            return None
        from ponder.backends.llamacpp_state import StateOnDisk, cache_for

        settings = {"context": lib.llama_n_ctx_seq(self._ctx), "sequences": max(1, options.sequences),
                    "flash_attention": options.flash_attention, "gpu_layers": gpu_layers,
                    "offload": gpu_offload_supported()}
        cache = cache_for(path, settings, options.prompt_cache_bytes)
        return StateOnDisk(self._ctx, self.streams, cache) if cache is not None else None

    # --- metadata -------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1024)
        n = lib.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = lib.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", "replace") if text else ""

    # --- tokens ---------------------------------------------------------------

    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        ids = (lib.llama_token * capacity)()
        n = lib.llama_tokenize(self._vocab, data, len(data), ids, capacity, add_bos, True)
        if n < 0:  # cannot happen with one token per byte plus BOS, but llama.cpp says how many it needs
            capacity = -n
            ids = (lib.llama_token * capacity)()
            n = lib.llama_tokenize(self._vocab, data, len(data), ids, capacity, add_bos, True)
        return list(ids[:n])

    def tokenize(self, text: str) -> list[int]:
        # The chat template writes BOS's text itself; add BOS only where it did not.
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self._tokenize(text, add_bos)

    def prompt_ids(self, prompt: str | Continuation) -> list[int]:
        return prompt_tokens(prompt, self.tokenize, lambda text: self._tokenize(text, False), self._n_vocab)

    # --- what the batch decoder shares --------------------------------------------

    def decode(self, batch, doing: str) -> None:
        """One llama_decode; BackendError, with llama.cpp's own word on it, where it fails."""
        if lib.llama_decode(self._ctx, batch) != 0:
            detail = last_error()
            raise BackendError(f"llama.cpp failed to {doing}" + (f": {detail}" if detail else ""))

    def logits(self, row: int) -> np.ndarray:
        """The logits of a decoded batch's row (-1: the last), read in place: valid until the next decode."""
        # (a view by address: np.ctypeslib.as_array builds the same through several Python calls, and every
        # call of this loop runs on caches the decode has just swept, where each costs microseconds)
        address = ctypes.cast(lib.llama_get_logits_ith(self._ctx, row), ctypes.c_void_p).value
        if not address:
            raise BackendError(f"llama.cpp kept no scores for row {row} of the last call")
        return np.frombuffer(self._logits_row.from_address(address), dtype=np.float32)

    def piece(self, token: int) -> bytes:
        """A token's text, as bytes (a special token's is empty: it is not the model's words)."""
        n = lib.llama_token_to_piece(self._vocab, token, self._piece, 256, 0, False)
        return self._piece.raw[:n]

    def is_end(self, token: int) -> bool:
        return bool(lib.llama_vocab_is_eog(self._vocab, token))

    def answer_mask(self, prompt: str | Continuation, params: GenerationParams):
        """The grammar state of a reply that `params.constraint` constrains (ponder.grammar), or None."""
        if params.constraint is None:
            return None
        from ponder.grammar import AnswerMask, closes_reasoning, llama_vocabulary

        if self._vocabulary is None:
            ends = [t for t in (lib.llama_vocab_eos(self._vocab), lib.llama_vocab_eot(self._vocab)) if t >= 0]
            self._vocabulary = llama_vocabulary(self._vocab, ends)
        started = closes_reasoning(prompt, self.info.chat.reasoning)
        return AnswerMask(self._vocabulary, params.constraint, started, self._n_vocab)

    # --- generation -------------------------------------------------------------

    def stream(
        self, prompt: str, params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[BackendEvent]:
        started = time.perf_counter()
        tokens = self.prompt_ids(prompt)
        budget = generation_budget(len(tokens), self.info.context, params.max_tokens)
        cancel = cancel or threading.Event()
        # What is worth keeping on disk: a plain model's next prompt holds its reply as written (saved after
        # it); a reasoning model's drops the reasoning, so only its prompt (never a continuation's).
        reasoning = self.info.chat.reasoning
        speculation = self.speculation = self._speculation(params)
        drafting = speculation is not None and speculation.drafter is self._drafter
        prefilled = self._prefill(tokens, cancel, save=reasoning and not isinstance(prompt, Continuation),
                                  draft=self._drafter if drafting else None)
        if prefilled is None:
            now = time.perf_counter()
            yield Finished("cancelled", backend_stats(len(tokens), 0, started, now, now, now))
            return

        sampler = Sampler(params.temperature, params.top_p, params.seed)
        mask = self.answer_mask(prompt, params)
        result = DecodeResult(started)
        yield from decode_reply(self, sampler, mask, speculation, budget, cancel, list(tokens), result)
        if self._disk is not None and not reasoning and not isinstance(prompt, Continuation):
            self._disk.remember(self._cached)
        stats = backend_stats(len(tokens), result.generated, started, result.first, result.last,
                              time.perf_counter(), prefilled=prefilled)
        yield Finished(result.reason, replace(stats, speculation=speculation and speculation.stats()))

    def _speculation(self, params: GenerationParams) -> Speculation | None:
        """The reply's speculative decoding; none where the cache cannot be cut back (a recurrent model's)."""
        if lib.llama_model_is_recurrent(self._model) or lib.llama_model_is_hybrid(self._model):
            return None
        return speculation_for(params.speculate, self._drafter, repeatable=params.repeatable)

    def _prefill(self, tokens: list[int], cancel: threading.Event, save: bool = True, draft=None) -> int | None:
        """Bring the cache to `tokens`, reusing the longest cached prefix (in memory, else on disk), and the
        `draft` model's too; how many tokens the model processed, None if cancelled."""
        keep = self.streams.trim(0, shared_prefix(self._cached, tokens))
        if self._disk is not None:
            keep = self._disk.restore(tokens, keep)
        try:
            if not feed_in_chunks(tokens, keep, self.chunk, self._no_logits,
                                  lambda batch: self.decode(batch, "process the prompt"), self._cached, cancel):
                return None
        except BackendError:
            self.streams.trim(0, len(self._cached))  # what the failed chunk may have left
            raise
        if self._disk is not None and save:
            self._disk.remember(tokens)
        if draft is not None and not draft.prefill(tokens, cancel):
            return None
        return len(tokens) - keep

    def batch(self):
        """A decoder of `info.sequences` sequences at once on this context (ponder.backends.llamacpp_batch)."""
        return LlamaCppBatch(self)

    def close(self) -> None:
        if getattr(self, "_drafter", None) is not None:
            self._drafter.close()
            self._drafter = None
        if getattr(self, "_disk", None) is not None:
            self._disk.close()  # its writes finish before the context goes
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None
