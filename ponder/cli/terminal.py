"""The terminal a command talks to, in one object that tests can build by hand."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
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


@contextmanager
def keys_not_echoed(term: Terminal):
    """While a reply streams, keys typed ahead are not echoed into the live view; they stay
    queued and appear at the next prompt. Ctrl-C still interrupts (ISIG is untouched)."""
    if not term.stdin_is_tty:
        yield
        return
    import termios

    fd = term.stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
