"""Models already on this machine: the Hugging Face hub cache (ponder's downloads, shared with
other tools), Ollama's blobs (plain GGUF files behind its manifests) and LM Studio's folder."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_LIBRARY = ("registry.ollama.ai", "library")
QUANT_IN_NAME = re.compile(r"(?i)(?:^|[-_.])((?:IQ|Q)\d_[A-Z0-9_]+|Q\d_\d|F16|BF16|F32|\d-?bit)(?=[-_.]|$)")


@dataclass(frozen=True)
class LocalModel:
    name: str  # what to pass to --model
    source: str  # "hub", "ollama", "lmstudio"
    path: Path
    size: int
    quantization: str
    backend: str  # "llama.cpp" or "mlx"


def find_all() -> list[LocalModel]:
    return [*hub_models(), *ollama_models(), *lmstudio_models()]


# --- Hugging Face hub cache -----------------------------------------------------------


def hub_models() -> list[LocalModel]:
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return []
    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError):
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            files = {f.file_name: f for f in revision.files}
            for name, file in sorted(files.items()):
                if name.endswith(".gguf"):
                    found.append(LocalModel(f"{repo.repo_id}/{name}", "hub", file.file_path, file.size_on_disk,
                                            quantization_from_name(name), "llama.cpp"))
            if "config.json" in files and any(n.endswith(".safetensors") for n in files):
                found.append(LocalModel(repo.repo_id, "hub", revision.snapshot_path, revision.size_on_disk,
                                        mlx_quantization(revision.snapshot_path), "mlx"))
    return found


def mlx_quantization(directory: Path) -> str:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    bits = (config.get("quantization") or {}).get("bits")
    return f"{bits}-bit" if bits else config.get("torch_dtype", "")


def quantization_from_name(name: str) -> str:
    match = QUANT_IN_NAME.search(Path(name).stem)
    return match.group(1).upper() if match else ""


# --- Ollama ---------------------------------------------------------------------------------


def ollama_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def ollama_models(root: Path | None = None) -> list[LocalModel]:
    """Each manifest names its model layer's digest; the blob is the GGUF file itself."""
    root = root or ollama_dir()
    manifests = root / "manifests"
    found = []
    for manifest in sorted(p for p in manifests.glob("*/*/*/*") if p.is_file()):
        host, namespace, model, tag = manifest.relative_to(manifests).parts
        try:
            layers = json.loads(manifest.read_text()).get("layers", [])
        except (OSError, ValueError):
            continue
        layer = next((item for item in layers if item.get("mediaType") == OLLAMA_MODEL_LAYER), None)
        if not layer or "digest" not in layer:
            continue
        blob = root / "blobs" / layer["digest"].replace(":", "-")
        if not blob.is_file():
            continue
        name = f"{model}:{tag}" if (host, namespace) == OLLAMA_LIBRARY else f"{host}/{namespace}/{model}:{tag}"
        found.append(LocalModel(name, "ollama", blob, blob.stat().st_size, _gguf_quantization(blob), "llama.cpp"))
    return found


def _gguf_quantization(path: Path) -> str:
    from ponder.gguf_header import NotGguf, read_metadata, summary

    try:
        return summary(read_metadata(path))["quantization"]
    except (NotGguf, OSError, ValueError):
        return ""


# --- LM Studio ------------------------------------------------------------------------------


def lmstudio_dirs() -> list[Path]:
    home = Path.home()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def lmstudio_models(roots: list[Path] | None = None) -> list[LocalModel]:
    """LM Studio keeps publisher/repo/file.gguf (and MLX directories) under its models folder."""
    found = []
    for root in roots or lmstudio_dirs():
        for path in sorted(root.glob("*/*/*.gguf")):
            found.append(LocalModel(str(path), "lmstudio", path, path.stat().st_size,
                                    quantization_from_name(path.name), "llama.cpp"))
        for config in sorted(root.glob("*/*/config.json")):
            directory = config.parent
            size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
            if size:
                found.append(LocalModel(str(directory), "lmstudio", directory, size, mlx_quantization(directory), "mlx"))
    return found
