"""Models already on this machine: the Hugging Face hub cache (ponder's downloads, shared with
other tools), Ollama's blobs (plain GGUF files behind its manifests) and LM Studio's folder."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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


def find_local(name: str) -> LocalModel | None:
    """The model `ponder models` lists under `name` (or at that path)."""
    return next((m for m in find_all() if name in (m.name, str(m.path))), None)


# --- Hugging Face hub cache -----------------------------------------------------------


def _scan_hub():
    """huggingface_hub's scan of its cache; None where there is none (or no huggingface_hub)."""
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return None
    try:
        return scan_cache_dir()
    except (CacheNotFound, OSError):
        return None


class _HubEntry(NamedTuple):
    """A model in the scanned cache, and what huggingface_hub's scan says it is made of."""

    model: LocalModel
    repo: Any  # huggingface_hub's CachedRepoInfo
    revision: Any  # CachedRevisionInfo
    files: list  # CachedFileInfo: the GGUF file, or every file of an MLX snapshot


def _hub_entries(cache) -> Iterator[_HubEntry]:
    """Each GGUF file ("owner/repo/file.gguf") and MLX snapshot ("owner/repo") in the cache."""
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            files = {f.file_name: f for f in revision.files}
            for name, file in sorted(files.items()):
                if name.endswith(".gguf"):
                    yield _HubEntry(LocalModel(f"{repo.repo_id}/{name}", "hub", file.file_path, file.size_on_disk,
                                               quantization_from_name(name), "llama.cpp"), repo, revision, [file])
            if "config.json" in files and any(n.endswith(".safetensors") for n in files):
                yield _HubEntry(LocalModel(repo.repo_id, "hub", revision.snapshot_path, revision.size_on_disk,
                                           mlx_quantization(revision.snapshot_path), "mlx"),
                                repo, revision, list(files.values()))


def hub_models() -> list[LocalModel]:
    cache = _scan_hub()
    return [entry.model for entry in _hub_entries(cache)] if cache else []


def remove_from_hub(name: str) -> int:
    """Remove the hub-cache model that `ponder models` lists as `name`, in every revision that
    has it: a GGUF file (its blob too, unless another file still links to it) or an MLX
    snapshot. Only entries the cache scan found are touched, and nothing is removed if one of
    them links outside its repo's blobs/. The bytes freed."""
    from ponder.errors import ModelError, UsageError

    cache = _scan_hub()
    entries = [entry for entry in _hub_entries(cache) if entry.model.name == name] if cache else []
    if not entries:
        raise UsageError(f"{name} is not a model in the Hugging Face cache", hint="`ponder models` lists them")
    for entry in entries:
        for file in entry.files:
            if not _in_repo(file, entry.repo.repo_path):
                raise ModelError(f"not removing {name}: {file.file_path} links to {file.blob_path}, "
                                 "outside its repo's blobs/", hint="remove that link yourself if it should go")
    if entries[0].model.backend == "mlx":  # one repo's snapshots (an MLX name is its repo id)
        # delete_revisions looks a commit hash up in every repo of the cache it is given: give it this one only
        repo_alone = dataclasses.replace(cache, repos=frozenset({entries[0].repo}))
        strategy = repo_alone.delete_revisions(*(entry.revision.commit_hash for entry in entries))
    else:
        strategy = cache.delete_files(*(file for entry in entries for file in entry.files))
    strategy.execute()
    return strategy.expected_freed_size


def _in_repo(file, repo_path: Path) -> bool:
    """Whether a cached file's snapshot entry lies in its repo's snapshots/ and its blob in its
    blobs/ (or is the entry itself). The scan reads a link without following it further, so a
    blob links into the shared blob store from blobs/ and still counts as in the repo."""
    snapshots = os.path.realpath(repo_path / "snapshots")
    entry_dir = os.path.realpath(file.file_path.parent)
    if os.path.commonpath([snapshots, entry_dir]) != snapshots:
        return False
    return file.blob_path == file.file_path or file.blob_path.parent == repo_path / "blobs"


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
