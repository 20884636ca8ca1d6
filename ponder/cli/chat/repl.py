"""The chat REPL: reads messages and commands, shows replies live (the conversation itself is
ponder.conversation.Chat)."""

from __future__ import annotations

from dataclasses import replace

import typer


class ChatRepl:
    def __init__(self, run, log: bool, on_full: str = "drop"):
        from rich.console import Console

        from ponder.conversation import Chat

        self.run = run
        self.console = Console(file=run.term.stdout, force_terminal=run.term.stdout_is_tty,
                               no_color=not run.term.color, highlight=False)
        self.chat = Chat(_open_history(run.term) if log else None, "chat", on_full)
        self.pending = ""  # a message to offer again at the next prompt (its turn failed)
        self.history_warned = False
        self.running = True
        self.last_reply = None  # the last finished reply: piped chat's exit status tells if it answered
        self.failed: int | None = None  # the exit code of the first turn that failed (piped chat exits with it)
        self.recorder = None  # the text of the reply being shown
        self.line = 0  # piped: the input line where the message or command being handled began (0: none yet)

    # --- the loop -----------------------------------------------------------------------

    def loop(self) -> None:
        from ponder.cli.chat.slash_commands import run_command
        from ponder.cli.chat.line_input import ChatInput

        term = self.run.term
        counted = CountedLines(term.stdin)
        self.input = ChatInput(replace(term, stdin=counted) if term.stdin is not None else term)
        if self.input.interactive:
            self.note(f"ponder chat · {self.chat.model.info.name} ({self.chat.model.info.backend}) · /help for commands, "
                      "Ctrl-D to quit")
        if self.chat.conversation.turns:
            self.replay()
        while self.running:
            self.line = counted.count + 1  # (where a message of several lines, a """ block, begins)
            text = self.input.read(default=self.pending)
            self.pending = ""
            if text is None:  # Ctrl-D
                break
            if not text.strip():
                continue
            if text.lstrip().startswith("/"):
                run_command(self, text.strip())
            else:
                self.ask(text)
            self.warn_once_if_history_failed()

    def replay(self) -> None:
        """Show a resumed conversation, reasoning collapsed."""
        from rich.markdown import Markdown

        from ponder.cli.views.safe_text import visible

        for turn in self.chat.conversation.turns:  # the history's text: shown, never obeyed
            if turn.role == "user":
                self.console.print(f"> {visible(turn.content)}", markup=False)
            else:
                self.console.print(Markdown(visible(turn.content), hyperlinks=False))
                if turn.interrupted:
                    self.note("[interrupted]")

    def ask(self, text: str) -> None:
        from ponder.history import Turn

        self.chat.add(Turn("user", text))
        self.generate()

    def generate(self) -> None:
        """Reply to the conversation as it stands, room made first (on_full); Ctrl-C stops and keeps the
        partial reply."""
        from ponder.errors import ContextOverflow
        from ponder.threads import Terminated

        if not self.make_room():
            return
        while True:
            try:
                reply = self.show(lambda key: self.chat.reply(self.run.params, key))
            except KeyboardInterrupt as exc:  # what arrived is kept, in the history too
                self.chat.interrupted(self.recorder.answer_text, self.recorder.reasoning_text)
                if isinstance(exc, Terminated):  # SIGTERM, SIGHUP: the chat ends, as the process must
                    raise
                self.note("[interrupted]")
                return
            except ContextOverflow as exc:
                left = self.chat.overflowed()  # ponder could only estimate the prompt (a server): make room
                if left:
                    self.note(left_out_note(left), "yellow")
                    continue
                self.refused(exc)
                return
            except typer.Exit:  # stdout closed (141): the session ends, as ask's would
                raise
            except Exception as exc:  # the turn failed, not the session: report it and keep what was typed
                self.failed = self.failed or getattr(exc, "exit_code", 1)
                self.pending = self.chat.take_back()
                self.note(f"error: {describe_error(exc, self.run.term)}{self.taken_back()}.", "red")
                return
            break
        self.chat.replied(reply)
        self.last_reply = reply
        self.after(reply)

    def show(self, start, answer_key: bool = True):
        """Show the reply events `start(answer_now)` gives, live; the Reply. On a terminal, Enter while the
        model thinks ends its reasoning; `recorder` keeps the text that arrived."""
        from ponder.cli.views.answer_now import AnswerNowKey, until_answering
        from ponder.cli.views.render import make_renderer
        from ponder.cli.views.show_reply import show_reply

        wanted = answer_key and self.run.answer_key_wanted(self.chat.model) and self.input.interactive
        self.recorder = RecordingRenderer(None)  # (nothing arrived yet)
        with AnswerNowKey(enabled=wanted) as key:
            # The key's terminal mode is entered before the live view's and left after it.
            self.recorder = RecordingRenderer(make_renderer(self.run.term, self.run.mode, self.chat.model.info,
                                                            answer_key=key.active))
            events = start(key.pressed if key.active else None)
            return show_reply(until_answering(events, key), self.recorder, self.run.term)

    def after(self, reply) -> None:
        """The notes a finished reply may call for."""
        if reply.error:
            self.failed = self.failed or 1
            self.note(f"error: {reply.error}" + ("; what arrived is kept" if self.piped else
                                                 ". What arrived is kept; /retry asks again."), "red")
        if reply.finish_reason == "loop":
            self.note("[stopped: the reply repeated itself]", "yellow")
        elif reply.stats.reasoning_end == "loop":
            self.note("[the reasoning repeated itself; ponder ended it and the model answered]", "yellow")
        full = 0 < self.chat.model.info.context <= self.chat.context_used()
        if reply.finish_reason == "length" and full:
            self.note(f"[stopped: the context is full; {FULL_HINTS[self.chat.on_full]}]")
        elif reply.finish_reason == "length":
            self.note("[stopped at the token limit: /set max_tokens N raises it]")
        if self.chat.on_full == "refuse" and self.chat.nearly_full():  # else room is made as needed
            total, used = self.chat.model.info.context, self.chat.context_used()
            self.note(f"warning: the context is {used / total:.0%} full ({used} of {total} tokens); "
                      "/clear starts a new conversation", "yellow")

    # --- a conversation longer than the context ---------------------------------------------

    def make_room(self) -> bool:
        """Room for the reply to the new message, as on_full says: the earlier turns summarised (compact),
        the oldest left out (drop; compact where the summary failed), or nothing (refuse: the backend's
        refusal stands). False where the turn ends here, its message back in the input line."""
        from ponder.errors import ContextOverflow

        chat, params = self.chat, self.run.params
        try:
            if chat.on_full == "compact" and chat.compactable() and chat.needs_room(params):
                if self.compact(auto=True) == "stopped":
                    self.pending = chat.take_back()
                    return False
            left = chat.make_room(params)
        except ContextOverflow as exc:  # the new message alone leaves no room for its reply
            self.refused(exc)
            return False
        if left:
            self.note(left_out_note(left), "yellow")
        return True

    def compact(self, auto: bool = False) -> str:
        """The model's summary in place of the turns it sees (before the new message): "done", "stopped"
        (Ctrl-C) or "failed". Shown as it is written, except while a piped chat makes room (stdout is for
        answers there)."""
        from ponder.threads import Terminated

        chat = self.chat
        replaced = chat.compactable()
        before = chat.prompt_tokens(chat.seen())
        self.note(f"summarising the {_turns(replaced, 'earlier turn')}" + (" to make room" if auto else "") + "…")
        try:
            if auto and not self.input.interactive:
                from contextlib import closing

                from ponder.exchange import collect_reply

                with closing(chat.summarise(self.run.params)) as events:
                    summary = collect_reply(events)
            else:
                summary = self.show(lambda _key: chat.summarise(self.run.params), answer_key=False)
        except KeyboardInterrupt as exc:
            if isinstance(exc, Terminated):
                raise
            back = "the chat goes on without the message" if self.piped else "your message is back in the input line"
            self.note(f"[interrupted: nothing was summarised{'; ' + back if auto else ''}]")
            return "stopped"
        except typer.Exit:
            raise
        except Exception as exc:
            summary, why = None, describe_error(exc, self.run.term)
        else:
            why = (summary.error or ("it was cut off at its token limit" if summary.finish_reason == "length"
                                     else "the model wrote none"))
        if summary is None or summary.error or summary.finish_reason == "length" or not summary.answer.strip():
            instead = "the oldest turns are left out instead" if auto else "nothing changed"
            self.note(f"error: no summary ({why}); {instead}", "red")
            return "failed"
        chat.compacted(summary)
        after = chat.prompt_tokens(chat.seen())
        self.note(f"the summary stands for {_turns(replaced, 'turn')} in what the model sees (the prompt: {before} → "
                  f"{after} tokens); the history keeps them all", "yellow")
        return "done"

    def refused(self, exc) -> None:
        """The new message has no room in the context: it goes back to the input line."""
        self.failed = self.failed or exc.exit_code
        self.pending = self.chat.take_back()
        clear = "; /clear starts a new conversation" if self.chat.on_full == "refuse" else ""
        self.note(f"{exc.message}{self.taken_back()}{clear}.", "red")

    def taken_back(self) -> str:
        """What became of a message whose turn failed: back in the input line on a terminal; in a pipe, skipped
        (the error names its line)."""
        return "; the chat goes on without it" if self.piped else ". Your message is back in the input line"

    @property
    def piped(self) -> bool:
        """Whether the chat reads piped input or writes to a pipe: stdout then carries the answers alone."""
        chat_input = getattr(self, "input", None)
        return chat_input is not None and not chat_input.interactive

    def warn_once_if_history_failed(self) -> None:
        if self.chat.history_error and not self.history_warned:
            self.history_warned = True
            self.note(f"warning: history is off from here on: {self.chat.history_error}", "yellow")

    def note(self, text: str, style: str = "dim") -> None:
        """A line of ponder's own (never parsed as markup, control characters shown: it may quote the user,
        the history or a server). In a pipe, stdout carries the answers and what a command was asked to show
        (plain style: /help, /stats, /history); notes, warnings and errors go to stderr a line each, as written
        (not wrapped), an error naming the input line it is about."""
        from ponder.cli.views.safe_text import visible

        if not (self.piped and style):
            self.console.print(visible(text), style=style, markup=False, highlight=False)
            return
        if style == "red":
            text = "error: " + (f"input line {self.line}: " if self.line else "") + text.removeprefix("error: ")
        prefix = "ponder: " if text.startswith(("note: ", "warning: ", "error: ")) else ""
        self.run.term.stderr.write(f"{prefix}{visible(text)}\n")
        self.run.term.stderr.flush()


