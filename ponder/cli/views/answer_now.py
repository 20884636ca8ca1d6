"""Enter while the model thinks: end the reasoning now and let it answer.

The key is read from the controlling terminal (/dev/tty), since stdin may be the prompt, with the
terminal in non-canonical mode so that one key is enough. Ctrl-C keeps its meaning (ISIG untouched).
"""

from __future__ import annotations

import os
import select
import threading

KEY_LABEL = "Enter: answer now"


class AnswerNowKey:
    """A context: `pressed` is set when Enter is pressed. Inactive (never set) without a terminal.
    Enter it before the live view starts and leave it after the view ends: each restores the
    terminal settings it found."""

    def __init__(self, enabled: bool = True):
        self.pressed = threading.Event()
        self.active = False
        self._enabled = enabled
        self._done = threading.Event()
        self._wake: tuple[int, int] | None = None  # a pipe that ends the listener's wait at once when done
        self._fd: int | None = None
        self._saved = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> AnswerNowKey:
        if not self._enabled:
            return self
        try:
            import termios
        except ImportError:  # not a POSIX terminal
            return self
        try:
            self._fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
            if os.tcgetpgrp(self._fd) != os.getpgrp():  # a background job leaves the terminal alone
                raise OSError("not the foreground process group")
            self._saved = termios.tcgetattr(self._fd)
            keys = list(self._saved)
            keys[3] &= ~(termios.ICANON | termios.ECHO)
            keys[6] = list(keys[6])
            keys[6][termios.VMIN], keys[6][termios.VTIME] = 1, 0
            termios.tcflush(self._fd, termios.TCIFLUSH)  # an Enter pressed while loading is not a request
            termios.tcsetattr(self._fd, termios.TCSANOW, keys)
        except (OSError, termios.error):
            self._saved = None
            self._close()
            return self
        self.active = True
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._listen, name="ponder-answer-now", daemon=True)
        self._thread.start()
        return self

    def stop_listening(self) -> None:
        """The reasoning is over: keys typed from now on stay queued for whoever reads next (chat's prompt)."""
        if self._done.is_set():
            return
        self._done.set()
        if self._wake is not None:
            os.write(self._wake[1], b"x")

    def _listen(self) -> None:
        # Woken by a key or by the pipe alone: a timeout here woke this thread 10 times a second while the
        # model thought (each wake takes a core from the decoding threads on a small machine).
        while not self._done.is_set():
            ready, _, _ = select.select([self._fd, self._wake[0]], [], [])
            if self._fd not in ready or self._done.is_set():
                continue
            try:
                data = os.read(self._fd, 64)
            except OSError:
                return
            if not data:  # the terminal hung up
                return
            if b"\n" in data or b"\r" in data:
                self.pressed.set()
                return

    def __exit__(self, *exc) -> None:
        self.stop_listening()
        try:
            if self._saved is not None:  # first: a second Ctrl-C below must not leave the terminal mute
                import termios

                try:
                    termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)
                except termios.error:
                    pass
        finally:
            if self._thread is not None:
                self._thread.join()
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._wake is not None:
            for end in self._wake:
                os.close(end)
            self._wake = None


def until_answering(events, key: AnswerNowKey):
    """`events`, telling `key` to stop listening once the answer begins (close() reaches `events`)."""
    from ponder.events import AnswerDelta, ReasoningDone

    try:
        for event in events:
            if isinstance(event, (ReasoningDone, AnswerDelta)):
                key.stop_listening()
            yield event
    finally:
        events.close()
