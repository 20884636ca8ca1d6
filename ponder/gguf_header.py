"""Just enough of the GGUF format to read a model's metadata without loading it (no engine needed)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
# Scalar value types: struct format by GGUF type id.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
TRUNCATED = "the GGUF header is truncated (the file is cut short; download it again)"
# A header's counts and lengths are checked against the bytes left before anything is read or kept:
# a corrupt or lying one is an error, never gigabytes of memory or minutes of reading.
MAX_STRING = 16 * 2**20  # a chat template is kilobytes
MAX_ITEMS = 2**24  # an array walked item by item: a vocabulary is ~150k strings
MAX_DEPTH = 4  # arrays of arrays: GGUF writers nest at most one level
SMALLEST_KV = 8 + 4 + 1  # a key's length (an empty key), its type, a one-byte value

# llama.cpp's LLAMA_FTYPE values, as general.file_type stores them.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}


class NotGguf(ValueError):
    pass


def is_gguf(path: Path) -> bool:
    """Whether `path` is a regular file that starts with the GGUF magic. Anything else (a FIFO,
    a device) is never opened: reading it could block for ever."""
    try:
        if not Path(path).is_file():
            return False
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_metadata(path: Path, skip_arrays: bool = True, stop_at: str | None = None) -> dict:
    """The key/value metadata of a GGUF file. Arrays (the vocabulary…) are skipped, their
    length kept, unless `skip_arrays` is False. With `stop_at`, reading ends at the first
    key with that prefix (the architecture keys come before "tokenizer.": a 7B model's
    vocabulary and merges then need not be walked). A file cut short raises NotGguf."""
    if not Path(path).is_file():  # a FIFO would block open() for ever
        raise NotGguf(f"{path} is not a regular file")
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise NotGguf(f"{path} is not a GGUF file")
        try:
            return _read_kv(_Reader(f), stop_at, skip_arrays)
        except NotGguf as exc:
            raise NotGguf(f"{path}: {exc}") from None


class _Reader:
    """Reads a GGUF header from an open file; a read or skip past its end raises NotGguf."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise NotGguf(TRUNCATED)
        return struct.unpack(fmt, data)

    def need(self, size: int) -> None:
        """Fail unless `size` more bytes are there: checked before a seek (which succeeds past
        the end), a read (which a corrupt length would make huge) or a loop over a count."""
        if size > self.size - self.f.tell():
            raise NotGguf(TRUNCATED)

    def skip(self, size: int) -> None:
        self.need(size)
        self.f.seek(size, 1)

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        self.need(length)
        if length > MAX_STRING:
            raise NotGguf(f"a metadata string of {length} bytes: the GGUF header is corrupt")
        return self.f.read(length).decode("utf-8", "replace")


def _read_kv(r: _Reader, stop_at: str | None, skip_arrays: bool) -> dict:
    version, _tensors, count = r.unpack("<IQQ")
    if version < 2:
        raise NotGguf(f"GGUF version {version} is too old")
    r.need(count * SMALLEST_KV)
    metadata = {}
    for _ in range(count):
        key = r.string()
        if stop_at and key.startswith(stop_at):
            break
        (kind,) = r.unpack("<I")
        metadata[key] = _value(r, kind, skip_arrays)
    return metadata


def _value(r: _Reader, kind: int, skip_arrays: bool, depth: int = 0):
    if kind == STRING:
        return r.string()
    if kind == ARRAY:
        item_kind, length = r.unpack("<IQ")
        scalar = SCALARS.get(item_kind)
        # a scalar takes its size; a string at least its 8-byte length, an array its 12-byte header
        r.need(length * (struct.calcsize(scalar) if scalar else {STRING: 8, ARRAY: 12}.get(item_kind, 1)))
        if skip_arrays and scalar:
            r.skip(length * struct.calcsize(scalar))
            return length
        if length > MAX_ITEMS or depth >= MAX_DEPTH:
            raise NotGguf(f"an array of {length} items, {depth + 1} deep: the GGUF header is corrupt")
        if skip_arrays and item_kind == STRING:  # the vocabulary: hop over each string
            for _ in range(length):
                (size,) = r.unpack("<Q")
                r.skip(size)
            return length
        if skip_arrays:
            for _ in range(length):
                _value(r, item_kind, skip_arrays, depth + 1)
            return length
        return [_value(r, item_kind, skip_arrays, depth + 1) for _ in range(length)]
    if kind not in SCALARS:
        raise NotGguf(f"unknown GGUF value type {kind}")
    return r.unpack(SCALARS[kind])[0]


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