FULL_HINTS = {"refuse": "/clear starts a new conversation", "drop": "the next message leaves out the oldest turns",
              "compact": "the next message summarises the earlier turns"}


def left_out_note(turns: int) -> str:
    if turns == 1:
        return "note: the oldest turn no longer fits and is left out"
    return f"note: the {turns} oldest turns no longer fit and are left out"


def _turns(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class CountedLines:
    """Stdin as chat input reads it, its lines counted: a piped chat's error names the line at fault."""

    def __init__(self, stream):
        self.stream, self.count = stream, 0

    def readline(self, size: int = -1) -> bytes:
        line = self.stream.readline(size)
        self.count += bool(line)
        return line

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class RecordingRenderer:
    """Passes events to a renderer and keeps the text, so an interrupted reply can be stored."""

    def __init__(self, inner):
        self.inner = inner
        self.reasoning_text = self.answer_text = ""

    def reasoning(self, text: str, tokens: int) -> None:
        self.reasoning_text += text
        self.inner.reasoning(text, tokens)

    def reasoning_done(self, seconds: float, tokens: int) -> None:
        self.inner.reasoning_done(seconds, tokens)

    def answer(self, text: str) -> None:
        self.answer_text += text
        self.inner.answer(text)

    def finish(self, reply) -> None:
        self.inner.finish(reply)


def describe_error(exc: Exception, term) -> str:
    """One line for a failed turn (a bug's traceback too, under --debug)."""
    from ponder.errors import PonderError, debugging

    if isinstance(exc, PonderError):
        return exc.one_line()
    if debugging():
        import traceback

        traceback.print_exception(exc, file=term.stderr)
    return f"unexpected {type(exc).__name__}: {exc}"


def _open_history(term):
    from ponder.errors import PonderError
    from ponder.history import History

    try:
        return History()
    except (PonderError, OSError) as exc:
        message = exc.message if isinstance(exc, PonderError) else str(exc)
        term.stderr.write(f"ponder: warning: history is off: {message}\n")
        return None
