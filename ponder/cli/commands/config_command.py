"""`ponder config`: show, set and locate the config file.

These read the file as it is, problems included (not through `settings.load`, which refuses a
bad value), so that a broken file can be shown and repaired with the command that broke it.
"""

from __future__ import annotations

import sys

import typer

config_app = typer.Typer(help="The config file: defaults for model, backend, sampling and reasoning display.",
                         no_args_is_help=True, rich_markup_mode=None)


@config_app.command("path")
def config_path_command() -> None:
    """Print where the config file is (or would be)."""
    from ponder.settings import config_path

    print(config_path())


@config_app.command("show")
def config_show() -> None:
    """Print the settings in the config file, each invalid one marked (exit 2 if there are any)."""
    from ponder.errors import UsageError
    from ponder.settings import read

    config = read()
    if not config.raw and not config.unparsed:
        print(f"no settings ({config.path} does not exist or is empty)")
    for key, value in config.raw.items():
        wrong = config.problems.get(key)
        print(f"{key} = {value}" + (f"  # {wrong}" if wrong else ""))
    for key, line in config.unparsed.items():
        print(f"{line.strip()}  # {config.problems[key]}")
    if config.problems:
        raise UsageError(f"the config file {config.path} has settings that ponder cannot use (marked above)",
                         hint="`ponder config set KEY VALUE` replaces one; `ponder config unset KEY` removes one")


@config_app.command("set")
def config_set(
    key: str = typer.Argument(..., help="model, backend, temperature, top_p, max_tokens or reasoning."),
    value: str = typer.Argument(..., help="The value; checked before it is written."),
) -> None:
    """Set one setting (the file is created if needed; everything else in it is kept, comments too)."""
    from ponder.cli.commands.user_input import utf8_only
    from ponder.settings import check_key, parse, read

    utf8_only("the key", key)
    check_key(key)
    utf8_only(f"the value for {key}", value)  # (said so before a rule says what the value must be)
    checked = parse(key, value)  # before the file is touched
    read()  # a file ponder cannot understand is left alone
    _write(key, checked, f"{key} = {checked}")


@config_app.command("unset")
def config_unset(
    key: str = typer.Argument(..., help="The setting to remove: its built-in default applies again."),
) -> None:
    """Remove one setting from the config file (an unknown key too)."""
    from ponder.cli.commands.user_input import utf8_only
    from ponder.settings import read

    utf8_only("the key", key)  # a file ponder reads is UTF-8: no such key can be in it
    config = read()
    if key not in config.raw and key not in config.unparsed:
        print(f"{key} is not set ({config.path})")
        return
    _write(key, None, f"removed {key}")


def _write(key: str, value, done: str) -> None:
    """Edit the file in place; settings that are still wrong are kept as written, and named."""
    from ponder.settings import config_path, edit, read

    path = config_path()
    written = edit(key, value, path)
    print(f"{done}  ({path}" + (f" -> {written}" if path.is_symlink() else "") + ")")  # the link's target
    for name, wrong in read(path).problems.items():
        print(f"ponder: warning: {name} in {path} {wrong}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
