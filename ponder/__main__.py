"""`ponder` (the console script) and `python -m ponder`."""

import sys


def main() -> None:
    try:
        from ponder.cli.app import main as run

        run()
    except KeyboardInterrupt:  # while the CLI's libraries load, or before typer's own handling begins
        sys.stderr.write("\nponder: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
