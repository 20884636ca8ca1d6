"""Slash commands of `ponder chat`. Each takes the REPL and the rest of the line."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import replace
from pathlib import Path

from ponder.settings import REASONING

HELP = """\
/help                      this list
/clear                     start a new conversation
/retry                     regenerate the last reply
/compact                   replace the earlier turns with the model's summary (in what it sees)
/think show|collapse|hide  how reasoning is shown
/set NAME VALUE            temperature, top_p, max_tokens, seed (none: random), think_budget,
                           on_loop or on_full (drop|compact|refuse: a chat past the context)
/stats                     the last reply's tokens, speed and thinking time; context used
/save [FILE]               the conversation as Markdown (reasoning in <details>)
/copy [N]                  the last answer's first (or N-th) code block to the clipboard (OSC 52)
/save-code [N] FILE        that code block to a new file
/history                   recent conversations (resume one with ponder chat --resume ID)
/model                     the model in use
/exit                      quit (Ctrl-D too)
Enter sends; Esc-Enter or Alt-Enter adds a line; \"\"\" opens and closes a multi-line block;
Ctrl-C stops a reply (the partial answer is kept) or clears the line."""

class CommandError(Exception):
    """A bad command or value: shown, and the REPL goes on."""


def run_command(repl, line: str) -> None:
    name, _, rest = line.partition(" ")
    handler = COMMANDS.get(name.lower())
    try:
        if handler is None:
            known = ", ".join(COMMANDS)
            raise CommandError(f"unknown command {name}; the commands are {known}")
        handler(repl, rest.strip())
    except CommandError as exc:
        repl.note(str(exc), "red")


def _help(repl, _args: str) -> None:
    repl.note(HELP, "")


def _exit(repl, _args: str) -> None:
    repl.running = False


def _clear(repl, _args: str) -> None:
    repl.chat.clear()
    repl.note("new conversation")


def _retry(repl, _args: str) -> None:
    turns = repl.chat.conversation.turns
    if not turns or turns[-1].role != "assistant":
        raise CommandError("nothing to retry yet")
    repl.chat.drop_last()
    repl.generate()


def _think(repl, args: str) -> None:
    if args not in REASONING:
        raise CommandError(f"/think takes one of {', '.join(REASONING)} (now: {repl.run.mode})")
    repl.run.mode = args
    repl.note(f"reasoning: {args}")


SETTABLE = ("temperature", "top_p", "max_tokens", "seed", "think_budget", "on_loop", "on_full")


def _set(repl, args: str) -> None:
    from ponder.errors import UsageError
    from ponder.settings import parse

    name, _, value = args.partition(" ")
    name, value = name.replace("-", "_"), value.strip()
    if name not in SETTABLE or not value:
        current = ", ".join(f"{key} {_setting(repl, key)}" for key in SETTABLE)
        raise CommandError(f"usage: /set NAME VALUE, NAME one of {', '.join(SETTABLE)} (now: {current})")
    try:
        none = name in ("seed", "think_budget") and value.lower() == "none"
        parsed = None if none else parse(name, value)
    except UsageError as exc:  # the rules flags and the config file follow too
        raise CommandError(exc.message) from None
    if name == "on_full":  # the chat's, not a generation setting
        repl.chat.on_full = parsed
    else:
        repl.run.params = replace(repl.run.params, **{name: parsed})
    repl.note(f"{name} = {parsed}")


def _setting(repl, name: str):
    return repl.chat.on_full if name == "on_full" else getattr(repl.run.params, name)


def _compact(repl, args: str) -> None:
    if args:
        raise CommandError("/compact takes nothing after it")
    if not repl.chat.compactable():
        raise CommandError("nothing to compact: the model sees no earlier turn")
    repl.compact()


def _stats(repl, _args: str) -> None:
    stats = repl.chat.last_stats
    if stats is None:
        raise CommandError("no finished reply yet (an interrupted reply has no figures)")
    from ponder.cli.views.show_reply import format_stats

    total = repl.chat.model.info.context
    used = repl.chat.context_used()
    context = f"context {used} of {total} tokens ({used / total:.0%})" if total else f"context {used} tokens"
    left = repl.chat.left_out()
    context += f" ({left} oldest turn{'' if left == 1 else 's'} left out)" if left else ""
    budget = repl.run.params.think_budget
    repl.note(f"{format_stats(stats)} · thinking {stats.thinking_s:.1f} s · {context} · think_budget "
              f"{'none' if budget is None else budget}", "")


def _save(repl, args: str) -> None:
    if not repl.chat.conversation.turns:
        raise CommandError("nothing to save yet")
    from ponder.cli.views.transcript import transcript_markdown

    path = Path(args).expanduser() if args else Path(f"ponder-chat-{time.strftime('%Y%m%d-%H%M%S')}.md")
    _write_new(path, transcript_markdown(repl.chat.conversation, repl.chat.model.info.name))
    repl.note(f"saved {path}")


def _write_new(path: Path, text: str) -> None:
    """`text` as the new file `path`: an existing name (a link too) is never overwritten, as /save
    and /save-code agree."""
    from ponder import files

    try:
        files.write_text(path, text, exclusive=True)
    except files.FileExists:
        raise CommandError(f"{path} exists; nothing written (give another name)") from None
    except files.FileError as exc:
        raise CommandError(exc.message) from None


def _code_block(repl, number: str):
    """The `number`-th (1-based) code block of the last answer, and a few words about it."""
    turns = repl.chat.conversation.turns
    if not turns or turns[-1].role != "assistant":
        raise CommandError("no answer yet")
    from ponder.code_blocks import code_blocks

    blocks = code_blocks(turns[-1].content)
    if not blocks:
        raise CommandError("the last answer has no code block")
    if not number.isdigit() or not 1 <= int(number) <= len(blocks):
        raise CommandError(f"N must be 1 to {len(blocks)}: the last answer has {_count(len(blocks), 'code block')}")
    block = blocks[int(number) - 1]
    about = f"code block {number} ({_count(len(block.text.splitlines()), 'line')})"
    return block, about + ("" if block.closed else " (cut off: the answer ended inside it)")


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _copy(repl, args: str) -> None:
    block, about = _code_block(repl, args or "1")
    term, name = repl.run.term, os.environ.get("TERM", "")
    if not term.stdout_is_tty:
        raise CommandError("cannot copy: the output is not a terminal; /save-code FILE writes the block to a file")
    if name in ("dumb", "linux"):  # the Linux console has no OSC 52
        raise CommandError(f"cannot copy: this terminal (TERM={name}) has no clipboard sequence (OSC 52); "
                           "/save-code FILE writes the block to a file")
    # OSC 52 ("c": the clipboard) is written to the terminal itself, so it reaches the clipboard over SSH too.
    term.stdout.write(f"\x1b]52;c;{base64.b64encode(block.text.encode()).decode()}\a")
    term.stdout.flush()
    # tmux drops the sequence unless told otherwise, and the terminal cannot say whether it took it.
    tmux = " (under tmux: set -g set-clipboard on)" if os.environ.get("TMUX") else ""
    repl.note(f"copied {about} to the clipboard{tmux}")


def _save_code(repl, args: str) -> None:
    number, _, file = args.partition(" ")
    if not number.isdigit() or not file.strip():  # no N: the whole line is the file's name
        number, file = "1", args
    file = file.strip()
    if not file or file.isdigit():
        raise CommandError("usage: /save-code [N] FILE")
    block, about = _code_block(repl, number)
    path = Path(file).expanduser()
    _write_new(path, block.text)
    repl.note(f"saved {about} to {path}")


def _history(repl, _args: str) -> None:
    if repl.chat.history is None:
        raise CommandError(f"history is off in this session ({repl.chat.history_error or '--no-log'})")
    from ponder.cli.views.transcript import summary_lines
    from ponder.history import HistoryError

    try:
        summaries = repl.chat.history.summaries()
    except HistoryError as exc:
        raise CommandError(f"cannot read the history: {exc.reason}") from exc
    for line in summary_lines(summaries) or ["no conversations yet"]:
        repl.note(line, "")


def _model(repl, _args: str) -> None:
    info = repl.chat.model.info
    context = f"context {info.context} tokens (trained {info.trained_context})" if info.context else "context not told"
    repl.note(f"{info.name} · {info.backend} · {context} · {info.path}", "")


COMMANDS = {
    "/help": _help, "/clear": _clear, "/retry": _retry, "/compact": _compact, "/think": _think, "/set": _set,
    "/stats": _stats, "/save": _save, "/copy": _copy, "/save-code": _save_code, "/history": _history, "/model": _model,
    "/exit": _exit, "/quit": _exit,
}
