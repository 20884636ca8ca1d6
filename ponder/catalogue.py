"""Known downloads of the DeepSeek-R1 distills, by alias.

Revisions and sha256 sums are not pinned yet (None): no machine this catalogue was written on
reaches the hub to read them. Until they are, `ponder pull` verifies each file against the
sha256 the hub publishes for it (its LFS ETag) and records the commit it got.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def reference(self) -> str:
        return f"{self.repo}/{self.filename}" if self.filename else self.repo


# Names and sizes come from the model table `ponder plan` uses, so that the two cannot disagree.
def _gguf(alias: str, model: str, quant: str) -> Artifact:
    known = KNOWN_MODELS[model]
    return Artifact(alias, "llama.cpp", f"bartowski/{known.name}-GGUF", f"{known.name}-{quant}.gguf",
                    known.sizes[quant])


def _mlx(alias: str, model: str, bits: str) -> Artifact:
    known = KNOWN_MODELS[model]
    return Artifact(alias, "mlx", f"mlx-community/{known.name}-{bits}", None, known.sizes[f"mlx-{bits}"])


CATALOGUE = {a.alias: a for a in [
    _gguf("r1-7b", "7b", "Q4_K_M"),
    _gguf("r1-7b:q5_k_m", "7b", "Q5_K_M"),
    _gguf("r1-7b:q6_k", "7b", "Q6_K"),
    _gguf("r1-7b:q8_0", "7b", "Q8_0"),
    _mlx("r1-7b-mlx", "7b", "4bit"),
    _mlx("r1-7b-mlx:8bit", "7b", "8bit"),
    _gguf("r1-1.5b", "1.5b", "Q4_K_M"),
    _gguf("r1-14b", "14b", "Q4_K_M"),
]}

DEFAULTS = {"llama.cpp": "r1-7b", "mlx": "r1-7b-mlx"}


def lookup(name: str) -> Artifact | None:
    """An alias, or "owner/repo/file.gguf" for any GGUF on the hub (not catalogued: verified
    against the hub's own sha256 only)."""
    if name.lower() in CATALOGUE:
        return CATALOGUE[name.lower()]
    parts = name.split("/")
    if len(parts) == 3 and parts[2].endswith(".gguf"):
        return Artifact(name, "llama.cpp", "/".join(parts[:2]), parts[2], 0)
    if len(parts) == 2 and all(parts):
        return Artifact(name, "mlx", name, None, 0)
    return None
