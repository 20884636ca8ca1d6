"""Backend registry: a name maps to "module:Class", imported only when that backend is used.

Third parties add backends through the entry-point group `ponder.backends`
(name = "package.module:BackendClass").
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from ponder.backends.base import Backend, LoadOptions, Model, ModelInfo
from ponder.errors import BackendError, UsageError

__all__ = ["Backend", "LoadOptions", "Model", "ModelInfo", "available", "get_backend", "select_backend"]

ENTRY_POINT_GROUP = "ponder.backends"

BUILTIN = {
    "llama.cpp": "ponder.backends.llamacpp:LlamaCppBackend",
}


@lru_cache(maxsize=1)
def available() -> dict[str, str]:
    """Every known backend name and where it lives; built-ins win over plug-ins."""
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILTIN}


def get_backend(name: str) -> Backend:
    target = BUILTIN.get(name) or available().get(name)
    if target is None:
        raise UsageError(f"unknown backend {name!r}", hint="known backends: " + ", ".join(sorted(available())))
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {name!r} cannot be imported: {exc}") from exc
    return getattr(module, class_name)()


def select_backend(model_path: str, requested: str = "auto") -> str:
    """The backend for a model: an explicit choice, else what the model file implies."""
    if requested != "auto":
        return requested
    return "llama.cpp"
