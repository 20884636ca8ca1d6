"""`ponder config`: show, set and locate the config file."""

from __future__ import annotations

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
    """Print the settings in the config file."""
    from ponder.settings import config_path, load

    settings = load()
    if not settings:
        print(f"no settings ({config_path()} does not exist or is empty)")
    for key, value in settings.items():
        print(f"{key} = {value}")


@config_app.command("set")
def config_set(
    key: str = typer.Argument(..., help="model, backend, temperature, top_p, max_tokens or reasoning."),
    value: str = typer.Argument(..., help="The value; checked before it is written."),
) -> None:
    """Set one setting (the file is created if needed)."""
    from ponder.settings import load, parse, save

    settings = load()
    settings[key] = parse(key, value)
    print(f"{key} = {settings[key]}  ({save(settings)})")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
