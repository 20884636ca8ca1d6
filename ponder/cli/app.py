"""The `ponder` command: sub-commands, global options, and errors mapped to exit codes here alone.

Exit codes: 0 ok, 1 model or runtime failure, 2 usage error, 3 no answer (ask), 130 interrupted,
141 stdout closed early (as a program killed by SIGPIPE would report).
"""

from __future__ import annotations

import sys
from typing import TextIO

import typer

from ponder import __version__
from ponder.cli.views.terminal import Terminal
from ponder.defaults import DEBUG_ENV
from ponder.errors import PonderError, debugging, enable_debug

EXIT_INTERRUPTED = 130
MODEL_COMMANDS = ("ask", "chat", "solve", "batch")  # the commands the config file sets defaults for

app = typer.Typer(
    name="ponder",
    help="A command-line assistant for <think>-style reasoning models (DeepSeek-R1 and kin).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"ponder {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV, help="Show tracebacks and llama.cpp's log."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if debug:
        enable_debug()


def _register_commands() -> None:
    from ponder.cli.commands import (ask_command, backends_command, batch_command, chat_command, config_command,
                                     doctor_command, history_command, models_command, plan_command, pull_command,
                                     solve_command)

    for command in (ask_command, chat_command, solve_command, batch_command, history_command, pull_command,
                    models_command, plan_command, backends_command, doctor_command, config_command):
        command.register(app)


_register_commands()


def main(argv: list[str] | None = None, term: Terminal | None = None) -> None:
    """Console-script entry point. Bare `ponder` on a terminal opens the chat.

    `term` stands in for the process's streams, for the commands and the error lines alike
    (as httpie's Environment does): tests run a command in-process with one."""
    args = sys.argv[1:] if argv is None else argv
    if not args and sys.stdin.isatty() and sys.stdout.isatty():
        args = ["chat"]
    try:
        app(args=args, prog_name="ponder", default_map=_config_defaults(args), obj=term)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this exit code, silently
            print("\nponder: interrupted", file=_stderr(term))
        raise
    except PonderError as exc:
        message = f"ponder: error: {exc.message}"
        if exc.hint:
            message += f"\n  hint: {exc.hint}"
        _fail(message, exc, exc.exit_code, _stderr(term))
    except Exception as exc:  # a bug or an unforeseen failure: still one line unless debugging
        _fail(f"ponder: unexpected error: {type(exc).__name__}: {exc}\n  (run with --debug for the traceback)", exc, 1,
              _stderr(term))


def _config_defaults(args: list[str]) -> dict | None:
    """The config file's settings as click defaults (below env and flags), for the commands that
    run a model alone: a broken file must stop neither `ponder config` repairing it, nor the rest."""
    from ponder.settings import load

    command = next((arg for arg in args if not arg.startswith("-")), None)  # global options take no value
    if command not in MODEL_COMMANDS or any(a in ("-h", "--help", "--version") for a in args):
        return None  # help shows the built-in defaults, and stays fast
    settings = load()
    return {name: dict(settings) for name in MODEL_COMMANDS}  # the keys are the commands' parameter names


def _stderr(term: Terminal | None) -> TextIO:
    return term.stderr if term else sys.stderr  # read when needed: click may have swapped sys.stderr


def _fail(message: str, exc: BaseException, code: int, stderr: TextIO) -> None:
    if debugging():
        import traceback

        traceback.print_exception(exc, file=stderr)
    try:
        print(message, file=stderr)
    except OSError:
        pass
    sys.exit(code)
