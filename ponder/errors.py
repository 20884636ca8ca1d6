"""User-facing errors. Each carries its exit code; the CLI maps them in one place."""

from __future__ import annotations

import os

from ponder.defaults import DEBUG_ENV


class PonderError(Exception):
    """An error the user can act on. Shown as one line, never as a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message with its hint, on one line (an error kept in a result, a sample, a chat note)."""
        return self.message + (f" ({self.hint})" if self.hint else "")


class UsageError(PonderError):
    """The command line or its input is wrong (exit 2)."""

    exit_code = 2


class ModelError(PonderError):
    """The model cannot be found, read or loaded (exit 1)."""


class BackendError(PonderError):
    """A backend is missing, unusable here, or failed at run time (exit 1)."""


class ContextOverflow(UsageError):
    """The prompt does not fit in the context window."""


def enable_debug() -> None:
    os.environ[DEBUG_ENV] = "1"  # read by backends as they are imported


def debugging() -> bool:
    """--debug or PONDER_DEBUG: show tracebacks (and llama.cpp's log)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")  # as click reads it


def describe_os_error(exc: OSError) -> str:
    """An OS error in one line, as Unix tools say it: "PATH: Permission denied"."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def shortened(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters for a message (a name pasted by mistake is not repeated whole)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
