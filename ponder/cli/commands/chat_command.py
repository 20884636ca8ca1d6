"""`ponder chat`: the command; the REPL itself is ponder/cli/chat/."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import DEBUG, Display, ModelChoice, Sampling, Thinking, option_groups
from ponder.settings import OnFull


@option_groups
def chat(
    invocation: typer.Context,  # tells where --reasoning came from
    *,
    model: ModelChoice,
    sampling: Sampling,
    thinking: Thinking,
    display: Display,
    resume_last: bool = typer.Option(False, "--continue", "-c", help="Resume the last conversation."),
    resume: Optional[int] = typer.Option(None, "--resume", help="Resume conversation ID (see `ponder history`).",
                                         show_default=False),
    no_log: bool = typer.Option(False, "--no-log", help="Keep this conversation out of the history database."),
    on_full: OnFull = typer.Option(
        "drop", "--on-full",
        help="When the next message and room for its reply no longer fit the context: drop the oldest turns from"
             " what the model sees, compact them into a summary the model writes, or refuse (/clear starts anew)."
             " The history keeps every turn.",
    ),
    debug: bool = DEBUG,
) -> None:
    """Chat with the model in an interactive session (type /help inside)."""
    from ponder.cli.chat.repl import ChatRepl
    from ponder.cli.commands.model_run import Run

    run = Run.start(invocation, sampling, thinking, display, debug=debug)
    run.needs_stdout()
    repl = ChatRepl(run, log=not no_log, on_full=on_full)
    repl.chat.resume(resume, resume_last)  # before loading: a bad ID fails fast
    repl.chat.use(run.load(model))
    repl.loop()
    if repl.input.interactive:
        return
    if repl.failed:  # piped: a turn that failed (2: a message longer than the context) fails the command
        raise typer.Exit(repl.failed)
    last = repl.last_reply
    if last is not None and not last.answer.strip():
        from ponder.cli.views.show_reply import EXIT_NO_ANSWER

        raise typer.Exit(EXIT_NO_ANSWER)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
