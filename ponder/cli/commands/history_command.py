"""`ponder history`: list, show and delete past conversations (chat sessions and ask one-shots)."""

from __future__ import annotations

import typer

history_app = typer.Typer(help="List, show and delete past conversations.", no_args_is_help=False,
                          rich_markup_mode=None)


def _store():
    from ponder.history import History

    return History()


@history_app.callback(invoke_without_command=True)
def history_list(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many conversations, newest first."),
) -> None:
    """List recent conversations (resume one with `ponder chat --resume ID`)."""
    if ctx.invoked_subcommand is not None:
        return
    from ponder.cli.views.transcript import summary_lines

    store = _store()
    lines = summary_lines(store.summaries(limit))
    print(_as_data("\n".join(lines)) if lines else "no conversations yet")


@history_app.command("show")
def history_show(conversation_id: int = typer.Argument(..., help="The conversation's ID.")) -> None:
    """Print a conversation as Markdown, reasoning in <details> blocks."""
    from ponder.cli.views.transcript import transcript_markdown

    conversation = _load(conversation_id)
    print(_as_data(transcript_markdown(conversation, conversation.model)), end="")


@history_app.command("delete")
def history_delete(conversation_id: int = typer.Argument(..., help="The conversation's ID.")) -> None:
    """Delete a conversation."""
    _load(conversation_id)
    _store().delete(conversation_id)
    print(f"deleted conversation {conversation_id}")


def _as_data(text: str) -> str:
    """What the history holds came from models and prompts: a terminal is shown its control
    sequences rather than obeying them; a pipe or a file gets it exactly as stored."""
    import sys

    from ponder.cli.views.safe_text import visible

    try:
        terminal = sys.stdout.isatty()
    except (AttributeError, ValueError):  # stdout closed (`>&-`): None, or a closed file
        terminal = False
    return visible(text) if terminal else text


def _load(conversation_id: int):
    from ponder.errors import UsageError

    conversation = _store().load(conversation_id)
    if conversation is None:
        raise UsageError(f"no conversation {conversation_id}", hint="`ponder history` lists them")
    return conversation


def register(app: typer.Typer) -> None:
    app.add_typer(history_app, name="history")
