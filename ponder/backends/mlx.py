"""Apple's MLX through mlx-lm: a model directory in the mlx-community layout, or a hub repo id.

Decoding is mlx-lm's own `stream_generate` (its asynchronous step pipeline and Metal wired
memory limit), or with speculation ponder's own loop over mlx-lm's cache (mlx_decode; a draft model:
mlx_draft), driven with ponder's prompt text, a sampler that applies temperature before top-p as the
llama.cpp backend does, and a prompt cache kept between calls (and on disk: mlx_state) so a prompt that
extends an earlier one only processes its new tokens. A constrained answer (--schema, --choice) masks the
logits: a logits processor of mlx-lm's stream, or the speculative loop's own draws.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.utils import load as mlx_load

from ponder.backends.base import (BackendProbe, LoadOptions, ModelInfo, backend_stats, generation_budget, prompt_tokens,
                                 shared_prefix)
from ponder.backends.mlx_batch import MlxBatch, PromptCache, batchable, one_line
from ponder.backends.mlx_decode import PROMPT_CHUNK, DecodeResult, MlxSampler, plain_reply, speculative_reply
from ponder.backends.mlx_draft import DraftModel, check_vocabulary
from ponder.backends.mlx_state import state_on_disk
from ponder.defaults import DEFAULT_CONTEXT
from ponder.errors import BackendError, ModelError
from ponder.events import BackendEvent, Continuation, Finished, GenerationParams
from ponder.prompt import ChatFormat, is_reasoning_model
from ponder.reasoning import OPEN_TAG
from ponder.speculate import Speculation, speculation_for

# A tokenizer in any of the layouts transformers reads; without one it would load a
# vocabulary-less tokenizer and generate garbage.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class MlxBackend:
    name = "mlx"

    def load(self, path: str, options: LoadOptions) -> MlxModel:
        return MlxModel(path, options)

    @staticmethod
    def probe() -> BackendProbe:
        metal = mx.metal.is_available()
        return BackendProbe(
            usable=True,
            version=f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}",
            acceleration="Metal" if metal else "none (CPU only)",
        )


def check_model_dir(path: Path) -> None:
    """Plain messages for the directories mlx-lm would reject with a traceback."""
    if not path.is_dir():
        raise ModelError(f"{path} is not an MLX model directory")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} is not a model directory: it has no config.json",
            hint="an MLX model directory holds config.json, *.safetensors and tokenizer files",
        )
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}/config.json cannot be read: {exc}") from exc
    if next(path.glob("*.safetensors"), None) is None:
        raise ModelError(f"{path} has no weights (*.safetensors)", hint="the download may be incomplete")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{path} has no tokenizer (tokenizer.json)", hint="the download may be incomplete")


def _ignored(options: LoadOptions) -> tuple[str, ...]:
    """The options set that MLX has no counterpart for: it picks its own threads, has no
    per-layer placement, and always uses its fused attention (so only turning that off is unmet)."""
    unmet = {
        "threads": options.threads is not None,
        "gpu_layers": options.gpu_layers is not None,
        "flash_attention": not options.flash_attention,
    }
    return tuple(name for name, missed in unmet.items() if missed)


def _installed_mlx_lm_at_fault(exc: BaseException) -> bool:
    """Whether a load failed in mlx-lm's own code rather than over the files: a call or name
    this mlx-lm lacks, or an architecture it has no module for (a ValueError from an ImportError)."""
    return isinstance(exc, (TypeError, AttributeError, ImportError)) or isinstance(exc.__cause__, ImportError)


def load_files(path: str) -> tuple:
    """mlx-lm's model, tokenizer and config of `path` (a directory, or a hub repo id); every failure one line."""
    local = Path(path)
    if local.exists():
        check_model_dir(local)
    try:
        return mlx_load(path, return_config=True)
    except Exception as exc:  # mlx-lm and the hub raise many kinds; each becomes one line
        if _installed_mlx_lm_at_fault(exc):
            raise BackendError(
                f"mlx-lm {mlx_lm.__version__} cannot load {path}: {one_line(exc)}",
                hint="pip install -U mlx-lm",
            ) from exc
        if not local.exists():
            raise ModelError(
                f"cannot fetch {path} from the Hugging Face hub: {one_line(exc)}",
                hint="check the repo id and the network (with HF_HUB_OFFLINE=1 only the local cache is used)",
            ) from exc
        raise ModelError(
            f"mlx-lm could not load {path}: {one_line(exc)}",
            hint="the weights may be truncated or corrupt; download them again",
        ) from exc


