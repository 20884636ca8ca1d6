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
    for path in all_entries(root) + [p for folder in folders for p in folder.glob(".writing-*") if _regular(p)]:
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
    return [path for folder in identity_folders(root) for path in named_entries(folder) if is_entry(path)]


def named_entries(folder: Path) -> list[Path]:
    """The files of an identity folder named as ponder names its entries (not yet known to be its own)."""
    try:
        return sorted(path for path in folder.glob(f"*{SUFFIX}") if _HEX40.fullmatch(path.stem))
    except OSError:
        return []


def is_entry(path: Path) -> bool:
    """Whether `path` is one of ponder's entries: a regular file, not a link to one, that starts with its magic."""
    try:
        with open_entry(path) as file:
            return file.read(len(MAGIC)) == MAGIC
    except (OSError, ValueError):
        return False


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


def folder_problem(root: Path) -> str | None:
    """Why `root` cannot hold the cache (None: it can, or can be made): a file in its place or above it, a folder
    above it ponder cannot write into, or a folder that is not `trusted`."""
    path = root
    while True:  # the nearest part of the path that exists
        try:
            info = os.stat(path)
            break
        except (FileNotFoundError, NotADirectoryError):  # (the latter: a file above it, found on the way up)
            if path.parent == path:
                return None
            path = path.parent
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{root} is not a folder" if path == root else f"{path} is not a folder, so {root} cannot be made"
    if path != root:
        return None if os.access(path, os.W_OK | os.X_OK) else f"{root} cannot be made: {path} is not writable"
    if info.st_uid != os.getuid():
        return f"{root} is another user's folder"
    if info.st_mode & 0o022:
        return f"{root} is open to other users (mode {stat.S_IMODE(info.st_mode):o}), and a state holds its prompt"
    return None


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


def remove_entry(path: Path) -> bool:
    """Remove a damaged or redundant entry, only if it is ponder's (`is_entry`): a file merely named like one (another
    program's, a link, a FIFO) is left alone. Whether it is gone (False: still there, or never ponder's)."""
    if not is_entry(path):
        return not os.path.lexists(path)
    return remove(path)


def remove_stale_writes(folder: Path) -> None:
    """The temporary files of writes that a killed process never finished (a live write is never an hour old):
    regular files only, as mkstemp makes them (a link or FIFO of that name is not ponder's)."""
    now = time.time()
    for path in folder.glob(".writing-*"):
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > _STALE_WRITE_S:
                remove(path)
        except OSError:
            pass


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
