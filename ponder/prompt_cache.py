"""The prompt cache on disk: a model's state after a prompt, kept so that a later run (any process) that
begins with the same tokens loads it instead of processing them again.

An entry is never another model's or another prompt's state: it is filed under the model's identity (the file's path, size,
modification time and a checksum of its first MiB and of samples spread through the rest, so a file
copied over another of the same size and time is still told apart; the backend and its version; every
setting that changes the state), and it holds the exact token ids it was made from and a checksum of the
state, all checked on load. A truncated, corrupt or mismatched entry is removed and the run goes on
without it. Entries are written whole or not at all (a temporary file renamed; one that a killed process
left is removed after an hour), so two processes saving the same prompt leave one valid entry; the least
recently used go first once the cache is over its size cap.
An entry that is a prefix of a newer one is removed: the newer serves every prompt the older did (a
backend keeps only the shared part of what it loads).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from array import array

from ponder.prompt_cache_files import (MAGIC, SUFFIX, all_entries, named_entries, open_entry, remove, remove_entry,
                                       remove_stale_writes, touch, trusted)

CACHE_DIR_ENV = "PONDER_CACHE_DIR"  # default: the platform's user cache dir
FORMAT = 1
DEFAULT_LIMIT_GIB = 4.0
# Prompts shorter than this are neither stored nor looked up. Loading beats processing at every length
# measured, by 100x and more (benchmarks/prompt_cache_bench.py, SmolLM2, the fastest model here: 64 tokens
# load in 2 ms, processing them takes a tenth of a second or more), so this is not where loading starts to
# pay: it is past what unrelated prompts share anyway (the chat template and its system prompt, up to ~40
# tokens), and a chat is saved again once this many of its tokens are new, so a resumed chat processes at
# most this many again.
MIN_TOKENS = 64
_HEADER = struct.Struct("<8sI")  # magic, length of the JSON that follows
# Of a model file, checksummed into its identity: the first MiB (a GGUF's header, much of its metadata) and
# 64 KiB at 16 places through the rest, the last at its end (the weights: a fine-tune differs there).
_HEAD_BYTES, _SAMPLES, _SAMPLE_BYTES = 1 << 20, 16, 1 << 16


def cache_dir() -> Path:
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ponder", appauthor=False)) / "prompt-cache"


def cache_problem() -> str | None:
    """Why no prompt state can be kept where the cache is set to be (None: it can), for the CLI to say: else
    nothing would ever load or save, silently. A relative PONDER_CACHE_DIR is refused (as the XDG base
    directory spec refuses relative paths): it would be a different folder in each working directory."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override and not Path(override).expanduser().is_absolute():
        return f"{CACHE_DIR_ENV}={override} is a relative path (a folder in each working directory)"
    from ponder.prompt_cache_files import folder_problem

    return folder_problem(cache_dir())


def model_identity(path: str, backend: str, settings: dict) -> str:
    """The key of a model's entries: what the file is (not only its name), and every setting that changes
    the state a prompt leaves. Files of a directory (an MLX model) count each."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    described = []
    for file in files:
        stat = file.stat()
        described.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns, _fingerprint(file, stat.st_size)])
    facts = {"format": FORMAT, "backend": backend, "settings": settings, "files": described}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:40]


def _fingerprint(file: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        digest.update(handle.read(_HEAD_BYTES))
        for i in range(1, _SAMPLES + 1):
            handle.seek(max(0, (size - _SAMPLE_BYTES) * i // _SAMPLES))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


@dataclass(frozen=True)
class Hit:
    """An entry whose first `shared` tokens are the prompt's (it holds `tokens` in all)."""

    path: Path
    shared: int
    tokens: tuple[int, ...]


