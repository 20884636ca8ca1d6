"""The prompt cache on disk: a model's state after a prompt, kept so that a later run (any process) that
begins with the same tokens loads it instead of processing them again.

An entry can never give a wrong reply: it is filed under the model's identity (the file's path, size,
modification time and a checksum of its first MiB; the backend and its version; every setting that
changes the state), and it holds the exact token ids it was made from and a checksum of the state, all
checked on load. A truncated, corrupt or mismatched entry is removed and the run goes on without it.
Entries are written whole or not at all (a temporary file renamed), so two processes saving the same
prompt leave one valid entry; the least recently used go first once the cache is over its size cap.
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

CACHE_DIR_ENV = "PONDER_CACHE_DIR"  # default: the platform's user cache dir
FORMAT = 1
MAGIC = b"PONDERKV"
SUFFIX = ".kv"
DEFAULT_LIMIT_GIB = 4.0
# Prompts shorter than this are processed again rather than stored: at a few hundred tokens a second the
# saving is under a second, and a file per short prompt would push longer, costlier ones out.
MIN_TOKENS = 256
_HEADER = struct.Struct("<8sI")  # magic, length of the JSON that follows
_SAMPLED_BYTES = 1 << 20  # of a model file, checksummed into its identity


def cache_dir() -> Path:
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ponder", appauthor=False)) / "prompt-cache"


def model_identity(path: str, backend: str, settings: dict) -> str:
    """The key of a model's entries: what the file is (not only its name), and every setting that changes
    the state a prompt leaves. Files of a directory (an MLX model) count each."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    described = []
    for file in files:
        stat = file.stat()
        with open(file, "rb") as handle:
            sampled = hashlib.sha256(handle.read(_SAMPLED_BYTES)).hexdigest()
        described.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns, sampled])
    facts = {"format": FORMAT, "backend": backend, "settings": settings, "files": described}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Hit:
    """An entry whose first `shared` tokens are the prompt's (it holds `tokens` in all)."""

    path: Path
    shared: int
    tokens: tuple[int, ...]


class PromptCache:
    """The entries of one model identity, in `root`, within `limit_bytes` for the whole cache."""

    def __init__(self, identity: str, root: Path | None = None, limit_bytes: int | None = None):
        self.root = root or cache_dir()
        self.identity = identity
        self.folder = self.root / identity
        self.limit_bytes = limit_bytes if limit_bytes is not None else int(DEFAULT_LIMIT_GIB * (1 << 30))
        self._writing: list[threading.Thread] = []

    # --- reading --------------------------------------------------------------------------

    def longest(self, tokens: list[int]) -> Hit | None:
        """The entry that shares the most leading tokens with `tokens` (at least MIN_TOKENS), or None."""
        best = None
        for path in self._entries():
            stored = self._tokens(path)
            if stored is None:
                continue
            shared = shared_length(stored, tokens)
            if shared >= MIN_TOKENS and (best is None or shared > best.shared):
                best = Hit(path, shared, stored)
        return best

    def load(self, hit: Hit) -> bytearray | None:
        """The state of `hit`, checked whole; None (and the entry removed) if anything is wrong with it."""
        try:
            with open(hit.path, "rb") as file:
                header = _read_header(file)
                if header is None or header["identity"] != self.identity or header["tokens"] != len(hit.tokens):
                    raise ValueError("not this model's entry")
                file.seek(4 * header["tokens"], os.SEEK_CUR)
                payload = bytearray(header["bytes"])  # (writable: an engine reads it in place)
                complete = file.readinto(payload) == len(payload) and not file.read(1)
            if not complete or hashlib.sha256(payload).hexdigest() != header["sha256"]:
                raise ValueError("truncated or corrupt")
        except FileNotFoundError:
            return None  # evicted by another process meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            self.discard(hit.path)
            return None
        _touch(hit.path)
        return payload

    def _tokens(self, path: Path) -> tuple[int, ...] | None:
        try:
            with open(path, "rb") as file:
                header = _read_header(file)
                if header is None or header.get("identity") != self.identity:
                    raise ValueError
                count = header["tokens"]
                ids = array("i")
                ids.frombytes(file.read(4 * count))
                if len(ids) != count:
                    raise ValueError
                return tuple(ids)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.discard(path)
            return None

    # --- writing --------------------------------------------------------------------------

    def save(self, tokens: list[int], payload) -> Path | None:
        """Store the state after `tokens`; entries it makes redundant are removed, then the oldest over the
        cap. A failure to write (a full disk, a read-only cache) only skips the saving."""
        if len(tokens) < MIN_TOKENS:
            return None
        ids = array("i", tokens).tobytes()
        header = json.dumps({"format": FORMAT, "identity": self.identity, "tokens": len(tokens),
                             "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}).encode()
        target = self.folder / (hashlib.sha256(ids).hexdigest()[:40] + SUFFIX)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".writing-")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(_HEADER.pack(MAGIC, len(header)) + header)
                    file.write(ids)
                    file.write(payload)
                os.replace(temporary, target)
            except BaseException:
                _remove(Path(temporary))
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
        """`save` on a thread of its own, so that the reply goes on; `wait` (or the process's exit: the
        thread is not a daemon) lets it finish."""
        thread = threading.Thread(target=self.save, args=(list(tokens), payload), name="ponder-prompt-cache")
        thread.start()
        self._writing.append(thread)

    def wait(self) -> None:
        while self._writing:
            self._writing.pop().join()

    def discard(self, path: Path) -> None:
        _remove(path)

    def evict(self) -> None:
        """Remove the least recently used entries (of every model) until the cache is within its cap."""
        entries = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit_bytes:
                break
            _remove(path)
            total -= size

    def _entries(self) -> list[Path]:
        try:
            return sorted(self.folder.glob(f"*{SUFFIX}"))
        except OSError:
            return []


def usage(root: Path | None = None) -> tuple[int, int]:
    """Entries and bytes the whole cache holds."""
    root = root or cache_dir()
    sizes = []
    for path in root.glob(f"*/*{SUFFIX}"):
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            pass
    return len(sizes), sum(sizes)


def clear(root: Path | None = None) -> int:
    """Remove every entry (and what a crashed write left); how many entries went."""
    root = root or cache_dir()
    removed = 0
    for path in list(root.glob(f"*/*{SUFFIX}")) + list(root.glob("*/.writing-*")):
        removed += path.suffix == SUFFIX
        _remove(path)
    for folder in root.glob("*"):
        try:
            folder.rmdir()
        except OSError:
            pass
    return removed


def _read_header(file) -> dict | None:
    head = file.read(_HEADER.size)
    if len(head) != _HEADER.size:
        return None
    magic, length = _HEADER.unpack(head)
    if magic != MAGIC or length > 1 << 16:
        return None
    header = json.loads(file.read(length))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return None
    return header


def shared_length(stored, tokens) -> int:
    """How many leading tokens two sequences of token ids share."""
    n, limit = 0, min(len(stored), len(tokens))
    while n < limit and stored[n] == tokens[n]:
        n += 1
    return n


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:  # gone already (another process evicted it), or not ours to remove
        pass
