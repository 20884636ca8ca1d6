"""Models already on this machine: the Hugging Face hub cache (ponder's downloads, shared with
other tools), Ollama's blobs (plain GGUF files behind its manifests) and LM Studio's folder.

These folders are outside data: a broken link, a loop, an odd manifest or an unreadable folder is
skipped with a line in `Found.warnings` (for the command to show), never a crash of the whole list."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ponder.outside_files import Unreadable, entries, problem, read_json_object, shown, subdirs, why

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_LIBRARY = ("registry.ollama.ai", "library")
DIGEST = re.compile(r"[a-z0-9]+:[0-9a-f]{32,128}")  # "sha256:…": never a path out of blobs/
QUANT_IN_NAME = re.compile(r"(?i)(?:^|[-_.])((?:IQ|Q)\d_[A-Z0-9_]+|Q\d_\d|F16|BF16|F32|\d-?bit)(?=[-_.]|$)")


@dataclass(frozen=True)
class LocalModel:
    name: str  # what to pass to --model
    source: str  # "hub", "ollama", "lmstudio"
    path: Path
    size: int
    quantization: str
    backend: str  # "llama.cpp" or "mlx"


@dataclass
class Found:
    """The models found, and a line for each entry skipped ("skipped PATH: why")."""

    models: list[LocalModel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def named(self, name: str) -> LocalModel | None:
        """The model `ponder models` lists under `name` (or at that path)."""
        return next((m for m in self.models if name in (m.name, str(m.path))), None)

    def skip(self, entry, reason: str) -> None:
        self.warnings.append(f"skipped {shown(entry)}: {reason}")


def find_all() -> Found:
    found = Found()
    _add_hub(found)
    _add_ollama(found)
    _add_lmstudio(found)
    return found


# --- Hugging Face hub cache -----------------------------------------------------------


def _scan_hub(found: Found):
    """huggingface_hub's view of its cache (an HFCacheInfo), scanned a repo at a time so that one
    odd repo is skipped alone; None where there is no cache (or no huggingface_hub)."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import CorruptedCacheException, HFCacheInfo
        from huggingface_hub.utils._cache_manager import _scan_cached_repo
    except ImportError:
        return None
    cache_dir = Path(os.path.abspath(os.path.expanduser(constants.HF_HUB_CACHE)))
    if not os.path.lexists(cache_dir):
        return None
    try:
        cache_dir = cache_dir.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (Python 3.11)
        found.skip(cache_dir, problem(cache_dir) or why(exc))
        return None
    repos = []
    for entry in entries(cache_dir, found.skip):
        repo = Path(entry.path)
        if not entry.name.startswith("models--") or not os.path.lexists(repo / "snapshots"):
            continue  # datasets, spaces, .locks; a download that has not finished a file yet
        try:
            repos.append(_scan_cached_repo(repo))
        except (CorruptedCacheException, OSError, ValueError, RuntimeError) as exc:
            where = getattr(exc, "filename", None)  # which file of the repo, where the error knows
            found.skip(repo, why(exc) + (f" ({shown(where)})" if where else ""))
    return HFCacheInfo(size_on_disk=sum(r.size_on_disk for r in repos), repos=frozenset(repos),
                       incomplete_files=frozenset(), warnings=[], cache_dir=cache_dir)


class _HubEntry(NamedTuple):
    """A model in the scanned cache, and what huggingface_hub's scan says it is made of."""

    model: LocalModel
    repo: Any  # huggingface_hub's CachedRepoInfo
    revision: Any  # CachedRevisionInfo
    files: list  # CachedFileInfo: the GGUF file, or every file of an MLX snapshot


def _hub_entries(cache, found: Found) -> list[_HubEntry]:
    """Each GGUF file ("owner/repo/file.gguf") and MLX snapshot ("owner/repo") in the cache."""
    entries = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
            files = {f.file_name: f for f in revision.files}
            for name, file in sorted(files.items()):
                if name.lower().endswith(".gguf"):
                    wrong = problem(file.file_path)
                    if wrong:
                        found.skip(file.file_path, wrong)
                        continue
                    entries.append(_HubEntry(LocalModel(f"{repo.repo_id}/{name}", "hub", file.file_path,
                                                        file.size_on_disk, quantization_from_name(name), "llama.cpp"),
                                             repo, revision, [file]))
            if "config.json" in files and any(n.endswith(".safetensors") for n in files):
                try:
                    read_json_object(files["config.json"].file_path)
                except Unreadable as exc:
                    found.skip(files["config.json"].file_path, str(exc))
                    continue
                entries.append(_HubEntry(LocalModel(repo.repo_id, "hub", revision.snapshot_path, revision.size_on_disk,
                                                    mlx_quantization(revision.snapshot_path), "mlx"),
                                         repo, revision, list(files.values())))
    return entries


def _add_hub(found: Found) -> None:
    cache = _scan_hub(found)
    if cache is not None:
        found.models += [entry.model for entry in _hub_entries(cache, found)]


def remove_from_hub(name: str) -> int:
    """Remove the hub-cache model that `ponder models` lists as `name`, in every revision that
    has it: a GGUF file (its blob too, unless another file still links to it) or an MLX
    snapshot. Only entries the cache scan found are touched, and nothing is removed if one of
    them links outside its repo's blobs/. The bytes freed."""
    from ponder.errors import ModelError, UsageError

    found = Found()
    cache = _scan_hub(found)
    entries = [entry for entry in _hub_entries(cache, found) if entry.model.name == name] if cache else []
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
    _execute(strategy, name)
    return strategy.expected_freed_size


