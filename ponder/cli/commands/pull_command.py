"""`ponder pull`: download a catalogued model (or any hub GGUF / MLX repo) into the hub cache."""

from __future__ import annotations

from typing import Optional

import typer


def pull(
    name: Optional[str] = typer.Argument(None, help="An alias (see --list), owner/repo/file.gguf, or an MLX "
                                         "repo; default: the default model of the backend.", show_default=False),
    backend: str = typer.Option("auto", "--backend", help="Whose default model to pull: auto, mlx or llama.cpp."),
    list_: bool = typer.Option(False, "--list", help="List the catalogue."),
) -> None:
    """Download a model, resumably, verified against the catalogue or the hub's sha256."""
    from ponder.catalogue import CATALOGUE

    if list_:
        for alias, artifact in CATALOGUE.items():
            print(f"{alias:16} {artifact.backend:9} {artifact.size / 1e9:5.2f} GB  {artifact.reference}")
        return
    artifact = artifact_for(name, backend)
    from ponder.download import pull as download

    path = download(artifact)
    print(path)


def artifact_for(name: str | None, backend: str = "auto"):
    from ponder.backends import AUTO, default_backend
    from ponder.catalogue import DEFAULTS, lookup
    from ponder.errors import UsageError

    if name is None:
        name = DEFAULTS.get(default_backend() if backend == AUTO else backend)
        if name is None:
            raise UsageError(f"no default model for the {backend} backend")
    artifact = lookup(name)
    if artifact is None:
        raise UsageError(f"unknown model {name!r}", hint="`ponder pull --list` shows the aliases; or owner/repo/file.gguf")
    return artifact


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
