"""`ponder batch`'s results file: what a rerun resumes from, and the lines written to it.

`-o FILE` is only ever appended to, and only once every line in it is known to be a result of this
batch's tasks: a file ponder did not write (notes, the task file itself, JSON of another shape, bytes
that are not UTF-8) is refused with the line at fault, untouched. Reading never writes. Only regular
files are read: anything else (a pipe, /dev/stdout, /dev/full, a FIFO) is a fresh output stream.

A result line is {"id": ID, "samples": [...], ...}, or {"id": ID, "error": "why", ...} for a task that
failed. The writer puts "id" first and "samples" or "error" second: that is how a torn last line (a
kill mid-write) is known to be ours (see `_torn_tail`). A task with a result line is done; a task
whose lines are all errors is run again, and its new line goes after them (nothing is rewritten).
"""

from __future__ import annotations

import codecs
import errno
import json
import math
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from ponder.batch_tasks import shown_id, valid_id
from ponder.json_text import dumps
from ponder.errors import PonderError, UsageError

LINE_STARTS = (', "samples": [', ', "error": "')  # what follows the id in a line ponder writes


@dataclass
class Resumed:
    """What an output file already holds. `done`: id -> its result line (the last one with samples);
    `failed`: id -> its last error line, for ids not done."""

    done: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    regular: bool = True  # False: a stream (pipe, device, FIFO): written to, never read
    existed: bool = False
    size: int = 0  # bytes read
    keep: int = 0  # bytes of whole lines; a torn tail after them is cut before appending
    unended: bool = False  # the last line is a whole result without its "\n": add one before appending
    lock_fd: int | None = None  # held from reading to the end: one batch at a time appends to a file


