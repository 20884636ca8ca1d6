"""Backend registry: a name maps to "module:Class", imported only when that backend is used.

Third parties add backends through the entry-point group `ponder.backends`
(name = "package.module:BackendClass").
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from ponder.backends.base import Backend, BackendProbe, LoadOptions, Model, ModelInfo
from ponder.errors import BackendError, ModelError, UsageError
from ponder.gguf_header import is_gguf
from ponder.machine import apple_silicon

__all__ = [
    "Backend", "BackendProbe", "LoadOptions", "Model", "ModelInfo", "available", "get_backend", "probe",
    "select_backend",
]

ENTRY_POINT_GROUP = "ponder.backends"
AUTO = "auto"
MLX, LLAMA_CPP = "mlx", "llama.cpp"

BUILTIN = {
    MLX: "ponder.backends.mlx:MlxBackend",
    LLAMA_CPP: "ponder.backends.llamacpp:LlamaCppBackend",
}

# What to install when a built-in backend's engine is missing.
INSTALL_HINTS = {
    MLX: "install mlx-lm into ponder's environment: ~/.local/share/ponder/venv/bin/pip install mlx-lm"
         " (and mlx[cpu] on Linux)",
    LLAMA_CPP: "install llama-cpp-python into ponder's environment: ~/.local/share/ponder/venv/bin/pip install"
               " llama-cpp-python",
}
UPGRADE_HINTS = {MLX: "pip install -U mlx-lm", LLAMA_CPP: "pip install -U llama-cpp-python (or run scripts/install again)"}


@lru_cache(maxsize=1)
def available() -> dict[str, str]:
    """Every known backend name and where it lives; built-ins win over plug-ins."""
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILTIN}


def get_backend(name: str) -> Backend:
    target = BUILTIN.get(name) or available().get(name)
    if target is None:
        raise UsageError(f"unknown backend {name!r}", hint="known backends: auto, " + ", ".join(sorted(available())))
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BackendError(
            f"the {name} backend is not installed here (no module {exc.name!r})",
            hint=INSTALL_HINTS.get(name),
        ) from exc
    except ImportError as exc:  # installed, but without a name ponder uses: too old
        raise BackendError(f"the installed {name} engine is too old for ponder ({exc})",
                           hint=UPGRADE_HINTS.get(name)) from exc
    return getattr(module, class_name)()


def probe(name: str) -> BackendProbe:
    """Whether backend `name` can run here, and with what acceleration; never raises."""
    try:
        return get_backend(name).probe()
    except BackendError as exc:
        return BackendProbe(usable=False, reason=exc.message + (f"; {exc.hint}" if exc.hint else ""))
    except Exception as exc:  # an engine that imports but fails on this machine
        return BackendProbe(usable=False, reason=f"{type(exc).__name__}: {exc}")


def default_backend() -> str:
    """MLX on Apple Silicon (where it is installed by default), llama.cpp elsewhere."""
    return MLX if apple_silicon() and importlib.util.find_spec("mlx_lm") else LLAMA_CPP


def model_kind(model: str) -> str | None:
    """Which backend a model reference implies: a GGUF file llama.cpp, an MLX directory
    (config.json) or a hub repo id MLX; None when it implies nothing."""
    path = Path(model)
    if path.suffix.lower() == ".gguf" or is_gguf(path):
        return LLAMA_CPP
    if path.is_dir():
        return MLX if (path / "config.json").is_file() else None
    if _looks_like_repo_id(model):
        return MLX
    return None


def _looks_like_repo_id(model: str) -> bool:
    """"owner/name", as on the Hugging Face hub (mlx-community/…)."""
    owner, slash, name = model.partition("/")
    return bool(slash and owner and name and "/" not in name and not model.startswith((".", "~")))


def select_backend(model: str, requested: str = AUTO) -> str:
    """The backend for a model: an explicit choice (checked against what the model is),
    else what the model implies, else this platform's default."""
    kind = model_kind(model)
    if requested == AUTO:
        if kind is None and Path(model).is_dir():
            raise ModelError(
                f"{model} is not a model directory: it has no config.json",
                hint="pass a .gguf file or an MLX model directory (config.json, *.safetensors, tokenizer)",
            )
        return kind or default_backend()
    if requested == MLX and kind == LLAMA_CPP:
        raise UsageError(
            f"{model} is a GGUF file, which the mlx backend cannot load",
            hint="use --backend llama.cpp (or auto), or an MLX model directory",
        )
    if requested == LLAMA_CPP and kind == MLX:
        raise UsageError(
            f"{model} is an MLX model " + ("directory" if Path(model).is_dir() else "repo") + ", which llama.cpp cannot load",
            hint="use --backend mlx (or auto), or a .gguf file",
        )
    return requested