class MlxModel:
    def __init__(self, path: str, options: LoadOptions):
        local = Path(path)
        self._model, self._tokenizer, config = load_files(path)
        trained = int(config.get("max_position_embeddings") or DEFAULT_CONTEXT)
        tok = self._tokenizer
        self._bos_text = tok.bos_token or ""
        template = tok.chat_template if isinstance(tok.chat_template, str) else None
        chat = ChatFormat(
            template=template,
            bos_token=self._bos_text,
            eos_token=tok.eos_token or "",
            reasoning=is_reasoning_model(template, tok.encode(OPEN_TAG, add_special_tokens=False)),
        )
        self.prompt_cache = PromptCache(self.new_cache())  # `stream`'s, and a batch's slot 0
        self.end_ids = frozenset(tok.eos_token_ids)  # tokens that end a reply
        self.n_vocab = getattr(getattr(self._model, "args", None), "vocab_size", None) or len(tok.vocab)  # logits
        self._grammar_vocabulary = None  # llguidance's view of it, built for the first constrained answer
        self._drafter = None  # the draft model (LoadOptions.draft), loaded as the model is; same vocabulary
        self.speculation: Speculation | None = None  # the latest reply's (read after a stream stopped early)
        if options.draft:
            draft, draft_tokenizer, _ = load_files(options.draft)
            check_vocabulary(draft_tokenizer, tok, options.draft, path)
            self._drafter = DraftModel(draft, self.n_vocab)
        # Several sequences only where mlx-lm can batch this model's cache; else one after another.
        sequences = max(1, options.sequences) if batchable(self.prompt_cache.cache) else 1
        self.info = ModelInfo(
            name=local.name if local.exists() else path,
            path=path,
            backend=MlxBackend.name,
            context=options.context or min(DEFAULT_CONTEXT, trained),
            trained_context=trained,
            chat=chat,
            ignored=_ignored(options) + (("sequences",) if sequences < options.sequences else ()),
            sequences=sequences,
        )
        self._disk = state_on_disk(self, path, options.prompt_cache_bytes)

    def tokenize(self, text: str) -> list[int]:
        # As in the llama.cpp backend: the template writes BOS's text; add BOS only where it did not.
        add_special = not (self._bos_text and text.startswith(self._bos_text))
        return list(self._tokenizer.encode(text, add_special_tokens=add_special))

    def prompt_ids(self, prompt: str | Continuation) -> list[int]:
        def plain(text: str) -> list[int]:  # (no BOS)
            return list(self._tokenizer.encode(text, add_special_tokens=False))

        return prompt_tokens(prompt, self.tokenize, plain, self.n_vocab)

    # --- what the batch decoder shares --------------------------------------------

    def forward(self, inputs: mx.array, cache: list) -> mx.array:
        """The network on `inputs` (sequences x tokens), extending `cache`: the logits."""
        return self._model(inputs, cache=cache)

    def new_cache(self) -> list:
        return make_prompt_cache(self._model)

    def detokenizer(self):
        """A streaming detokenizer for one sequence."""
        return self._tokenizer.detokenizer

    def piece(self, token: int) -> str:
        """One token's text alone (for the grammar, to see `</think>` at once: a streaming detokenizer may
        hold text back)."""
        return self._tokenizer.decode([token])

    def answer_mask(self, prompt: str | Continuation, params: GenerationParams):
        """The grammar state of a reply that `params.constraint` constrains (ponder.grammar), or None."""
        if params.constraint is None:
            return None
        from ponder.grammar import AnswerMask, closes_reasoning, mlx_vocabulary

        if self._grammar_vocabulary is None:  # (about a second on a 152k vocabulary: once a model)
            self._grammar_vocabulary = mlx_vocabulary(self._tokenizer, self.n_vocab)
        started = closes_reasoning(prompt, self.info.chat.reasoning)
        return AnswerMask(self._grammar_vocabulary, params.constraint, started, self.n_vocab)

    def stream(
        self, prompt: str, params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[BackendEvent]:
        started = time.perf_counter()
        tokens = self.prompt_ids(prompt)
        budget = generation_budget(len(tokens), self.info.context, params.max_tokens)
        cancel = cancel or threading.Event()
        mask = self.answer_mask(prompt, params)
        speculation = self.speculation = self._speculation(params, cancel)
        sampler = MlxSampler(params.temperature, params.top_p, params.seed)
        mx.reset_peak_memory()
        result, prefilled = DecodeResult(started), None
        try:
            new = self._reuse_cache(tokens)
            prefilled = len(new)
            if speculation is None:
                yield from plain_reply(self, new, sampler, mask, budget, cancel, result)
            else:
                yield from speculative_reply(self, new, sampler, mask, speculation, budget, cancel, list(tokens),
                                             result)
        except Exception as exc:  # MLX raises plain ValueError, RuntimeError…: the user gets one line
            # A failed step may leave the layers' caches uneven: the next call starts afresh.
            self.prompt_cache = PromptCache(self.new_cache())
            if isinstance(exc, BackendError):  # (the answer's grammar broke: ponder's own message)
                raise
            raise BackendError(f"MLX failed to generate: {one_line(exc)}") from exc
        finally:
            self._settle_cache(tokens + result.ids)
        if self._disk is not None and not isinstance(prompt, Continuation):  # (a continuation's: never again)
            self._disk.remember(self.prompt_cache, len(tokens), self.info.chat.reasoning)
        stats = backend_stats(len(tokens), len(result.ids), started, result.first, result.last, time.perf_counter(),
                              mx.get_peak_memory(), prefilled)
        yield Finished(result.reason, replace(stats, speculation=speculation and speculation.stats()))

    def _speculation(self, params: GenerationParams, cancel: threading.Event) -> Speculation | None:
        """The reply's speculative decoding; none where the model's cache cannot be cut back (a recurrent
        model's): mlx-lm's stream_generate then decodes, as with "off". (A sliding window's can until it is
        full: the loop then stops guessing.)"""
        speculation = speculation_for(params.speculate, self._drafter, repeatable=params.repeatable)
        if speculation is None or not can_trim_prompt_cache(self.new_cache()):  # (of its kind: a new one)
            return None
        if self._drafter is not None:
            self._drafter.cancel = cancel
        return speculation

    def _reuse_cache(self, tokens: list[int]) -> list[int]:
        """Trim the cache to the longest prefix it shares with `tokens`, or load a longer one from disk; the
        tokens left to feed."""
        held = self.prompt_cache
        keep = shared_prefix(held.tokens, tokens)
        if keep and not can_trim_prompt_cache(held.cache):
            keep = 0
        loaded = self._disk.restore(tokens, keep) if self._disk is not None else None
        if loaded is not None:
            cache, keep = loaded
            self.prompt_cache = PromptCache(cache, tokens[:keep])
        elif keep == 0:
            self.prompt_cache = PromptCache(self.new_cache())
        else:
            trim_prompt_cache(held.cache, _offset(held.cache) - keep)
            self.prompt_cache = PromptCache(held.cache, tokens[:keep])
        return tokens[keep:]

    def _settle_cache(self, fed: list[int]) -> None:
        """Record which tokens the cache now holds (mlx-lm feeds each yielded token back in)."""
        cache = self.prompt_cache.cache
        offset = _offset(cache)
        if offset > len(fed):
            trim_prompt_cache(cache, offset - len(fed))
            offset = len(fed)
        self.prompt_cache = PromptCache(cache, fed[:offset])

    def batch(self):
        """A decoder of `info.sequences` sequences at once (ponder.backends.mlx_batch); its slot 0 is
        this model's own prompt cache."""
        return MlxBatch(self, MlxSampler, PROMPT_CHUNK)

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()  # its writes finish
        if self._drafter is not None:
            self._drafter.close()
        self._model = self._tokenizer = self.prompt_cache = self._disk = self._drafter = None
        mx.clear_cache()


def _offset(cache) -> int:
    return cache[0].offset if cache else 0
