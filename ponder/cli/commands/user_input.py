"""Reading the user's prompt from the command line and stdin."""

from __future__ import annotations

import os
import stat

from ponder.cli.views.terminal import Terminal
from ponder.errors import PonderError, UsageError


def _stdin_has_data(term: Terminal) -> bool:
    """Whether stdin is a pipe or file worth reading (never a terminal, /dev/null or a socket
    that may never close)."""
    if term.stdin_is_tty:
        return False
    try:
        mode = os.fstat(term.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


MAX_STDIN = 64 * 2**20  # bytes: far more text than any model's context holds (a million tokens is about 4 MiB)


def read_stdin(term: Terminal) -> str:
    if not _stdin_has_data(term):
        return ""
    try:
        data = term.stdin.read(MAX_STDIN + 1)  # bounded: `ponder ask < huge.log` must not exhaust memory first
    except OSError as exc:  # (named here: an OS error that reaches the top unnamed is a write to stdout)
        raise PonderError(f"cannot read stdin: {exc.strerror or exc}") from None
    if len(data) > MAX_STDIN:
        raise UsageError(f"stdin holds more than {MAX_STDIN // 2**20} MiB of text, far more than a model's context",
                         hint="pipe in the part that matters (head, tail, grep)")
    if b"\x00" in data:
        raise UsageError("stdin holds binary data (NUL bytes); ponder reads text", hint="pipe in text, not a binary file")
    text = data.decode("utf-8", errors="replace")
    if "\ufffd" in text and b"\xef\xbf\xbd" not in data:
        print("ponder: warning: stdin is not valid UTF-8; undecodable bytes were replaced", file=term.stderr)
    return text


def not_utf8(text: str) -> str | None:
    """Where `text` is not UTF-8 text, or None. Python holds bytes of the command line (or a file name) that were
    not UTF-8 as lone surrogates (\\udce9 for the byte 0xE9), and JSON may escape one ("\\ud800"): neither can
    reach a model or a file as UTF-8, so such text is refused where it enters, before a model loads."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        what = f"the byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate \\u{code:04x}"
        return f"{what} at character {exc.start + 1}"
    return None


def utf8_only(what: str, text: str) -> None:
    """A UsageError naming `what` where `text` is not UTF-8 text (see not_utf8)."""
    where = not_utf8(text)
    if where:
        raise UsageError(f"{what} is not UTF-8 text: it holds {where}",
                         hint="give it in UTF-8 (iconv -t UTF-8 converts text from another encoding)")


def user_prompt(argument: str | None, term: Terminal) -> str:
    """The user turn: piped text, then the argument (`cat notes.md | ponder ask "summarise this"`)."""
    utf8_only("the prompt argument", argument or "")
    piped = read_stdin(term).strip()
    question = (argument or "").strip()
    text = "\n\n".join(part for part in (piped, question) if part)
    if not text:
        raise UsageError(
            "no prompt: give one as an argument or pipe it in",
            hint='ponder ask "What is 12*7?"  or  echo "What is 12*7?" | ponder ask',
        )
    return text
