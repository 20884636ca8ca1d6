"""The `ponder` command: sub-commands, global options, and errors mapped to exit codes here alone.

Exit codes: 0 ok, 1 model or runtime failure, 2 usage error, 3 no answer (ask), 130 interrupted (Ctrl-C),
129 and 143 stopped by SIGHUP and SIGTERM (128 + the signal, as a shell reports a program the signal
ended), 141 stdout closed early (as a program killed by SIGPIPE would report).
"""

from __future__ import annotations

import errno
import sys
from typing import TextIO

import typer

from ponder import __version__
from ponder.cli.views.terminal import EXIT_INTERRUPTED, Terminal, interrupted, is_tty, silence, stream_closed
from ponder.defaults import DEBUG_ENV
from ponder.errors import PonderError, debugging, describe_os_error, enable_debug

EXIT_BROKEN_PIPE = 141
# A failed write. Without a file name, one that reaches the top is stdout's: ponder names the files it writes in
# its errors, and stdin's read errors are named where it is read (stderr's could not be reported anyway).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
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
    from ponder.cli.commands import (ask_command, backends_command, batch_command, cache_command, chat_command,
                                     config_command, doctor_command, history_command, models_command, plan_command,
                                     pull_command, solve_command)

    for command in (ask_command, chat_command, solve_command, batch_command, history_command, pull_command,
                    models_command, plan_command, backends_command, doctor_command, config_command, cache_command):
        command.register(app)


_register_commands()


def main(argv: list[str] | None = None, term: Terminal | None = None) -> None:
    """Console-script entry point. Bare `ponder` on a terminal opens the chat.

    `term` stands in for the process's streams, for the commands and the error lines alike
    (as httpie's Environment does): tests run a command in-process with one."""
    args = sys.argv[1:] if argv is None else argv
    if not args and is_tty(sys.stdin) and is_tty(sys.stdout):
        args = ["chat"]
    try:
        app(args=args, prog_name="ponder", default_map=_config_defaults(args), obj=term)
        code: int | str | None = 0  # (typer always exits; kept for a command that returns)
    except SystemExit as exc:
        code = _exit_status(exc, term)
    except PonderError as exc:
        message = f"ponder: error: {exc.message}"
        if exc.hint:
            message += f"\n  hint: {exc.hint}"
        code = _fail(message, exc, exc.exit_code, term)
    except OSError as exc:  # a full disk, a closed stream, a file that cannot be read or written
        code = _os_failure(exc, term)
    except Exception as exc:  # a bug: still one line unless debugging
        code = _fail(f"ponder: unexpected error: {type(exc).__name__}: {exc}\n  (run with --debug for the traceback)",
                     exc, 1, term)
    sys.exit(_flushed(code, term))


def _exit_status(exc: SystemExit, term: Terminal | None) -> int | str | None:
    """A command's exit status, where typer's own handlers decided it: a signal, a closed pipe."""
    handled = exc.__context__  # what typer was handling when it exited
    if exc.code == EXIT_INTERRUPTED:  # typer: Exit(130) from the KeyboardInterrupt, silently
        signalled = handled.__cause__ if handled is not None else None
        return interrupted(signalled, _stderr(term))
    if isinstance(handled, BrokenPipeError):  # click's rule is exit 1: ours is SIGPIPE's status, as while streaming
        return _os_failure(handled, term)
    return exc.code


def _os_failure(exc: OSError, term: Terminal | None) -> int:
    """An OS error that reached the top, as one line: a reader that closed stdout early ends quietly with
    141 (what a program killed by SIGPIPE reports); a closed stdout, a full disk, a file out of reach."""
    stdout = _stdout(term)
    if isinstance(exc, BrokenPipeError):
        silence(stdout)
        return EXIT_BROKEN_PIPE
    if stream_closed(stdout) and exc.errno == errno.EBADF:
        return _fail("ponder: error: stdout is closed", exc, 1, term)
    if exc.filename is None and exc.errno in WRITE_ERRNOS:
        silence(stdout)  # what is still buffered must not fail again at exit
        return _fail(f"ponder: error: cannot write to stdout: {exc.strerror or exc}", exc, 1, term)
    return _fail(f"ponder: error: {describe_os_error(exc)}", exc, 1, term)


def _flushed(code: int | str | None, term: Terminal | None) -> int | str | None:
    """Flush stdout before the interpreter does (its failure then would print "Exception ignored" and a
    traceback): output still buffered fails here, where it is reported as any other."""
    stdout = _stdout(term)
    try:
        stdout.flush()
    except BrokenPipeError:
        silence(stdout)
        return EXIT_BROKEN_PIPE if code in (0, None) else code
    except OSError as exc:
        silence(stdout)
        failed = _fail(f"ponder: error: cannot write to stdout: {exc.strerror or exc}", exc, 1, term)
        return failed if code in (0, None) else code
    except ValueError:  # closed already (a test's stream)
        pass
    return code


def _config_defaults(args: list[str]) -> dict | None:
    """The config file's settings as click defaults (below env and flags), for the commands that
    run a model alone: a broken file must stop neither `ponder config` repairing it, nor the rest."""
    from ponder.settings import load

    command = next((arg for arg in args if not arg.startswith("-")), None)  # global options take no value
    if command not in MODEL_COMMANDS or any(a in ("-h", "--help", "--version") for a in args):
        return None  # help shows the built-in defaults, and stays fast
    settings = load()
    return {name: dict(settings) for name in MODEL_COMMANDS}  # the keys are the commands' parameter names


def _stdout(term: Terminal | None) -> TextIO:
    return term.stdout if term else sys.stdout


def _stderr(term: Terminal | None) -> TextIO:
    return term.stderr if term else sys.stderr  # read when needed: click may have swapped sys.stderr


def _say(line: str, term: Terminal | None) -> None:
    from ponder.cli.views.safe_text import visible

    try:  # an error may quote a server's or a file's text: shown, never obeyed
        print(visible(line), file=_stderr(term), flush=True)
    except (OSError, ValueError):  # stderr gone too (a hung-up terminal): nowhere to say it
        pass


def _fail(message: str, exc: BaseException, code: int, term: Terminal | None) -> int:
    if debugging():
        import traceback

        try:
            traceback.print_exception(exc, file=_stderr(term))
        except (OSError, ValueError):
            pass
    _say(message, term)
    return code
