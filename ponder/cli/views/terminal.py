"""The terminal a command talks to, in one object that tests can build by hand."""

from __future__ import annotations

import errno
import io
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TextIO


@dataclass
class Terminal:
    stdin: BinaryIO | None  # None: the shell closed it (`<&-`); it reads as empty
    stdout: TextIO
    stderr: TextIO
    stdin_is_tty: bool
    stdout_is_tty: bool
    stderr_is_tty: bool
    color: bool  # False under NO_COLOR

    @classmethod
    def from_system(cls) -> Terminal:
        # A stream the shell closed is None in Python (see keep_standard_streams): stdin then reads as
        # empty, and stderr's lines go nowhere, as "2>&-" asks.
        stderr = sys.stderr if sys.stderr is not None else open(os.devnull, "w")
        return cls(
            stdin=sys.stdin.buffer if sys.stdin is not None else None,
            stdout=sys.stdout if sys.stdout is not None else ClosedStream(),
            stderr=stderr,
            stdin_is_tty=is_tty(sys.stdin),
            stdout_is_tty=is_tty(sys.stdout),
            stderr_is_tty=is_tty(sys.stderr),
            color=not os.environ.get("NO_COLOR"),
        )

    def silence_stdout(self) -> None:
        """After stdout's reader went away: point its descriptor at /dev/null, so that what is
        still buffered for the closed pipe cannot fail again at exit."""
        silence(self.stdout)

    def stdout_closed(self) -> bool:
        """Whether the shell closed stdout (`>&-`): nothing written there can arrive."""
        return stream_closed(self.stdout)


def is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def silence(stream) -> None:
    """Point `stream`'s descriptor at /dev/null: what is still buffered for it (a pipe whose reader is
    gone, a full disk) then cannot fail again when Python flushes it at exit."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO): nothing to silence
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def stream_closed(stream) -> bool:
    """Whether `stream` is one the shell closed (`>&-`): nothing written there can arrive."""
    return isinstance(stream, ClosedStream)


class ClosedStream(io.TextIOBase):
    """A standard stream the shell closed: every write fails with EBADF, as writing to the closed
    descriptor would (`cat >&-` reports "Bad file descriptor")."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def isatty(self) -> bool:
        return False


def keep_standard_streams() -> None:
    """For the standard descriptors the shell closed (`<&-`, `>&-`, `2>&-`), at the start of the process:
    hold /dev/null open in their place, so that no file or socket opened later takes descriptor 0, 1 or
    2 (a library's stray write to stdout would land in it). In Python a closed stdout becomes a
    ClosedStream (its writes fail, as `cat >&-`'s do), stderr's lines go nowhere, and stdin stays None
    (it reads as empty)."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, mode)
            if held != fd:  # (the lowest free descriptor is the closed one, taken in order from 0)
                os.dup2(held, fd)
                os.close(held)
    if sys.stdout is None:
        sys.stdout = ClosedStream()
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


EXIT_INTERRUPTED = 130


def interrupted(exc: BaseException | None, stderr: TextIO | None) -> int:
    """The closing line and exit status of a Ctrl-C (130), or of a SIGTERM (143) or SIGHUP (129): 128 + the
    signal, as a shell reports a program the signal ended."""
    from ponder.threads import Terminated

    if isinstance(exc, Terminated):
        import signal

        line, code = f"ponder: stopped by {signal.Signals(exc.signum).name}", 128 + exc.signum
    else:
        line, code = "ponder: interrupted", EXIT_INTERRUPTED
    try:
        print(f"\n{line}", file=stderr or sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # stderr gone too (a terminal hung up): nowhere to say it
        pass
    return code


def disable_echo(term: Terminal) -> Callable[[], None]:
    """Stop the terminal echoing keys while a live view is drawn; returns the undo.

    Echoed keys, and the "^C" of Ctrl-C above all, move the cursor inside rich's live region,
    which then erases one line too few and leaves a stale copy of a line on screen. Keys typed
    ahead stay queued for the next prompt; Ctrl-C still interrupts (ISIG is untouched)."""
    if not term.stdin_is_tty:
        return lambda: None
    import termios

    try:
        fd = term.stdin.fileno()
        saved = termios.tcgetattr(fd)
        quiet = list(saved)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (termios.error, OSError, ValueError):
        return lambda: None

    def undo() -> None:
        try:
            termios.tcsetattr(fd, termios.TCSANOW, saved)
        except (termios.error, OSError, ValueError):  # the terminal is gone (SIGHUP): nothing to restore
            pass

    return undo


class Working:
    """A spinner with a label on stderr while work goes on unshown (a terminal only); `say` prints a
    line above it (or plainly, without a terminal)."""

    def __init__(self, term: Terminal, label: str):
        self.term, self.label, self._status = term, label, None

    def __enter__(self) -> Working:
        if self.term.stderr_is_tty:
            from rich.console import Console

            self._status = Console(file=self.term.stderr, no_color=not self.term.color).status(self.label)
            self._status.start()
        return self

    def say(self, line: str) -> None:
        if self._status is not None:
            self._status.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.term.stderr)

    def update(self, label: str) -> None:
        if self._status is not None:
            self._status.update(label)

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.stop()


class Ticker:
    """Calls `tick` every `interval` seconds on a thread of its own until stopped, or until `tick` returns False.
    A tick that fails (the terminal went away) ends it quietly: the main thread meets the same failure."""

    def __init__(self, tick, interval: float):
        self._tick, self._interval = tick, interval
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ponder-view", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        with self._lock:  # a tick in progress ends first: none runs once this returns
            pass

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            with self._lock:
                if self._done.is_set():
                    return
                try:
                    if self._tick() is False:
                        return
                except (OSError, ValueError):
                    return
