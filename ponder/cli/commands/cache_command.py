"""`ponder cache`: the prompt cache on disk (ponder.prompt_cache): where it is, what it holds, clearing it."""

from __future__ import annotations

import typer

MIB = 2**20

cache_app = typer.Typer(help="The prompt cache: model states after long prompts, kept on disk so that a later run"
                             " loads them instead of processing the same tokens again.",
                        no_args_is_help=False, rich_markup_mode=None)


@cache_app.callback(invoke_without_command=True)
def cache_show(ctx: typer.Context) -> None:
    """Show where the prompt cache is, how many entries it holds, its size and its cap."""
    if ctx.invoked_subcommand is not None:
        return
    from ponder.prompt_cache import cache_dir

    _usable()
    print(f"prompt cache: {cache_dir()}")
    print(holding())


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every entry of the prompt cache."""
    from ponder.errors import PonderError
    from ponder.prompt_cache import cache_dir, clear, usage

    _usable()
    root = cache_dir()
    _, before = usage(root)
    removed, left = clear(root)
    _, after = usage(root)
    print(f"removed {removed} {_entries(removed)} ({(before - after) / MIB:.1f} MiB) from {root}")
    if left:
        raise PonderError(f"{left} {_entries(left)} of the prompt cache could not be removed",
                          hint=f"check the permissions of {root} and the folders in it")


def _usable() -> None:
    """A cache folder that cannot be used (a file, a relative PONDER_CACHE_DIR, open to others) is an error here:
    the commands that run a model only warn, and run without it."""
    from ponder.errors import UsageError
    from ponder.prompt_cache import CACHE_DIR_ENV, cache_problem

    problem = cache_problem()
    if problem:
        raise UsageError(f"the prompt cache cannot be used: {problem}",
                         hint=f"set {CACHE_DIR_ENV} to the absolute path of a folder of your own, closed to others"
                              " (chmod 700), or unset it for the default")


def holding() -> str:
    """What the cache holds, against its cap (config prompt_cache_gib): one line, for `cache` and `doctor`."""
    from ponder.prompt_cache import cache_problem, usage

    problem = cache_problem()
    if problem:
        return f"not used: {problem}"
    entries, size = usage()
    gib = cap_gib()
    if gib == 0:
        cap = "off (config prompt_cache_gib = 0: nothing is loaded or saved)"
    elif gib is None:
        cap = "cap unknown (the config file cannot be read; `ponder config show` says why)"
    else:
        cap = f"cap {gib:g} GiB (config prompt_cache_gib)"
    return f"{entries} {_entries(entries)}, {size / MIB:.1f} MiB; {cap}"


def cap_gib() -> float | None:
    """The cap the config file sets (its default where it sets none); None where the file cannot be read."""
    from ponder.errors import UsageError
    from ponder.prompt_cache import DEFAULT_LIMIT_GIB
    from ponder.settings import read

    try:
        return read().settings.get("prompt_cache_gib", DEFAULT_LIMIT_GIB)
    except UsageError:
        return None


def _entries(n: int) -> str:
    return "entry" if n == 1 else "entries"


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
