"""What the machine has, as nvidia-smi reports it, and the memory a model is fitted into."""

from __future__ import annotations

import os
import stat

import pytest

from ponder import machine
from tests.support.cli import ponder_env, run_ponder

MIB = 2**20


def fake_nvidia_smi(directory, *lines: str) -> str:
    """A directory holding an `nvidia-smi` that prints `lines`; prepend it to PATH."""
    directory.mkdir(exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(lines) + "\nEOF\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{directory}{os.pathsep}{os.environ['PATH']}"


def test_gpus_with_fields_that_are_not_numbers_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", "NVIDIA H100, 81559, 80000",
                                               "NVIDIA GRID, [N/A], [N/A]", "Odd, GPU, name, 1024, [N/A]",
                                               "garbage"))
    assert machine.nvidia_gpus() == [machine.Gpu("NVIDIA H100", 81559 * MIB, 80000 * MIB)]


def test_vram_counts_only_where_llama_cpp_can_offload(tmp_path, monkeypatch):
    import ponder.backends.llamacpp as llamacpp
    from ponder.fitting import memory_budget

    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", "NVIDIA Tiny, 2048, 100"))
    monkeypatch.delenv("PONDER_MEMORY_GIB", raising=False)
    assert not llamacpp.gpu_offload_supported()  # the CPU build the tests install
    assert memory_budget("llama.cpp")[1] == "available RAM"
    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: True)  # as a CUDA build reports
    assert memory_budget("llama.cpp") == (100 * MIB, "GPU memory")
    assert memory_budget("mlx")[1] == "available RAM"


@pytest.mark.parametrize("smi", [["NVIDIA Tiny, 2048, 100"], ["NVIDIA GRID, [N/A], [N/A]"]])
def test_ask_with_a_cpu_build_fits_in_ram_whatever_nvidia_smi_says(tmp_path, smollm2, smi):
    env = ponder_env(PATH=fake_nvidia_smi(tmp_path / "bin", *smi))
    result = run_ponder("ask", "--model", smollm2, "--max-tokens", "3", "hi", env=env)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "GPU memory" not in err and "needs about" not in err and "context set" not in err
    doctor = run_ponder("doctor", env=env)
    assert doctor.returncode == 0, doctor.stderr
    assert ("GPU: NVIDIA Tiny" in doctor.stdout.decode()) == (smi[0].endswith("100"))
