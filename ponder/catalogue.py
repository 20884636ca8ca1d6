"""Known downloads of the DeepSeek-R1 distills, by alias.

Revisions and sha256 sums are not pinned yet (None): no machine this catalogue was written on
reaches the hub to read them. Until they are, `ponder pull` verifies each file against the
sha256 the hub publishes for it (its LFS ETag) and records the commit it got.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 10**9


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


def _gguf(alias: str, size_gb: float, repo: str, stem: str, quant: str) -> Artifact:
    return Artifact(alias, "llama.cpp", repo, f"{stem}-{quant}.gguf", int(size_gb * GB))


R1_7B_GGUF = "bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF"
CATALOGUE = {a.alias: a for a in [
    _gguf("r1-7b", 4.68, R1_7B_GGUF, "DeepSeek-R1-Distill-Qwen-7B", "Q4_K_M"),
    _gguf("r1-7b:q5_k_m", 5.44, R1_7B_GGUF, "DeepSeek-R1-Distill-Qwen-7B", "Q5_K_M"),
    _gguf("r1-7b:q6_k", 6.25, R1_7B_GGUF, "DeepSeek-R1-Distill-Qwen-7B", "Q6_K"),
    _gguf("r1-7b:q8_0", 8.10, R1_7B_GGUF, "DeepSeek-R1-Distill-Qwen-7B", "Q8_0"),
    Artifact("r1-7b-mlx", "mlx", "mlx-community/DeepSeek-R1-Distill-Qwen-7B-4bit", None, int(4.28 * GB)),
    Artifact("r1-7b-mlx:8bit", "mlx", "mlx-community/DeepSeek-R1-Distill-Qwen-7B-8bit", None, int(8.10 * GB)),
    _gguf("r1-1.5b", 1.12, "bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF", "DeepSeek-R1-Distill-Qwen-1.5B", "Q4_K_M"),
    _gguf("r1-14b", 8.99, "bartowski/DeepSeek-R1-Distill-Qwen-14B-GGUF", "DeepSeek-R1-Distill-Qwen-14B", "Q4_K_M"),
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
