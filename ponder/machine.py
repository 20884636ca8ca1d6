"""What this machine has: memory, and GPU memory where a tool reports it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Memory:
    total: int
    available: int


@dataclass(frozen=True)
class Gpu:
    name: str
    total: int
    free: int


def ram() -> Memory:
    """Physical memory, and how much is available without swapping (MemAvailable on Linux)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = total
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:  # not Linux: report the total, the best figure the OS gives without a helper
        pass
    return Memory(total, available)


def nvidia_gpus() -> list[Gpu]:
    """NVIDIA GPUs as nvidia-smi reports them; none when it is absent or fails."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, *sizes = (part.strip() for part in line.rsplit(",", 2))
        try:
            total, free = (int(size) * 2**20 for size in sizes)
        except ValueError:  # "[N/A]" or "[Not Supported]" (some GPUs and drivers): no figure to plan with
            continue
        gpus.append(Gpu(name, total, free))
    return gpus


def apple_silicon() -> bool:
    import platform

    return sys.platform == "darwin" and platform.machine() == "arm64"


def unified_gpu_budget(memory: Memory) -> int | None:
    """On Apple Silicon the GPU shares RAM; Metal lets a process wire about 3/4 of it."""
    return int(memory.total * 0.75) if apple_silicon() else None
