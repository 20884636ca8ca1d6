"""Known downloads of the DeepSeek-R1 distills, by alias.

Revisions and sha256 sums are not pinned yet (None): no machine this catalogue was written on
reaches the hub to read them. Until they are, `ponder pull` verifies each file against the
sha256 the hub publishes for it (its LFS ETag) and records the commit it got.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ponder.errors import shortened
from ponder.plan import KNOWN_MODELS


@dataclass(frozen=True)
class Artifact:
    alias: str
    backend: str  # "llama.cpp" (one GGUF file) or "mlx" (a repo directory)
    repo: str
    filename: str | None  # None: the whole repo (MLX)
    size: int  # bytes, as the hub lists it (approximate until pinned)
    revision: str | None = None  # a commit hash once pinned
    sha256: str | None = None
    draft: str | None = None  # the alias of a smaller model with its vocabulary, for speculative decoding

    @property
    def reference(self) -> str:
        return f"{self.repo}/{self.filename}" if self.filename else self.repo


# Names and sizes come from the model table `ponder plan` uses, so that the two cannot disagree.
def _gguf(alias: str, model: str, quant: str, draft: str | None = None) -> Artifact:
    known = KNOWN_MODELS[model]
    return Artifact(alias, "llama.cpp", f"bartowski/{known.name}-GGUF", f"{known.name}-{quant}.gguf",
                    known.sizes[quant], draft=draft)


def _mlx(alias: str, model: str, bits: str, draft: str | None = None) -> Artifact:
    known = KNOWN_MODELS[model]
    return Artifact(alias, "mlx", f"mlx-community/{known.name}-{bits}", None, known.sizes[f"mlx-{bits}"], draft=draft)


# The R1 distills of Qwen2.5 share its tokenizer, so R1-Distill-Qwen-1.5B drafts the larger ones, for the same
# engine (its embedding has 128 fewer padding rows than 7B's and 14B's: the same tokens, as llama.cpp's own
# speculative decoding allows).
CATALOGUE = {a.alias: a for a in [
    _gguf("r1-7b", "7b", "Q4_K_M", draft="r1-1.5b"),
    _gguf("r1-7b:q5_k_m", "7b", "Q5_K_M", draft="r1-1.5b"),
    _gguf("r1-7b:q6_k", "7b", "Q6_K", draft="r1-1.5b"),
    _gguf("r1-7b:q8_0", "7b", "Q8_0", draft="r1-1.5b"),
    _mlx("r1-7b-mlx", "7b", "4bit", draft="r1-1.5b-mlx"),
    _mlx("r1-7b-mlx:8bit", "7b", "8bit", draft="r1-1.5b-mlx"),
    _gguf("r1-1.5b", "1.5b", "Q4_K_M"),
    _mlx("r1-1.5b-mlx", "1.5b", "4bit"),
    _gguf("r1-14b", "14b", "Q4_K_M", draft="r1-1.5b"),
]}

DEFAULTS = {"llama.cpp": "r1-7b", "mlx": "r1-7b-mlx"}


def lookup(name: str) -> Artifact | None:
    """An alias, or "owner/repo/file.gguf" for any GGUF on the hub (not catalogued: verified
    against the hub's own sha256 only), or "owner/repo" for an MLX repo; None for a name that is
    neither. A reference that cannot name anything on the hub is a UsageError, before any network."""
    if name.lower() in CATALOGUE:
        return CATALOGUE[name.lower()]
    if "/" not in name and "\\" not in name:
        return None
    problem = reference_problem(name)
    if problem:
        from ponder.errors import UsageError

        raise UsageError(f"{shortened(name)!r} is not a hub reference: {problem}",
                         hint="owner/repo/file.gguf (a GGUF file) or owner/repo (an MLX repo), as on huggingface.co;"
                              " a file on this machine goes to --model instead")
    parts = name.split("/")
    if len(parts) == 3:
        return Artifact(name, "llama.cpp", "/".join(parts[:2]), parts[2], 0)
    return Artifact(name, "mlx", name, None, 0)


def draft_for(model: str) -> Artifact | None:
    """The catalogue's draft for `model`: a catalogued model's alias, hub reference or file, wherever it lies
    (a GGUF by its file name, as bartowski names it; an MLX model by its repo id or its hub cache folder)."""
    from pathlib import PurePath

    path = PurePath(model)
    for artifact in CATALOGUE.values():
        if artifact.draft is None:
            continue
        folder = "models--" + artifact.repo.replace("/", "--")
        if (model.lower() in (artifact.alias, artifact.reference.lower())
                or (artifact.filename and path.name.lower() == artifact.filename.lower())
                or (not artifact.filename and (model.lower() == artifact.repo.lower() or folder in path.parts))):
            return CATALOGUE[artifact.draft]
    return None


# The hub's own rules for a repo id's parts (huggingface_hub's validate_repo_id): ASCII letters,
# digits, "-", "_" and "."; a letter, digit or "_" at each end; no "--" or ".."; at most 96 characters.
NAME_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?", re.ASCII)
FILE_NAME_BYTES = 255  # what a file system takes


def reference_problem(name: str) -> str | None:
    """What is wrong with an "owner/repo[/file.gguf]" reference, or None."""
    if name.startswith(("/", "~", "./", "../")) or "\\" in name:
        return "it looks like a path on this machine"
    parts = name.split("/")
    if len(parts) > 3:
        return "a GGUF file is owner/repo/file.gguf, with no folders between"
    for role, part in zip(("owner", "repo"), parts[:2], strict=True):
        if not part:
            return f"the {role} is empty"
        if not NAME_PART.fullmatch(part) or "--" in part or ".." in part or part.endswith(".git"):
            return (f"the {role} {shortened(part)!r} is not a hub name (ASCII letters, digits, -, _ and ., at most 96;"
                    " no -- or .., no - or . at either end, no .git at the end)")
    if len(parts) == 2:
        return None
    file = parts[2]
    if not file.lower().endswith(".gguf") or file.startswith("."):
        return "the file name is empty" if not file else f"the file {shortened(file)!r} is not a .gguf file with a name"
    if len(file.encode("utf-8", "surrogatepass")) > FILE_NAME_BYTES:
        return f"the file name is longer than {FILE_NAME_BYTES} bytes"
    if not file.isprintable():
        return "the file name holds characters that cannot be printed"
    return None