def resume(path: Path, ids: Collection) -> Resumed:
    """The results already in `path` for the tasks `ids`, read under a lock; writes nothing. Refuses
    (UsageError, exit 2) a file that is not a results file of these tasks, or a path that cannot be one."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise UsageError(f"cannot write {path}: there is no directory {path.parent}") from None
        return Resumed()
    except OSError as exc:
        raise _os_error(exc, path, "use") from None
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"-o {path} is a directory: give a results file", hint=f"e.g. -o {path}/results.jsonl")
    if not stat.S_ISREG(info.st_mode):
        return Resumed(regular=False)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(exc, path, "read") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the stat
            os.close(fd)
            return Resumed(regular=False)
        _lock(fd, path)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
        found = read_results(data, ids, str(path))
    except BaseException:
        os.close(fd)
        raise
    found.existed, found.lock_fd = True, fd
    return found


def read_results(data: bytes, ids: Collection, name: str) -> Resumed:
    """Check every line of `data` as a result of one of `ids`, in one pass; refuse at the first that is not."""
    found = Resumed(existed=True, size=len(data))
    end = data.rfind(b"\n") + 1
    for number, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
        _take(found, _result_line(raw, number, ids, name))
    found.keep = end
    tail = data[end:]
    if tail.strip():
        number = data.count(b"\n") + 1
        try:
            _take(found, _result_line(tail, number, ids, name))
            found.unended = True  # a whole result without its newline: kept, and given one
            found.keep = len(data)
        except UsageError:
            if not _torn_tail(tail, ids):
                raise
    elif tail:
        found.keep = len(data)  # trailing blanks without a newline: nothing to cut, but a line ends first
        found.unended = True
    return found


def _take(found: Resumed, result: dict | None) -> None:
    if result is None:
        return
    key = result["id"]
    if "samples" in result:
        found.done[key] = result
        found.failed.pop(key, None)
    elif key not in found.done:
        found.failed[key] = result


def _result_line(raw: bytes, number: int, ids: Collection, name: str) -> dict | None:
    """One line as a result (None: blank), or a UsageError saying why it is not one."""
    def refuse(why: str) -> UsageError:
        return UsageError(f"{name} is not a results file of this batch: line {number} {why}; nothing was written to it",
                          hint="give -o a new file, or the results file these tasks wrote before")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("is not UTF-8 text") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise refuse("is not JSON") from None
    if not isinstance(value, dict):
        raise refuse("is not a JSON object")
    if "id" not in value or not valid_id(value["id"]):
        raise refuse('has no "id" of a task')
    if value["id"] not in ids:
        raise refuse(f"is about id {shown_id(value['id'])[:80]}, which is not among the tasks")
    if isinstance(value.get("samples"), list) and all(isinstance(s, dict) for s in value["samples"]):
        if "pass@1" in value and not _number(value["pass@1"]):  # the accuracy report adds them up
            raise refuse('has a "pass@1" that is not a number')
        return value
    if isinstance(value.get("error"), str) and "samples" not in value:
        return value
    raise refuse('holds neither "samples" nor an "error" (is it a task?)')


def _torn_tail(tail: bytes, ids: Collection) -> bool:
    """Whether `tail` (the bytes after the last newline) can only be the start of a line ponder was
    writing when it was killed: a prefix of '{"id": <a task's id>, "samples": [' or '..., "error": "',
    or longer and starting with one. Anything else (a line a person added, another program's text) is
    not ours to cut, and the file is refused instead. The last character may be cut in two (UTF-8)."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(tail, final=False)
    except UnicodeDecodeError:
        return False
    try:
        json.loads(text)
        return False  # a whole JSON value is no kill mid-write: it was written so, and is refused, not cut
    except ValueError:
        pass
    head = '{"id": '
    if len(text) <= len(head):
        return head.startswith(text)
    if not text.startswith(head):
        return False
    rest = text[len(head):]
    try:
        value, end = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        value, end = None, len(rest)
    after = rest[end:]
    if after and valid_id(value) and value in ids:
        return any(start.startswith(after) or after.startswith(start) for start in LINE_STARTS)
    if after:
        return False
    # The id itself is cut (or is all there is): a prefix of one of the ids as the writer writes them.
    return any(dumps(key).startswith(rest) for key in ids)


def reportable(result: dict) -> bool:
    """Whether a result line holds the figures a budget sweep's table reads from each sample."""
    samples = result.get("samples") or []
    return all(isinstance(s.get("stats"), dict) and _number(s["stats"].get("reasoning_tokens"))
               and _number(s["stats"].get("total_s") or 0) for s in samples)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ResultsSink:
    """Where result lines go: a file appended to (each line flushed and, for a regular file, synced: a
    kill later loses nothing written), or a stream (stdout). Write errors become one-line errors."""

    def __init__(self, path: Path | None, found: Resumed | None = None, stream=None):
        self.path, self.found, self.stream = path, found, stream
        self.fd: int | None = None
        self.created = False
        self.written = 0

    def open(self) -> None:
        """Open the file for appending (before the model loads: a path that cannot be written fails first).
        The torn tail validated by `resume` is cut here, and only if the file is still as it was read."""
        if self.path is None:
            return
        found = self.found
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if found.regular else 0)
        try:
            self.fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise _os_error(exc, self.path, "write") from None
        if not found.regular:
            return
        if found.lock_fd is None:  # a new file: lock it now
            found.lock_fd = os.dup(self.fd)
            _lock(found.lock_fd, self.path)
        self.created = not found.existed  # (only once locked: an empty file another batch just made is not ours)
        if found.existed and os.fstat(self.fd).st_size != found.size:
            raise PonderError(f"{self.path} changed while ponder read it; nothing was written to it")

    def _mend(self) -> None:
        """Before the first new line, and only then (a run that writes nothing leaves the file as it was):
        cut the torn line of a batch killed mid-write, or end a whole last line that lacks its newline."""
        found = self.found
        if found.unended:
            os.write(self.fd, b"\n")
        else:
            os.ftruncate(self.fd, found.keep)
        found.unended, found.size = False, found.keep

    def write(self, result: dict) -> None:
        """One whole line. allow_nan=False: every value was checked, and a bare NaN or Infinity is not JSON."""
        line = dumps(result, allow_nan=False) + "\n"  # (a results file may be a terminal: -o -)
        if self.fd is None:
            self.stream.write(line)
            self.stream.flush()
        else:
            data = line.encode("utf-8")
            try:
                if self.found.regular and (self.found.keep < self.found.size or self.found.unended):
                    self._mend()
                while data:
                    data = data[os.write(self.fd, data):]
                if self.found.regular:
                    os.fsync(self.fd)
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise _os_error(exc, self.path, "write to", self.found.regular) from None
        self.written += 1

    def close(self) -> None:
        """Close; a file this run created and never wrote a line to is removed again."""
        if self.fd is not None:
            if self.created and self.written == 0 and os.fstat(self.fd).st_size == 0:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            os.close(self.fd)
            self.fd = None
        if self.found is not None and self.found.lock_fd is not None:
            os.close(self.found.lock_fd)
            self.found.lock_fd = None


def _lock(fd: int, path: Path) -> None:
    """One batch at a time appends to a results file (two would each cut the other's line in progress)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PonderError(f"another ponder batch is writing to {path}",
                              hint="wait for it to finish, or give -o another file") from None
        # a file system without locks (some network ones): go on unlocked


def _os_error(exc: OSError, path: Path, doing: str, regular: bool = False) -> PonderError:
    """An OS refusal as one line: a path that cannot be a results file is a usage error (2), the rest 1. Only a
    regular file is resumed from (a device or pipe is a fresh stream each run): only its rerun goes on."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG):
        return UsageError(f"cannot {doing} {path}: {why}")
    return PonderError(f"cannot {doing} {path}: {why}",
                       hint="the results written so far are kept; rerun with the same -o to go on"
                       if doing == "write to" and regular else None)
