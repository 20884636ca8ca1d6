"""Reading GGUF metadata without an engine: a file cut anywhere in its header is NotGguf (a
clear message), never a struct.error; a FIFO is refused, never opened."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ponder.gguf_header import NotGguf, is_gguf, read_metadata


def cut_points(data: bytes, keys) -> list[int]:
    """Every length up to 300 bytes (magic, version, counts, the first keys), then each key's
    position in the file and the middle of each gap between keys, up to the last value."""
    positions = sorted({data.find(key.encode()) for key in keys} - {-1})
    middles = [(a + b) // 2 for a, b in zip(positions, positions[1:])]
    return sorted(set(range(301)) | set(positions) | set(middles))


def test_a_gguf_cut_anywhere_in_its_header_is_not_gguf(tmp_path, tiny_r1_random):
    data = Path(tiny_r1_random).read_bytes()
    keys = read_metadata(tiny_r1_random)  # the whole file reads
    cut = tmp_path / "cut.gguf"
    for length in cut_points(data, keys):
        cut.write_bytes(data[:length])
        with pytest.raises(NotGguf, match="not a GGUF file|truncated") as raised:
            read_metadata(cut)
        assert str(cut) in str(raised.value), length
    for length in (24, 100, 200, 300):  # reading every array in full is guarded the same way
        cut.write_bytes(data[:length])
        with pytest.raises(NotGguf):
            read_metadata(cut, skip_arrays=False)


def test_a_corrupt_length_is_not_gguf(tmp_path, tiny_r1_random):
    data = bytearray(Path(tiny_r1_random).read_bytes()[:4096])
    data[24:32] = (2**64 - 1).to_bytes(8, "little")  # the first key's length
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(NotGguf, match="truncated"):
        read_metadata(bad)


def returns_within(seconds: float, fn, unblock: Path):
    """fn()'s result or exception; fails (instead of hanging the suite) if fn blocks, then
    opens the FIFO `unblock` for writing so that the blocked reader returns."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(seconds)
        pytest.fail(f"{fn} blocked on a FIFO")
    return outcome


def test_a_fifo_is_never_opened(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    assert returns_within(5, lambda: is_gguf(fifo), fifo) == {"value": False}
    outcome = returns_within(5, lambda: read_metadata(fifo), fifo)
    assert isinstance(outcome.get("error"), NotGguf) and "not a regular file" in str(outcome["error"])


def test_is_gguf(tmp_path, tiny_r1_random):
    assert is_gguf(Path(tiny_r1_random))
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    assert not is_gguf(text) and not is_gguf(tmp_path) and not is_gguf(tmp_path / "missing.gguf")
