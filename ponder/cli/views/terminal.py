"""The terminal a command talks to, in one object that tests can build by hand."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TextIO


@dataclass
class Terminal:
    stdin: BinaryIO
    stdout: TextIO
    stderr: TextIO
    stdin_is_tty: bool
    stdout_is_tty: bool
    stderr_is_tty: bool
    color: bool  # False under NO_COLOR

    @classmethod
    def from_system(cls) -> Terminal:
        def is_tty(stream) -> bool:
            try:
                return stream.isatty()
            except (AttributeError, ValueError):
                return False

        # A stream the shell closed (`2>&-`) is None in Python; write such output nowhere.
        stderr = sys.stderr if sys.stderr is not None else open(os.devnull, "w")
        return cls(
            stdin=sys.stdin.buffer,
            stdout=sys.stdout,
            stderr=stderr,
            stdin_is_tty=is_tty(sys.stdin),
            stdout_is_tty=is_tty(sys.stdout),
            stderr_is_tty=is_tty(sys.stderr),
            color=not os.environ.get("NO_COLOR"),
        )

    def silence_stdout(self) -> None:
        """After stdout's reader went away: point its descriptor at /dev/null, so that what is
        still buffered for the closed pipe cannot fail again at exit."""
        try:
            fd = self.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO): nothing to silence
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


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
    return lambda: termios.tcsetattr(fd, termios.TCSANOW, saved)


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
