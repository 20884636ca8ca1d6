"""Files the user sees (the config file, chat's /save), written so that nothing they had is lost.

A new version goes to a temporary file beside the target, reaches the disk, then is renamed over
it: a crash or a full disk leaves the old file or the new one, never half of one, and the
temporary file is removed on any failure. A symbolic link is written through: its target is
replaced and the link stays a link. Only a regular file is ever replaced: a device, a pipe or a
directory is refused. `exclusive` creates a file that must not exist yet (a name the user gave,
which ponder does not overwrite without asking). Reading, likewise, takes regular files only
(a pipe would block, /dev/zero never ends).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ponder.errors import PonderError


class FileError(PonderError):
    """A file cannot be written or read as asked; nothing was changed (exit 1)."""


class FileExists(FileError):
    """An exclusive write found the name taken."""


class NotRegular(FileError):
    """The path names a device, a pipe, a socket or a directory."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
          (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def _refuse_irregular(path: Path, mode: int, doing: str) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise NotRegular(f"{path} is {kind}, not a regular file: ponder will not {doing} it")


def write_text(path: Path | str, text: str, *, exclusive: bool = False, parents: bool = False) -> Path:
    """`text` in UTF-8, as write_bytes writes it."""
    return write_bytes(path, text.encode("utf-8"), exclusive=exclusive, parents=parents)


def write_bytes(path: Path | str, data: bytes, *, exclusive: bool = False, parents: bool = False) -> Path:
    """Write `data` to `path`: atomically through a link, or with `exclusive` only as a new file
    (`parents`: its directory made if need be). The file written (a link's target); a FileError
    (FileExists, NotRegular) if nothing was."""
    path = Path(path)
    # A link is followed to its end (os.path.realpath leaves a loop as it is: stat then says so).
    target = path if exclusive else Path(os.path.realpath(path))
    try:
        if parents:
            _make_directory(target.parent)
        if not exclusive:
            _replace(target, data)
        else:
            try:
                _create(target, data)
            except FileExistsError:
                raise FileExists(f"{path} exists; nothing written") from None
    except OSError as exc:
        raise FileError(f"cannot write {path}: {exc.strerror or exc}") from None
    return target


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # exist_ok still refuses a file of that name
        raise FileError(f"cannot make the directory {directory}: a file of that name is in the way") from None


def read_bytes(path: Path | str) -> bytes:
    """The bytes of the regular file at `path` (through links); NotRegular for anything else
    (opened without blocking: a named pipe with no writer would wait forever), OSError as raised."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _refuse_irregular(Path(path), os.fstat(fd).st_mode, "read")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        return file.read()


def _replace(target: Path, data: bytes) -> None:
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    if old is not None:
        _refuse_irregular(target, old.st_mode, "replace")
        if not old.st_mode & 0o222:  # a rename would replace it anyway: keep the user's "read-only"
            raise FileError(f"cannot write {target}: it is read-only (chmod u+w to allow it); nothing written")
    temporary, fd = _temporary(target)
    try:
        with os.fdopen(fd, "wb") as out:
            if old is not None:  # the new version keeps the old one's permissions
                os.fchmod(out.fileno(), stat.S_IMODE(old.st_mode))
            _write_all(out, data)
        os.replace(temporary, target)
    except BaseException:  # Ctrl-C included: no temporary file is ever left behind
        _remove(temporary)
        raise
    _sync_directory(target.parent)


def _create(target: Path, data: bytes) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            _write_all(out, data)
    except BaseException:  # ponder made it a moment ago: a half-written file goes
        _remove(target)
        raise
    _sync_directory(target.parent)


def _temporary(target: Path) -> tuple[Path, int]:
    """A new file beside `target` (the same file system, so the rename is atomic), named for it and
    hidden; created with the umask's permissions, as the file itself would be."""
    for _ in range(100):
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileError(f"cannot write {target}: no free temporary name beside it")


def _write_all(out, data: bytes) -> None:
    out.write(data)
    out.flush()
    os.fsync(out.fileno())  # on the disk before it takes the old file's place


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable; where a directory cannot be opened, it is the OS's to do."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
