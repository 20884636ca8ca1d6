"""Files and folders ponder did not make (model stores, a model's config.json), read as outside
data: the kind of a file is checked before it is read (a FIFO would block a reader for ever), what
is read is bounded, and every problem is a short reason ("a broken link"), never a traceback."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

JSON_LIMIT = 16 * 2**20  # a manifest or config.json is kilobytes; more is not one

Skip = Callable[[object, str], None]  # told each entry passed over, and why


class Unreadable(ValueError):
    """A file or folder that is not what it should be; the message says why."""


def shown(path) -> str:
    """Text safe to print: control characters (an escape sequence in a file name) made visible."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(path))


def why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def problem(path) -> str | None:
    """Why `path` is not a regular file one can read ("a broken link", "a directory"…), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken link" if os.path.islink(path) else "missing"
    except OSError as exc:
        return "a symbolic link in a loop" if exc.errno == errno.ELOOP else f"unreadable ({why(exc)})"
    if stat.S_ISDIR(mode):
        return "a directory"
    return None if stat.S_ISREG(mode) else "not a regular file"


def read_json_object(path) -> dict:
    """A JSON object from a regular file (never a FIFO's open, which would block); Unreadable if not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, then fstat tells it apart
    except OSError as exc:
        raise Unreadable(problem(path) or f"unreadable ({why(exc)})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable(problem(path) or "not a regular file")
        data = b""
        while len(data) <= JSON_LIMIT and (chunk := os.read(fd, JSON_LIMIT + 1 - len(data))):
            data += chunk
    except OSError as exc:
        raise Unreadable(f"unreadable ({why(exc)})") from None
    finally:
        os.close(fd)
    if len(data) > JSON_LIMIT:
        raise Unreadable(f"larger than {JSON_LIMIT // 2**20} MiB")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise Unreadable("not UTF-8 text") from None
    except RecursionError:
        raise Unreadable("not JSON (nested too deeply)") from None
    except ValueError as exc:
        raise Unreadable(f"not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise Unreadable(f"a JSON {type(value).__name__}, not an object")
    return value


def entries(directory: Path, skip: Skip, missing_ok: bool = False) -> list[os.DirEntry]:
    """A folder's entries by name; none, and a `skip`, where it cannot be read (none alone where
    it is not there at all and `missing_ok`: a store that is not installed)."""
    try:
        with os.scandir(directory) as scan:
            return sorted(scan, key=lambda entry: entry.name)
    except FileNotFoundError:
        if not (missing_ok and not os.path.lexists(directory)):
            skip(directory, problem(directory) or "missing")
    except OSError as exc:
        skip(directory, problem(directory) if exc.errno == errno.ELOOP else f"unreadable ({why(exc)})")
    return []


def subdirs(directory: Path, skip: Skip, missing_ok: bool = False) -> list[Path]:
    """The folders in a folder (links to folders too). A link that leads nowhere is skipped aloud;
    plain files are left alone (a README, .DS_Store)."""
    folders = []
    for entry in entries(directory, skip, missing_ok):
        try:
            if entry.is_dir():  # follows links; False for a broken one or a loop
                folders.append(Path(entry.path))
            elif entry.is_symlink() and not os.path.exists(entry.path):
                skip(entry.path, problem(entry.path) or "a broken link")
        except OSError as exc:
            skip(entry.path, problem(entry.path) or f"unreadable ({why(exc)})")
    return folders