def _execute(strategy, name: str) -> None:
    """The snapshot entries first, checked gone, then the blobs: a blob is never deleted while a
    link to it stays (huggingface_hub goes on to the blobs when a snapshot cannot be deleted, and
    logs the failure with a traceback)."""
    import logging

    from ponder.errors import ModelError

    logger = logging.getLogger("huggingface_hub.utils._cache_manager")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    entries = dataclasses.replace(strategy, blobs=frozenset(), refs=frozenset())
    blobs = dataclasses.replace(strategy, files=frozenset(), snapshots=frozenset(), repos=frozenset())
    try:
        for step, paths in ((entries, (*strategy.files, *strategy.snapshots, *strategy.repos)),
                            (blobs, (*strategy.refs, *strategy.blobs))):
            try:
                step.execute()
            except OSError as exc:  # an entry that cannot be unlinked raises
                left = [f"{shown(exc.filename)}: {why(exc)}"]
            else:
                left = [f"{shown(path)} is still there" for path in paths if os.path.lexists(path)]
            if left:
                raise ModelError(f"could not remove all of {name}: {left[0]}",
                                 hint="check the permissions of the cache (and its chattr attributes)")
    finally:
        logger.setLevel(level)


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
        config = read_json_object(directory / "config.json")
    except Unreadable:
        return ""
    quantization = config.get("quantization")
    bits = quantization.get("bits") if isinstance(quantization, dict) else None
    dtype = config.get("torch_dtype")
    return f"{bits}-bit" if isinstance(bits, int) and bits else dtype if isinstance(dtype, str) else ""


def mlx_weights_size(directory: Path) -> int:
    """The bytes of a directory's *.safetensors; Unreadable if one is a broken link or unreadable."""
    size = 0
    for path in sorted(directory.glob("*.safetensors")):
        wrong = problem(path)
        if wrong:
            raise Unreadable(f"{shown(path.name)} is {wrong}")
        size += path.stat().st_size
    return size


def quantization_from_name(name: str) -> str:
    match = QUANT_IN_NAME.search(Path(name).stem)
    return match.group(1).upper() if match else ""


# --- Ollama ---------------------------------------------------------------------------------


def ollama_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def _add_ollama(found: Found, root: Path | None = None) -> None:
    """Each manifest (manifests/HOST/NAMESPACE/MODEL/TAG) names its model layer's digest; the
    blob is the GGUF file itself."""
    root = root or ollama_dir()
    for host in subdirs(root / "manifests", found.skip, missing_ok=True):
        for namespace in subdirs(host, found.skip):
            for model in subdirs(namespace, found.skip):
                for tag in entries(model, found.skip):
                    name = f"{model.name}:{tag.name}"
                    if (host.name, namespace.name) != OLLAMA_LIBRARY:
                        name = f"{host.name}/{namespace.name}/{name}"
                    try:
                        blob = _ollama_blob(root, Path(tag.path))
                    except Unreadable as exc:
                        found.skip(tag.path, str(exc))
                        continue
                    if blob is not None:
                        found.models.append(LocalModel(name, "ollama", blob, blob.stat().st_size,
                                                       _gguf_quantization(blob), "llama.cpp"))


def _ollama_blob(root: Path, manifest: Path) -> Path | None:
    """The model blob a manifest names; None for a manifest without a model layer (a cloud model)."""
    try:
        data = read_json_object(manifest)
    except Unreadable as exc:
        raise Unreadable(f"the manifest is {exc}") from None
    layers = data.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise Unreadable("the manifest's layers are not a list of objects")
    layer = next((layer for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_LAYER), None)
    if layer is None:
        return None
    digest = layer.get("digest")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise Unreadable(f"the model layer's digest {shown(repr(digest))} is not sha256:<hex digits>")
    blob = root / "blobs" / digest.replace(":", "-")
    wrong = problem(blob)
    if wrong:
        raise Unreadable(f"its model blob {shown(blob)} is {wrong}")
    return blob


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


def _add_lmstudio(found: Found, roots: list[Path] | None = None) -> None:
    """LM Studio keeps publisher/repo/file.gguf (and MLX directories) under its models folder."""
    for root in roots or lmstudio_dirs():
        for publisher in subdirs(root, found.skip, missing_ok=True):
            for repo in subdirs(publisher, found.skip):
                for entry in entries(repo, found.skip):
                    if not entry.name.lower().endswith(".gguf"):
                        continue
                    path = Path(entry.path)
                    wrong = problem(path)
                    if wrong:
                        found.skip(path, wrong)
                        continue
                    found.models.append(LocalModel(str(path), "lmstudio", path, path.stat().st_size,
                                                   quantization_from_name(path.name), "llama.cpp"))
                if os.path.lexists(repo / "config.json"):
                    _add_lmstudio_mlx(found, repo)


def _add_lmstudio_mlx(found: Found, directory: Path) -> None:
    try:
        read_json_object(directory / "config.json")
    except Unreadable as exc:
        found.skip(directory / "config.json", str(exc))
        return
    try:
        size = mlx_weights_size(directory)
    except (Unreadable, OSError) as exc:
        found.skip(directory, why(exc))
        return
    if size:
        found.models.append(LocalModel(str(directory), "lmstudio", directory, size, mlx_quantization(directory), "mlx"))
