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


# DeepSeek-R1-Distill-Qwen-7B (Qwen2.5-Math-7B): 28 layers, 4 KV heads of 128 dims, 128k trained.
R1_7B = Shape(layers=28, kv_heads=4, head_dim=128, trained_context=131072)


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


def plan(weights_bytes: int, shape: Shape, context: int, kv_type: str = "f16") -> Plan:
    return Plan(weights_bytes, int(kv_bytes_per_token(shape, kv_type) * context), OVERHEAD_BYTES)


def largest_context(weights_bytes: int, shape: Shape, budget_bytes: int, kv_type: str = "f16",
                    ceiling: int | None = None, step: int = 1024) -> int:
    """The largest context (a multiple of `step`, at most `ceiling`) whose plan fits in `budget_bytes`; 0 if none."""
    room = budget_bytes - weights_bytes - OVERHEAD_BYTES
    if room <= 0:
        return 0
    tokens = int(room // kv_bytes_per_token(shape, kv_type)) // step * step
    return min(tokens, ceiling or shape.trained_context)
