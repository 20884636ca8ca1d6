"""What llama.cpp needs around a model: its log kept for error messages (echoed with --debug), the
thread count it decodes fastest with, and a GGUF path checked before llama.cpp sees it."""

from __future__ import annotations

import collections
import ctypes
import os
import sys
from pathlib import Path

import llama_cpp as lib

from ponder.errors import ModelError, debugging

MAX_THREADS = 512  # GGML_MAX_N_THREADS: more crashes llama.cpp (a segfault, not an error)
# llama.cpp logs through one process-wide callback. Keep recent lines for error messages;
# echo them only when debugging. The callback object must stay referenced for C's sake.
log_lines: collections.deque[str] = collections.deque(maxlen=200)
_log_echo = debugging()


@lib.llama_log_callback
def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", "replace")
    log_lines.append(line)
    if _log_echo:
        sys.stderr.write(line)


lib.llama_log_set(_on_log, ctypes.c_void_p(0))
lib.llama_backend_init()


def last_error(first: bool = False) -> str:
    """The most telling recent llama.cpp log line, for an error message: the last that says something
    failed, or the first (`first`: the cause, where the log was cleared before the failing call)."""
    lines = [line.strip() for line in log_lines if line.strip()]
    words = ("error", "failed", "invalid", "corrupt")
    telling = [line for line in lines if any(word in line.lower() for word in words)]
    if telling:
        return telling[0] if first else telling[-1]
    return lines[-1] if lines else ""


def physical_cores() -> int:
    """llama.cpp decodes fastest on one thread per physical core (as llama-bench defaults)."""
    try:
        siblings = {
            p.read_text().strip()
            for p in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list")
        }
        if siblings:
            return len(siblings)
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def check_gguf(path: str) -> None:
    """Fail early, with a plain message, on paths llama.cpp would reject with a log dump."""
    from ponder.gguf_header import is_gguf

    p = Path(path)
    if not p.exists():
        raise ModelError(f"model not found: {path}")
    if p.is_dir():
        raise ModelError(f"{path} is a directory, not a GGUF file")
    if not is_gguf(p):
        empty = p.is_file() and p.stat().st_size == 0
        raise ModelError(f"{path} is {'empty (0 bytes)' if empty else 'not a GGUF file'}",
                         hint="an interrupted download or copy leaves one: fetch the model again" if empty else None)
