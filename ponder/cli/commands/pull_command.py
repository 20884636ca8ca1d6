"""`ponder pull`: download a catalogued model (or any hub GGUF / MLX repo) into the hub cache."""

from __future__ import annotations

from typing import Optional

import typer


def pull(
    name: Optional[str] = typer.Argument(None, help="An alias (see --list), owner/repo/file.gguf, or an MLX "
                                         "repo; default: the default model of the backend.", show_default=False),
    backend: str = typer.Option("auto", "--backend", help="Whose default model to pull: auto, mlx or llama.cpp."),
    list_: bool = typer.Option(False, "--list", help="List the catalogue."),
    with_draft: bool = typer.Option(False, "--with-draft",
                                    help="Also download the model's draft for --speculate draft (the catalogue's pair)."),
) -> None:
    """Download a model, resumably, verified against the catalogue or the hub's sha256. Prints its path (then
    the draft's, with --with-draft)."""
    from ponder.catalogue import CATALOGUE, draft_for

    if list_:
        for alias, artifact in CATALOGUE.items():
            drafted = f"  (draft: {artifact.draft})" if artifact.draft else ""
            print(f"{alias:16} {artifact.backend:9} {artifact.size / 1e9:5.2f} GB  {artifact.reference}{drafted}")
        return
    artifact = artifact_for(name, backend)
    draft = draft_for(artifact.alias) if with_draft else None
    if with_draft and draft is None:  # before any download
        from ponder.errors import UsageError

        paired = ", ".join(alias for alias, known in CATALOGUE.items() if known.draft)
        raise UsageError(f"the catalogue pairs no draft with {artifact.alias}", hint=f"drafts are known for {paired}")
    from ponder.download import pull as download

    print(download(artifact), flush=True)
    if draft is not None:
        print(download(draft))


def artifact_for(name: str | None, backend: str = "auto"):
    from ponder.backends import AUTO, default_backend
    from ponder.catalogue import DEFAULTS, lookup
    from ponder.errors import UsageError, shortened

    if name is None:
        name = DEFAULTS.get(default_backend() if backend == AUTO else backend)
        if name is None:
            raise UsageError(f"no default model for the backend {backend!r}", hint="auto, mlx or llama.cpp")
    artifact = lookup(name)
    if artifact is None:
        raise UsageError(f"unknown model {shortened(name, 200)!r}", hint="`ponder pull --list` shows the aliases; or owner/repo/file.gguf")
    return artifact


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
