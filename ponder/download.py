"""Downloads through huggingface_hub into its standard cache (shared with other tools).

huggingface_hub brings the cache layout, progress bars, HF_ENDPOINT, HF_TOKEN and
HF_HUB_OFFLINE, and resumes a dropped connection within one call. Its partial files die with the
process, though, so ponder fetches a GGUF's blob itself (with huggingface_hub's own `http_get`)
into a `.partial` file that the next `ponder pull` continues; hf_hub_download then links it
into the snapshot. The fetch holds huggingface_hub's own lock for that blob, so that two pulls of
one file never write to one `.partial`: the second waits, then finds the blob. ponder adds the
checks: the commit the catalogue pins, and the file's sha256 against the catalogue's or, where the
catalogue has none, the one the hub publishes (the LFS ETag); a mismatch is removed.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from ponder.catalogue import Artifact
from ponder.errors import ModelError

SHA256 = re.compile(r"^[0-9a-f]{64}$")
METADATA_TIMEOUT_S = 10  # a hub that does not answer fails in seconds, never hangs


def cached(artifact: Artifact) -> Path | None:
    """The artifact's local path if it is already in the cache (no network)."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    revision = artifact.revision or "main"
    try:
        if artifact.filename:
            found = try_to_load_from_cache(artifact.repo, artifact.filename, revision=revision)
            return Path(found) if isinstance(found, str) else None
        return Path(snapshot_download(artifact.repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # a ref that is not UTF-8 or cannot be read: say so, never download over it
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=artifact.repo, repo_type="model")
        raise ModelError(f"the Hugging Face cache's entry for {artifact.repo} cannot be read ({exc})",
                         hint=f"move {folder} aside (or remove it), then pull again") from None


def pull(artifact: Artifact) -> Path:
    """Download (or find) `artifact`; its verified local path."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        found = cached(artifact)
        if found is None:
            raise ModelError(f"{artifact.reference} is not downloaded, and HF_HUB_OFFLINE is set",
                             hint="unset HF_HUB_OFFLINE to download it, or pass a local --model")
        return found
    try:
        return _pull_file(artifact) if artifact.filename else _pull_repo(artifact)
    except _hub_errors() as exc:  # one line, never the token; anything else is a bug, reported as one
        raise ModelError(f"cannot download {artifact.reference} from {constants.ENDPOINT}: {_describe(exc)}",
                         hint="check the network and the name; run the same command again to resume") from exc
    except OSError as exc:  # after the hub's errors, some of which are OSErrors too
        raise ModelError(f"cannot write {artifact.reference} into {constants.HF_HUB_CACHE}: {exc.strerror or exc}",
                         hint="check the disk: its free space and the cache's permissions") from exc


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What the network, the hub and huggingface_hub raise for a download that cannot be made."""
    import httpx2  # huggingface_hub 2.x's HTTP client: its connection, timeout and status errors
    from huggingface_hub.errors import EntryNotFoundError, FileMetadataError, HFValidationError

    # EntryNotFoundError: not on the hub, or (LocalEntryNotFoundError) the hub cannot be reached;
    # FileMetadataError: the endpoint is not a hub; HFValidationError: a malformed name.
    return (httpx2.HTTPError, EntryNotFoundError, FileMetadataError, HFValidationError, ConnectionError,
            TimeoutError)


def _pull_file(artifact: Artifact) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    revision = artifact.revision or "main"
    url = hf_hub_url(artifact.repo, artifact.filename, revision=revision)
    meta = get_hf_file_metadata(url, timeout=METADATA_TIMEOUT_S)
    if artifact.revision and meta.commit_hash != artifact.revision:
        raise ModelError(f"{artifact.reference}: the hub serves commit {meta.commit_hash}, "
                         f"not the catalogued {artifact.revision}", hint="the upstream file changed; not used")
    expected = artifact.sha256 or (meta.etag if meta.etag and SHA256.match(meta.etag) else None)
    if meta.etag and meta.location:
        _fetch_blob(artifact, meta, url)
    path = Path(hf_hub_download(artifact.repo, artifact.filename, revision=revision,
                                etag_timeout=METADATA_TIMEOUT_S))
    if expected and sha256_of(path) != expected:
        remove_cached_file(path)
        raise ModelError(f"{artifact.reference} does not match its sha256 ({expected[:12]}…); the download was removed",
                         hint="run the command again to download it afresh")
    return path


def _fetch_blob(artifact: Artifact, meta, url: str) -> None:
    """Download the file's blob into the cache, continuing a `.partial` left by an earlier run."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    folder = repo_folder_name(repo_id=artifact.repo, repo_type="model")
    blob = Path(constants.HF_HUB_CACHE) / folder / "blobs" / meta.etag
    lock = Path(constants.HF_HUB_CACHE) / ".locks" / folder / f"{meta.etag}.lock"  # hf_hub_download's own
    lock.parent.mkdir(parents=True, exist_ok=True)
    headers = build_hf_headers()
    if _origin(meta.location) != _origin(url):  # a redirect to a CDN: the token stays with the hub
        headers.pop("authorization", None)
    with WeakFileLock(lock):  # huggingface_hub's: a soft lock where flock is missing (NFS), group-writable
        if blob.exists():  # cached, or fetched by another pull while this one waited
            return
        partial = blob.with_name(blob.name + ".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "r+b" if partial.exists() else "wb") as f:
            f.seek(0, 2)  # after what an earlier run fetched
            http_get(meta.location, f, resume_size=f.tell(), headers=headers, expected_size=meta.size,
                     displayed_filename=artifact.filename)
        partial.rename(blob)


def _origin(url: str) -> tuple:
    """(scheme, host, port): huggingface_hub sends the token to a redirect only within one origin."""
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _pull_repo(artifact: Artifact) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(artifact.repo, revision=artifact.revision or "main",
                                  etag_timeout=METADATA_TIMEOUT_S))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def remove_cached_file(path: Path) -> None:
    """A cache entry is a snapshot symlink to a blob: remove both (a link that leads out of
    the cache loses only itself)."""
    from huggingface_hub import constants

    if not path.is_symlink():
        path.unlink(missing_ok=True)
        return
    blob = Path(os.path.normpath(path.parent / os.readlink(path)))  # the first hop only: the repo's blobs/
    path.unlink(missing_ok=True)
    if blob.parent.name == "blobs" and blob.is_relative_to(os.path.abspath(constants.HF_HUB_CACHE)):
        blob.unlink(missing_ok=True)


def _describe(exc: BaseException) -> str:
    """The first line of an error, whatever huggingface_hub wrapped it in."""
    cause = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if cause is not None and "connect" in type(cause).__name__.lower():
        text = f"cannot connect ({cause})"
    return text
