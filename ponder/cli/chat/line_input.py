"""Reading chat input: prompt_toolkit on a terminal, plain lines otherwise.

On a terminal: persistent history (Up/Down, Ctrl-R search), Esc-Enter or Alt-Enter for a
newline, `\"\"\"` to open a multi-line block (as in Ollama), Tab completes slash commands,
Ctrl-C clears the line, Ctrl-D quits.
"""

from __future__ import annotations

import os

from ponder.cli.commands.user_input import MAX_STDIN
from ponder.threads import Terminated

BLOCK = '"""'


class ChatInput:
    def __init__(self, term):
        self.term = term
        self.interactive = term.stdin_is_tty and term.stdout_is_tty
        self._session = self._prompt_session() if self.interactive else None

    def read(self, default: str = "") -> str | None:
        """The next message or command; None at end of input (Ctrl-D)."""
        first = self._line("> ", default)
        if first is None or not first.lstrip().startswith(BLOCK):
            return first
        body = first.lstrip()[len(BLOCK):]
        if body.rstrip().endswith(BLOCK) and body.strip():  # """one line"""
            return body.rstrip()[: -len(BLOCK)]
        lines = [body] if body else []
        while True:
            line = self._line("… ", "")
            if line is None or line.rstrip().endswith(BLOCK):
                if line:
                    lines.append(line.rstrip()[: -len(BLOCK)])
                return "\n".join(lines).strip("\n")
            lines.append(line)

    def _line(self, prompt: str, default: str) -> str | None:
        if self._session is None:  # piped input: one message per line
            if self.term.stdin is None:  # closed by the shell (`<&-`): at its end already
                return None
            line = self.term.stdin.readline(MAX_STDIN + 1)  # bounded, as ask's stdin is
            if len(line) > MAX_STDIN:
                from ponder.errors import UsageError

                raise UsageError(f"a line of stdin holds more than {MAX_STDIN // 2**20} MiB, far more than a model's "
                                 "context", hint="each line of piped input is one message")
            return line.decode("utf-8", "replace").rstrip("\r\n") if line else None
        while True:
            try:
                return self._session.prompt(prompt, default=default)
            except KeyboardInterrupt as exc:  # Ctrl-C at the prompt: a fresh, empty line
                if isinstance(exc, Terminated):  # SIGTERM, SIGHUP: the chat ends
                    raise
                default = ""
            except EOFError:
                return None

    @staticmethod
    def _prompt_session():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings

        from ponder.history import data_dir

        bindings = KeyBindings()

        @bindings.add("escape", "enter")  # Alt-Enter sends the same keys
        def _newline(event):
            event.current_buffer.insert_text("\n")

        path = data_dir() / "input-history"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return PromptSession(
            history=FileHistory(str(path)),
            completer=command_completer(),
            key_bindings=bindings,
            complete_while_typing=False,
        )


def command_completer():
    """Tab completion of the slash commands: the names the command handlers answer to."""
    from prompt_toolkit.completion import WordCompleter

    from ponder.cli.chat.slash_commands import COMMANDS

    return WordCompleter(list(COMMANDS), sentence=True)
