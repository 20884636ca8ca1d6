"""An MLX model's prompt cache to and from the prompt cache on disk (ponder.prompt_cache): the twin of
llamacpp_state.py.

Before a prompt is processed, the entry sharing the most leading tokens with it is loaded as the model's
cache (where the cache in memory holds less) and cut to the shared part; after a reply, the state of the
tokens the model names (its prompt, or the prompt and the reply) is saved when they reach the store's
min_tokens past what is stored: copied at once on the model's thread (MLX is not used from another),
written on a thread.

Only models whose every layer is a plain KV cache take part: its state is keys and values, cut to any
length. A rotating (sliding-window) cache cannot be cut back once full, a recurrent state (SSM layers) not
at all, and ponder asks for no quantized one. The payload is safetensors of each layer's keys and values,
no longer than the tokens (mlx-lm's save_prompt_cache writes the arrays whole: up to 255 empty tokens more),
checked against the shapes and types this model's cache has before use; a payload that fails is removed.
"""

from __future__ import annotations

import io
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.models.cache import KVCache, trim_prompt_cache

from ponder.prompt_cache import PromptCache, model_identity, shared_length

def state_on_disk(model, path: str, limit_bytes: int | None) -> StateOnDisk | None:
    """The prompt states of an MlxModel on disk, where asked for (`limit_bytes` not None) and its cache can
    be stored; None where the model's files cannot be described either."""
    layers = model.new_cache()
    if limit_bytes is None or not all(type(layer) is KVCache for layer in layers):
        return None
    # Every setting that changes the state: the context, the engine and the device that computed it (a
    # GPU's sums differ from a CPU's in the last bits), the KV cache's kind (not quantized).
    settings = {"context": model.info.context, "kv_cache": "KVCache",
                "engine": f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, {mx.default_device()}"}
    try:
        folder = path if Path(path).exists() else str(_hub_snapshot(path))
        identity = model_identity(folder, "mlx", settings)
    except Exception:  # (an odd hub cache, a file gone meanwhile: no disk cache, the run goes on)
        return None
    return StateOnDisk(model, PromptCache(identity, limit_bytes=limit_bytes))


def _hub_snapshot(repo: str) -> Path:
    from mlx_lm.utils import hf_repo_to_path

    return hf_repo_to_path(repo)


class StateOnDisk:
    """The prompt states of an MlxModel (`new_cache()`, `forward(inputs, cache)`) on disk."""

    def __init__(self, model, cache: PromptCache):
        self._model, self.cache = model, cache
        self._stored: tuple[int, ...] = ()  # the tokens of the entry last loaded or saved
        self._shapes: list[tuple] | None = None  # each layer's keys and values: shape but the tokens', dtype

    def restore(self, tokens: list[int], keep: int) -> tuple[list, int] | None:
        """Where the longest stored prefix of `tokens` beats the `keep` tokens the cache in memory shares:
        a cache loaded from it, and how many tokens of `tokens` it holds (leaving at least one to process)."""
        if len(tokens) - keep < self.cache.min_tokens:
            return None
        hit = self.cache.longest(tokens)
        shared = min(hit.shared, len(tokens) - 1) if hit is not None else 0
        if shared <= keep:
            return None
        payload = self.cache.load(hit)
        if payload is None:
            return None
        layers = self._layers(payload, len(hit.tokens))
        if layers is None:  # a state this model cannot take
            self.cache.discard(hit.path)
            return None
        trim_prompt_cache(layers, len(hit.tokens) - shared)
        self._stored = hit.tokens
        return layers, shared

    def remember(self, held, prompt_length: int, reasoning: bool) -> None:
        """After a reply, save what is worth keeping of `held` (the model's cache and the tokens it holds) if
        that much is not stored yet: a plain model's next prompt holds its reply as written, so the prompt and
        the reply; a reasoning model's drops the reasoning, so the prompt only (the cache is cut to it)."""
        layers, tokens = held.cache, held.tokens[:prompt_length] if reasoning else held.tokens
        if len(tokens) - shared_length(self._stored, tokens) < self.cache.min_tokens:  # (stored, or short)
            return
        if self.cache.busy():  # one copy of a state at a time: this one waits for a later turn
            return
        arrays = {}
        for i, layer in enumerate(layers):
            arrays[f"{i}.keys"], arrays[f"{i}.values"] = (a[:, :, : len(tokens)] for a in (layer.keys, layer.values))
        buffer = io.BytesIO()
        mx.save_safetensors(buffer, arrays)  # (evaluates and copies: the cache goes on changing)
        self._stored = tuple(tokens)
        self.cache.save_later(tokens, buffer.getbuffer())

    def close(self) -> None:
        self.cache.wait()

    def _layers(self, payload: bytearray, count: int) -> list | None:
        """A cache of this model holding the `count` tokens of `payload`; None where it is not one."""
        try:
            arrays = mx.load(io.BytesIO(payload), format="safetensors")
        except (RuntimeError, ValueError):
            return None
        layers = self._model.new_cache()
        shapes = self._layer_shapes()
        if len(layers) != len(shapes) or len(arrays) != 2 * len(layers):
            return None
        for i, (layer, expected) in enumerate(zip(layers, shapes)):
            keys, values = arrays.get(f"{i}.keys"), arrays.get(f"{i}.values")
            if any(a is None or a.ndim != 4 or a.shape[2] != count for a in (keys, values)):
                return None
            if (_shape(keys), _shape(values)) != expected:
                return None
            layer.keys, layer.values, layer.offset = keys, values, count
        mx.eval(list(arrays.values()))
        return layers

    def _layer_shapes(self) -> list[tuple]:
        """What each layer's keys and values are on this model, from one token run through a new cache (once)."""
        if self._shapes is None:
            probe = self._model.new_cache()
            self._model.forward(mx.array([[0]]), probe)
            self._shapes = [(_shape(layer.keys), _shape(layer.values)) for layer in probe]
        return self._shapes


def _shape(array: mx.array) -> tuple:
    """Keys or values of a layer, told apart by all but their length in tokens (axis 2), and their type."""
    return array.shape[:2] + array.shape[3:], array.dtype
