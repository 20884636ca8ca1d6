"""Just enough of the GGUF format to read a model's metadata without loading it (no engine needed)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
# Scalar value types: struct format by GGUF type id.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9

# llama.cpp's LLAMA_FTYPE values, as general.file_type stores them.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}


class NotGguf(ValueError):
    pass


def read_metadata(path: Path, skip_arrays: bool = True, stop_at: str | None = None) -> dict:
    """The key/value metadata of a GGUF file. Arrays (the vocabulary…) are skipped, their
    length kept, unless `skip_arrays` is False. With `stop_at`, reading ends at the first
    key with that prefix (the architecture keys come before "tokenizer.": a 7B model's
    vocabulary and merges then need not be walked)."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise NotGguf(f"{path} is not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise NotGguf(f"{path}: GGUF version {version} is too old")
        metadata = {}
        for _ in range(count):
            key = _string(f)
            if stop_at and key.startswith(stop_at):
                break
            (kind,) = struct.unpack("<I", f.read(4))
            metadata[key] = _value(f, kind, skip_arrays)
        return metadata


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    data = f.read(length)
    if len(data) != length:
        raise NotGguf("the GGUF header is truncated")
    return data.decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int, skip_arrays: bool):
    if kind == STRING:
        return _string(f)
    if kind == ARRAY:
        item_kind, length = struct.unpack("<IQ", f.read(12))
        if skip_arrays and item_kind in SCALARS:
            f.seek(length * struct.calcsize(SCALARS[item_kind]), 1)
            return length
        if skip_arrays and item_kind == STRING:  # the vocabulary: hop over each string
            for _ in range(length):
                (size,) = struct.unpack("<Q", f.read(8))
                f.seek(size, 1)
            return length
        items = [_value(f, item_kind, skip_arrays) for _ in range(length)]
        return length if skip_arrays else items
    if kind not in SCALARS:
        raise NotGguf(f"unknown GGUF value type {kind}")
    fmt = SCALARS[kind]
    data = f.read(struct.calcsize(fmt))
    if len(data) != struct.calcsize(fmt):
        raise NotGguf("the GGUF header is truncated")
    return struct.unpack(fmt, data)[0]


def summary(metadata: dict) -> dict:
    """The facts `ponder models info` shows."""
    arch = metadata.get("general.architecture", "")
    file_type = metadata.get("general.file_type")
    return {
        "name": metadata.get("general.name", ""),
        "architecture": arch,
        "context_length": metadata.get(f"{arch}.context_length"),
        "layers": metadata.get(f"{arch}.block_count"),
        "quantization": FILE_TYPES.get(file_type, str(file_type) if file_type is not None else ""),
        "chat_template": "tokenizer.chat_template" in metadata,
    }
