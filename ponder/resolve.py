"""Which model a user means: a path, a name `ponder models` lists, a catalogue alias, or (none
given) the backend's default model. Turned into something a backend can load; no terminal here."""

from __future__ import annotations

import os

from ponder.defaults import MODEL_ENV
from ponder.errors import ModelError


class NotDownloaded(ModelError):
    """A catalogue model (named, or the default) that is not in the cache yet; a front end may
    offer to download `artifact`."""

    def __init__(self, artifact, given: bool):
        super().__init__(
            f"{artifact.alias} is not downloaded" if given
            else f"no model given, and the default model {artifact.alias} is not downloaded",
            hint=f"ponder pull {artifact.alias}   (or pass --model, or set {MODEL_ENV})",
        )
        self.artifact = artifact
        self.given = given


def resolve_model(name: str | None, backend: str, warnings: list[str] | None = None) -> str:
    """The path (or hub repo id, for mlx-lm) of the model `name` stands for; `name` None means
    $PONDER_MODEL, else the default model of `backend`. Raises NotDownloaded for a catalogue model
    that is not in the cache. A name no local model has gets, in `warnings`, the entries the model
    folders' scan skipped (one of them may have been it)."""
    from ponder.catalogue import CATALOGUE, DEFAULTS

    name = name or os.environ.get(MODEL_ENV)
    path = os.path.expanduser(name) if name else None
    if path and os.path.lexists(path):
        _check_path(path)
        return path
    if name and name.lower() not in CATALOGUE:
        from ponder.backends import MLX, model_kind
        from ponder.models import find_all

        # Any name `ponder models` prints (owner/repo/file.gguf, deepseek-r1:7b…) runs from its path;
        # but an MLX repo id goes to mlx-lm as it is: mlx-lm reads the same cache, and names the model by it.
        found = find_all()
        listed = found.named(name)
        if listed is None and warnings is not None:
            warnings += found.warnings
        if listed is not None and not (listed.backend == MLX and model_kind(name) == MLX):
            return str(listed.path)
        if listed is None and ":" in name and "/" not in name:  # an Ollama name (deepseek-r1:7b) it does not have
            from ponder.errors import shortened
            from ponder.models import ollama_dir
            from ponder.outside_files import shown

            named = shown(shortened(name, 200))
            raise ModelError(f"no local model {named}: Ollama has none of that name in {shown(ollama_dir())}",
                             hint=f"ollama pull {named}, or pass a .gguf path; ponder models lists what is here")
        return path
    from ponder.backends import AUTO, default_backend
    from ponder.download import cached

    artifact = CATALOGUE[name.lower() if name else DEFAULTS[default_backend() if backend == AUTO else backend]]
    found = cached(artifact)
    if found is None:
        raise NotDownloaded(artifact, given=name is not None)
    return str(found)


def _check_path(path: str) -> None:
    """A model path a backend can read without blocking: a regular file, or a directory whose
    config.json (where it has one) is a JSON object. A one-line ModelError otherwise."""
    from ponder.outside_files import Unreadable, problem, read_json_object, shown

    hint = "pass a .gguf file or an MLX model directory"
    if os.path.isdir(path):
        try:
            os.scandir(path).close()
            config = os.path.join(path, "config.json")
            if os.path.lexists(config):
                read_json_object(config)
        except Unreadable as exc:
            raise ModelError(f"{shown(config)} is {exc}", hint="an MLX model's config.json is a JSON object") from None
        except OSError as exc:
            raise ModelError(f"cannot read {shown(path)}: {exc.strerror or exc}") from None
        return
    why = problem(path)  # a FIFO or a device would block a reader; a broken link leads nowhere
    if why:
        raise ModelError(f"{shown(path)} is {why.replace('regular file', 'regular file or a directory')}", hint=hint)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        raise ModelError(f"cannot read {shown(path)}: {exc.strerror or exc}") from None
