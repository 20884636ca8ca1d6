"""`ponder chat`: the interactive REPL (prompt_toolkit for input, the live renderer for replies)."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.options import ModelOptions, OutputOptions, SamplingOptions
from ponder.settings import Reasoning

CONTEXT_WARNING = 0.8  # warn once the conversation fills this share of the context


def chat(
    invocation: typer.Context,  # tells where --reasoning came from
    model: Optional[str] = ModelOptions.model,
    backend: str = ModelOptions.backend,
    ctx: Optional[int] = ModelOptions.ctx,
    threads: Optional[int] = ModelOptions.threads,
    temperature: float = SamplingOptions.temperature,
    top_p: float = SamplingOptions.top_p,
    max_tokens: int = SamplingOptions.max_tokens,
    seed: Optional[int] = SamplingOptions.seed,
    reasoning: Reasoning = OutputOptions.reasoning,
    show_reasoning: bool = OutputOptions.show_reasoning,
    hide_reasoning: bool = OutputOptions.hide_reasoning,
    resume_last: bool = typer.Option(False, "--continue", "-c", help="Resume the last conversation."),
    resume: Optional[int] = typer.Option(None, "--resume", help="Resume conversation ID (see `ponder history`).",
                                         show_default=False),
    no_log: bool = typer.Option(False, "--no-log", help="Keep this conversation out of the history database."),
    debug: bool = OutputOptions.debug,
) -> None:
    """Chat with the model in an interactive session (type /help inside)."""
    from ponder.cli.run import Run

    run = Run.start(debug, reasoning, show_reasoning, hide_reasoning, invocation=invocation,
                    temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    repl = ChatRepl(run, log=not no_log)
    repl.open_conversation(resume, resume_last)  # before loading: a bad ID fails fast
    repl.model = run.load(model, backend, ctx, threads)
    repl.conversation.model = repl.conversation.model or repl.model.info.name
    repl.loop()


class ChatRepl:
    def __init__(self, run, log: bool):
        from rich.console import Console

        from ponder.history import Conversation

        self.run = run
        self.console = Console(file=run.term.stdout, force_terminal=run.term.stdout_is_tty,
                               no_color=not run.term.color, highlight=False)
        self.history = _open_history(self.console) if log else None
        self.conversation = Conversation()
        self.model = None
        self.last_stats = None
        self.pending = ""  # a message that did not fit, offered again at the next prompt
        self.running = True

    # --- conversation ---------------------------------------------------------------

    def open_conversation(self, resume: int | None, resume_last: bool) -> None:
        from ponder.errors import UsageError

        if resume is None and not resume_last:
            return
        if self.history is None:
            raise UsageError("--continue and --resume read the history, which --no-log turns off")
        conversation_id = resume if resume is not None else self.history.last_chat()
        loaded = self.history.load(conversation_id) if conversation_id is not None else None
        if loaded is None:
            raise UsageError(f"no conversation {resume}" if resume is not None else "no earlier conversation to continue",
                             hint="`ponder history` lists them")
        self.conversation = loaded

    def store(self, turn) -> None:
        """Keep `turn` in the conversation and the history; a failing history only warns."""
        import sqlite3

        self.conversation.turns.append(turn)
        if self.history is None:
            return
        try:
            self.history.add_turn(self.conversation, turn, "chat", self.model.info.backend)
        except (sqlite3.Error, OSError) as exc:
            self.history = None
            self.note(f"warning: history is off from here on: {exc}", "yellow")

    def drop_last(self) -> None:
        turn = self.conversation.turns.pop()
        if self.history is not None:
            self.history.remove_turn(turn)

    # --- the loop -----------------------------------------------------------------------

    def loop(self) -> None:
        from ponder.cli.chat_commands import run_command
        from ponder.cli.chat_input import ChatInput

        self.input = ChatInput(self.run.term)
        if self.input.interactive:
            self.note(f"ponder chat · {self.model.info.name} ({self.model.info.backend}) · /help for commands, "
                      "Ctrl-D to quit")
        if self.conversation.turns:
            self.replay()
        while self.running:
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

    def replay(self) -> None:
        """Show a resumed conversation, reasoning collapsed."""
        from rich.markdown import Markdown

        for turn in self.conversation.turns:
            if turn.role == "user":
                self.console.print(f"> {turn.content}", markup=False)
            else:
                self.console.print(Markdown(turn.content))
                if turn.interrupted:
                    self.note("[interrupted]")

    def ask(self, text: str) -> None:
        from ponder.history import Turn

        self.store(Turn("user", text))
        self.generate()

    def generate(self) -> None:
        """Reply to the conversation as it stands; Ctrl-C stops and keeps the partial reply."""
        from ponder.cli.render import make_renderer
        from ponder.cli.stream import show_reply
        from ponder.errors import ContextOverflow
        from ponder.history import Turn
        from ponder.session import generate_reply

        recorder = RecordingRenderer(make_renderer(self.run.term, self.run.mode, self.model.info))
        events = generate_reply(self.model, self.conversation.messages(), self.run.params)
        try:
            reply = show_reply(events, recorder)
        except KeyboardInterrupt:
            self.store(Turn("assistant", recorder.answer_text.strip(), recorder.reasoning_text, "cancelled"))
            self.note("[interrupted]")
            return
        except ContextOverflow as exc:
            self.take_back_message()
            self.note(f"{exc.message}. Your message is back in the input line; /clear starts a new conversation.",
                      "red")
            return
        except Exception as exc:  # the turn failed, not the session: report it and keep what was typed
            self.take_back_message()
            self.note(f"error: {describe_error(exc)}. Your message is back in the input line.", "red")
            return
        self.store(Turn.from_reply(reply))
        self.last_stats = reply.stats
        if reply.finish_reason == "length":
            self.note("[stopped at the token limit: /set max_tokens N raises it]")
        self.warn_if_context_nearly_full()

    def take_back_message(self) -> None:
        """Drop the unanswered user turn and offer its text again at the next prompt."""
        if self.conversation.turns and self.conversation.turns[-1].role == "user":
            self.pending = self.conversation.turns[-1].content
            self.drop_last()

    def context_used(self) -> int:
        stats = self.last_stats
        return stats.prompt_tokens + stats.reasoning_tokens + stats.answer_tokens if stats else 0

    def warn_if_context_nearly_full(self) -> None:
        total = self.model.info.context
        used = self.context_used()
        if used >= CONTEXT_WARNING * total:
            self.note(f"warning: the context is {used / total:.0%} full ({used} of {total} tokens); "
                      "/clear starts a new conversation", "yellow")

    def note(self, text: str, style: str = "dim") -> None:
        """A line of ponder's own (never parsed as markup: it may quote the user)."""
        self.console.print(text, style=style, markup=False, highlight=False)


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


def describe_error(exc: Exception) -> str:
    """One line for a failed turn (a bug's traceback too, under --debug)."""
    from ponder.errors import PonderError, debugging

    if isinstance(exc, PonderError):
        return exc.message + (f" ({exc.hint})" if exc.hint else "")
    if debugging():
        import traceback

        traceback.print_exception(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


def _open_history(console):
    from ponder.errors import PonderError
    from ponder.history import History

    try:
        return History()
    except (PonderError, OSError) as exc:
        message = exc.message if isinstance(exc, PonderError) else str(exc)
        console.print(f"warning: history is off: {message}", style="yellow", stderr=True)
        return None


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
