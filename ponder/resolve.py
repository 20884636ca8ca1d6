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


def resolve_model(name: str | None, backend: str) -> str:
    """The path (or hub repo id, for mlx-lm) of the model `name` stands for; `name` None means
    $PONDER_MODEL, else the default model of `backend`. Raises NotDownloaded for a catalogue model
    that is not in the cache."""
    from ponder.catalogue import CATALOGUE, DEFAULTS

    name = name or os.environ.get(MODEL_ENV)
    path = os.path.expanduser(name) if name else None
    if path and os.path.exists(path):
        if not (os.path.isfile(path) or os.path.isdir(path)):  # a FIFO or a device: reading it could block
            raise ModelError(f"{path} is not a regular file or a directory",
                             hint="pass a .gguf file or an MLX model directory")
        return path
    if name and name.lower() not in CATALOGUE:
        from ponder.backends import MLX, model_kind
        from ponder.models import find_local

        # Any name `ponder models` prints (owner/repo/file.gguf, deepseek-r1:7b…) runs from its path;
        # but an MLX repo id goes to mlx-lm as it is: mlx-lm reads the same cache, and names the model by it.
        listed = find_local(name)
        if listed is not None and not (listed.backend == MLX and model_kind(name) == MLX):
            return str(listed.path)
        return path
    from ponder.backends import AUTO, default_backend
    from ponder.download import cached

    artifact = CATALOGUE[name.lower() if name else DEFAULTS[default_backend() if backend == AUTO else backend]]
    found = cached(artifact)
    if found is None:
        raise NotDownloaded(artifact, given=name is not None)
    return str(found)
