"""Memory planning: weights + KV cache + runtime overhead, against this machine's memory.

Pure arithmetic on a model's shape; `ponder plan` prints it, and ask/chat use it to pick a
context that fits when none is given.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

# Bytes per cached key/value element: f16, and llama.cpp's block formats (q8_0 stores 32
# values in 34 bytes, q4_0 in 18).
KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}

# Compute buffers, logits and the runtime itself: llama.cpp's own load log for a 7B model at
# 32k context shows ~0.3-0.5 GiB of compute buffers; the rest is the process.
OVERHEAD_BYTES = int(0.75 * GIB)


@dataclass(frozen=True)
class Shape:
    """What the KV cache size depends on."""

    layers: int
    kv_heads: int
    head_dim: int
    trained_context: int


@dataclass(frozen=True)
class KnownModel:
    name: str
    shape: Shape
    sizes: dict[str, int]  # quantization -> file size in bytes, as the hubs list them (decimal GB)


GB = 10**9
# The DeepSeek-R1 distills of Qwen2.5 (config.json of each): layers, KV heads, head dims, trained context;
# sizes of the common GGUF quantizations and mlx-community conversions (the catalogue's downloads too).
KNOWN_MODELS = {
    "7b": KnownModel("DeepSeek-R1-Distill-Qwen-7B", Shape(28, 4, 128, 131072), {
        "Q4_K_M": int(4.68 * GB), "Q5_K_M": int(5.44 * GB), "Q6_K": int(6.25 * GB), "Q8_0": int(8.10 * GB),
        "mlx-4bit": int(4.28 * GB), "mlx-8bit": int(8.10 * GB)}),
    "1.5b": KnownModel("DeepSeek-R1-Distill-Qwen-1.5B", Shape(28, 2, 128, 131072), {
        "Q4_K_M": int(1.12 * GB), "Q8_0": int(1.89 * GB), "mlx-4bit": int(1.0 * GB)}),
    "14b": KnownModel("DeepSeek-R1-Distill-Qwen-14B", Shape(48, 8, 128, 131072), {
        "Q4_K_M": int(8.99 * GB), "Q5_K_M": int(10.5 * GB), "Q6_K": int(12.1 * GB), "Q8_0": int(15.7 * GB),
        "mlx-4bit": int(8.3 * GB)}),
}


def kv_bytes_per_token(shape: Shape, kv_type: str = "f16") -> float:
    """Keys and values of every layer for one token: 2 x layers x KV heads x dims x bytes."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * KV_BYTES[kv_type]


@dataclass(frozen=True)
class Plan:
    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def plan(weights_bytes: int, shape: Shape, context: int, kv_type: str = "f16", sequences: int = 1) -> Plan:
    """`sequences` decoded together each have a cache of `context` tokens (ponder.parallel)."""
    return Plan(weights_bytes, int(kv_bytes_per_token(shape, kv_type) * context * sequences), OVERHEAD_BYTES)


def largest_context(weights_bytes: int, shape: Shape, budget_bytes: int, kv_type: str = "f16",
                    ceiling: int | None = None, step: int = 1024, sequences: int = 1) -> int:
    """The largest context (a multiple of `step`, at most `ceiling`) whose plan fits in `budget_bytes`; 0 if none."""
    room = budget_bytes - weights_bytes - OVERHEAD_BYTES
    if room <= 0:
        return 0
    tokens = int(room // (kv_bytes_per_token(shape, kv_type) * sequences)) // step * step
    return min(tokens, ceiling or shape.trained_context)


def largest_sequences(weights_bytes: int, shape: Shape, budget_bytes: int, context: int, kv_type: str = "f16") -> int:
    """How many sequences of `context` tokens fit in `budget_bytes` beside the weights; 0 if not one."""
    room = budget_bytes - weights_bytes - OVERHEAD_BYTES
    return max(int(room // (kv_bytes_per_token(shape, kv_type) * context)), 0)


def model_footprint(path: str) -> tuple[Shape, int] | None:
    """The KV shape and weight bytes of a local GGUF file or MLX directory; None if unreadable, or
    if its figures are not whole numbers above 0 (a corrupt or lying header plans nothing)."""
    from pathlib import Path

    from ponder.outside_files import read_json_object

    p = Path(path)
    try:
        if p.is_file():
            from ponder.gguf_header import read_metadata

            meta = read_metadata(p, stop_at="tokenizer.")
            arch = meta["general.architecture"]
            heads = meta[f"{arch}.attention.head_count"]
            head_dim = meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // heads
            shape = Shape(meta[f"{arch}.block_count"], meta.get(f"{arch}.attention.head_count_kv", heads), head_dim,
                          meta.get(f"{arch}.context_length", 0))
            weights = p.stat().st_size
        elif p.is_dir():
            config = read_json_object(p / "config.json")  # not a FIFO's open, which would block
            heads = config["num_attention_heads"]
            head_dim = config.get("head_dim") or config["hidden_size"] // heads
            shape = Shape(config["num_hidden_layers"], config.get("num_key_value_heads", heads), head_dim,
                          config.get("max_position_embeddings", 0))
            weights = sum(f.stat().st_size for f in p.glob("*.safetensors"))
        else:
            return None
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    sizes = (shape.layers, shape.kv_heads, shape.head_dim)
    if not all(type(n) is int and 0 < n < 2**20 for n in sizes) or not (
            type(shape.trained_context) is int and shape.trained_context >= 0):
        return None
    return shape, weights