class PromptCache:
    """The entries of one model identity, in `root`, within `limit_bytes` for the whole cache; prompts
    shorter than `min_tokens` are neither stored nor looked up."""

    def __init__(self, identity: str, root: Path | None = None, limit_bytes: int | None = None,
                 min_tokens: int = MIN_TOKENS):
        self.root = root or cache_dir()
        self.identity = identity
        self.folder = self.root / identity
        self.limit_bytes = limit_bytes if limit_bytes is not None else int(DEFAULT_LIMIT_GIB * (1 << 30))
        self.min_tokens = min_tokens
        self._writing: threading.Thread | None = None

    # --- reading --------------------------------------------------------------------------

    def longest(self, tokens: list[int]) -> Hit | None:
        """The entry that shares the most leading tokens with `tokens` (at least min_tokens), or None."""
        best = None
        if not (trusted(self.root) and trusted(self.folder)):
            return None
        for path in self._entries():
            stored = self._tokens(path)
            if stored is None:
                continue
            shared = shared_length(stored, tokens)
            if shared >= self.min_tokens and (best is None or shared > best.shared):
                best = Hit(path, shared, stored)
        return best

    def load(self, hit: Hit) -> bytearray | None:
        """The state of `hit`, checked whole; None (and the entry removed) if anything is wrong with it."""
        try:
            with open_entry(hit.path) as file:
                header = self._header(file)
                if header["tokens"] != len(hit.tokens):
                    raise ValueError("replaced since it was found")
                file.seek(4 * header["tokens"], os.SEEK_CUR)
                payload = bytearray(header["bytes"])  # (writable: an engine reads it in place)
                complete = file.readinto(payload) == len(payload) and not file.read(1)
            if not complete or hashlib.sha256(payload).hexdigest() != header["sha256"]:
                raise ValueError("truncated or corrupt")
        except FileNotFoundError:
            return None  # evicted by another process meanwhile
        except (OSError, ValueError):
            self.discard(hit.path)
            return None
        touch(hit.path)
        return payload

    def _tokens(self, path: Path) -> tuple[int, ...] | None:
        try:
            with open_entry(path) as file:
                count = self._header(file)["tokens"]
                ids = array("i")
                ids.frombytes(file.read(4 * count))
                if len(ids) != count:
                    raise ValueError("truncated")
                return tuple(ids)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self.discard(path)
            return None

    def _header(self, file) -> dict:
        """An entry's header, checked: this model's, and the file exactly as long as it says (ValueError)."""
        header = _read_header(file)
        if header is None or header["identity"] != self.identity:
            raise ValueError("not an entry of this model")
        if os.fstat(file.fileno()).st_size != file.tell() + 4 * header["tokens"] + header["bytes"]:
            raise ValueError("truncated")  # (caught before a payload that long is allocated)
        return header

    # --- writing --------------------------------------------------------------------------

    def save(self, tokens: list[int], payload) -> Path | None:
        """Store the state after `tokens`; entries it makes redundant are removed, then the oldest over the
        cap. A failure to write (a full disk, a read-only cache) only skips the saving."""
        if len(tokens) < self.min_tokens or len(payload) > self.limit_bytes:  # (one over the cap would go at once)
            return None
        ids = array("i", tokens).tobytes()
        header = json.dumps({"format": FORMAT, "identity": self.identity, "tokens": len(tokens),
                             "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}).encode()
        target = self.folder / (hashlib.sha256(ids).hexdigest()[:40] + SUFFIX)
        try:
            # Private, as the history is: a state holds the prompt (its text can be read back out of it).
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.folder.mkdir(mode=0o700, exist_ok=True)
            if not (trusted(self.root) and trusted(self.folder)):
                return None  # another user's, or open to others: neither read nor written
            remove_stale_writes(self.folder)
            fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".writing-")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(_HEADER.pack(MAGIC, len(header)) + header)
                    file.write(ids)
                    file.write(payload)
                os.replace(temporary, target)
            except BaseException:
                remove(Path(temporary))
                raise
        except OSError:
            return None
        for path in self._entries():
            stored = self._tokens(path) if path != target else None
            if stored is not None and len(stored) < len(tokens) and shared_length(stored, tokens) == len(stored):
                self.discard(path)
        self.evict()
        return target

    def save_later(self, tokens: list[int], payload) -> None:
        """`save` on a thread of its own, so that the reply goes on; `wait`, or the process's end, lets it
        finish (it is no daemon, though the model's thread that starts it is). One write at a time: a state
        can be large."""
        self.wait()
        self._writing = threading.Thread(target=self.save, args=(list(tokens), payload), name="ponder-prompt-cache",
                                         daemon=False)
        self._writing.start()

    def busy(self) -> bool:
        """Whether a write is still going on (a new state then waits for a later turn)."""
        return self._writing is not None and self._writing.is_alive()

    def wait(self) -> None:
        if self._writing is not None:
            self._writing.join()
            self._writing = None

    def discard(self, path: Path) -> None:
        """Remove a damaged entry, if it is ponder's: a file only named like one is skipped, never removed.
        (Where it cannot go, a read-only cache, it is checked again and skipped next time.)"""
        remove_entry(path)

    def evict(self) -> None:
        """Remove the least recently used entries (of every model) until the cache is within its cap."""
        entries = []
        for path in all_entries(self.root):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit_bytes:
                break
            if remove(path):  # (one that cannot go still counts: a newer one goes in its place)
                total -= size

    def _entries(self) -> list[Path]:
        return named_entries(self.folder)


def _read_header(file) -> dict | None:
    """The JSON header of an entry, its fields of the right types; None where it is not one."""
    head = file.read(_HEADER.size)
    if len(head) != _HEADER.size:
        return None
    magic, length = _HEADER.unpack(head)
    if magic != MAGIC or length > 1 << 16:
        return None
    try:
        header = json.loads(file.read(length))  # (a ValueError where it is not JSON, or not UTF-8)
    except RecursionError:
        return None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return None
    kinds = {"identity": str, "tokens": int, "bytes": int, "sha256": str}
    if any(type(header.get(key)) is not kind for key, kind in kinds.items()):
        return None
    return header if header["tokens"] >= 0 and header["bytes"] >= 0 else None


def shared_length(stored, tokens) -> int:
    """How many leading tokens two sequences of token ids share."""
    n, limit = 0, min(len(stored), len(tokens))
    while n < limit and stored[n] == tokens[n]:
        n += 1
    return n


def usage(root: Path | None = None) -> tuple[int, int]:
    """Entries and bytes the whole cache holds."""
    from ponder import prompt_cache_files

    return prompt_cache_files.usage(root or cache_dir())


def clear(root: Path | None = None) -> tuple[int, int]:
    """Remove every entry (and what a crashed write left): how many entries went, and how many could not."""
    from ponder import prompt_cache_files

    return prompt_cache_files.clear(root or cache_dir())
