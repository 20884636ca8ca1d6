"""`ponder` (the console script) and `python -m ponder`."""

import sys


def main() -> None:
    from ponder.cli.views.terminal import interrupted, keep_standard_streams
    from ponder.threads import raise_on_termination

    keep_standard_streams()  # before anything opens a file: descriptors 0-2 stay what the shell made them
    raise_on_termination()  # SIGTERM and SIGHUP stop as Ctrl-C does, whenever they come
    try:
        from ponder.cli.app import main as run

        run()
    except KeyboardInterrupt as exc:  # while the CLI's libraries load, or before typer's own handling begins
        sys.exit(interrupted(exc, sys.stderr))


if __name__ == "__main__":
    main()
