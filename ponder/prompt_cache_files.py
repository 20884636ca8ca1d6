"""The prompt cache's folders, as files: which of them are ponder's entries (the cache dir may be set to a
folder other programs use too: only folders and files named as ponder names them, entries that start with
its magic, are ever read or removed), whether a folder may be trusted, and the whole cache's size and
clearing (`ponder cache`)."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

MAGIC = b"PONDERKV"
SUFFIX = ".kv"
_STALE_WRITE_S = 3600  # a temporary file this old was left by a process that died while writing


def usage(root: Path) -> tuple[int, int]:
    """Entries and bytes the whole cache holds."""
    sizes = []
    for path in all_entries(root):
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            pass
    return len(sizes), sum(sizes)


def clear(root: Path) -> tuple[int, int]:
    """Remove every entry (and what a crashed write left): how many entries went, and how many could not."""
    removed = left = 0
    folders = identity_folders(root)
    for path in all_entries(root) + [p for folder in folders for p in folder.glob(".writing-*")]:
        gone = remove(path)
        if path.suffix == SUFFIX:
            removed += gone
            left += not gone
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass
    return removed, left


_HEX40 = re.compile(r"[0-9a-f]{40}")


def identity_folders(root: Path) -> list[Path]:
    """The folders of model identities in `root`: only these are ponder's to look into or remove (the cache
    dir may be set to a folder other programs use too)."""
    try:
        return [p for p in root.iterdir() if _HEX40.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def all_entries(root: Path) -> list[Path]:
    """Every entry ponder wrote in `root`: named as it names them, regular files that start with its magic."""
    found = []
    for folder in identity_folders(root):
        for path in folder.glob(f"*{SUFFIX}"):
            if not _HEX40.fullmatch(path.stem):
                continue
            try:
                with open_entry(path) as file:
                    if file.read(len(MAGIC)) == MAGIC:
                        found.append(path)
            except (OSError, ValueError):
                continue
    return found


def open_entry(path: Path):
    """An entry opened for reading, only if it is a regular file (a FIFO would block; ValueError else)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def trusted(folder: Path) -> bool:
    """A folder ponder may keep states in: absent yet, or the user's own and closed to others (a state holds
    the prompt, and a planted one would be loaded)."""
    try:
        info = os.stat(folder)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def remove(path: Path) -> bool:
    """Whether `path` is gone: removed now, or already (another process evicted it). Not where the cache is
    read-only or the file is not ours to remove: the caller counts it as still there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def remove_stale_writes(folder: Path) -> None:
    """The temporary files of writes that a killed process never finished (a live write is never an hour old)."""
    now = time.time()
    for path in folder.glob(".writing-*"):
        try:
            if now - path.stat().st_mtime > _STALE_WRITE_S:
                remove(path)
        except OSError:
            pass
