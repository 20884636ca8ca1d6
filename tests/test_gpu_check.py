"""scripts/gpu-check: what a machine without a GPU can check (its refusals, the offload check of `pytest --gpu`,
the bundle's packed models), and, under `--gpu` on an NVIDIA machine, that ponder reports the offload and a
loaded model has every layer on the GPU. The whole bundle-and-offline-install path is one opt-in test
(PONDER_GPU_CHECK_BUNDLE=1: minutes, a llama.cpp build)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import conftest
from ponder.backends import llamacpp
from ponder.backends.base import LoadOptions
from tests.support.cli import ponder_env, run_ponder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check"
BASH = shutil.which("bash")


def gpu_check(*args: str, path: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """scripts/gpu-check with only `path` on PATH (bash by its full path): no nvidia-smi unless the test puts one."""
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def tools(folder: Path, *names: str, nvidia_smi: str | None = None) -> str:
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(shutil.which(name))
    if nvidia_smi is not None:
        (folder / "nvidia-smi").write_text(f"#!{BASH}\n{nvidia_smi}\n")
        (folder / "nvidia-smi").chmod(0o755)
    return str(folder)


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("gpu-check: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and result.stdout == ""


# --- without a GPU -------------------------------------------------------------------------------------


def test_without_nvidia_smi_it_says_there_is_no_gpu_and_exits_2(tmp_path):
    result = gpu_check("--from", str(tmp_path), path=tools(tmp_path / "bin", "dirname"))
    assert_refused(result, "no NVIDIA GPU here: nvidia-smi not found")


def test_a_driver_that_lists_no_gpu_is_no_gpu(tmp_path):
    result = gpu_check(path=tools(tmp_path / "bin", "dirname", "head", "cut", "tr",
                                  nvidia_smi='echo "No devices were found"; exit 6'))
    assert_refused(result, "no NVIDIA GPU here: nvidia-smi lists none (No devices were found)")


@pytest.mark.parametrize("args, message", [
    (["--frobnicate"], "unknown argument --frobnicate"),
    (["--from"], "--from needs a value"),
    (["--bundle", "a", "--from", "b"], "give one of them"),
    (["--python", "three"], "--python wants a version such as 3.12"),
    (["--max-mib", "lots"], "--max-mib wants a whole number"),
    (["--model", "/no/such.gguf"], "--model: no file /no/such.gguf"),
    (["--bundle", "a", "--no-figures"], "--bundle takes only --python and --max-mib"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args, message):
    assert_refused(gpu_check(*args, path=tools(tmp_path / "bin", "dirname", "realpath")), message)


def test_help_says_how_to_bundle_and_run_offline(tmp_path):
    result = gpu_check("--help", path=tools(tmp_path / "bin", "dirname", "sed"))
    assert result.returncode == 0 and "--bundle DIR" in result.stdout and "--from DIR" in result.stdout
    assert "set -euo" not in result.stdout


# --- pytest --gpu's offload check, on any build ----------------------------------------------------------


def test_the_offload_check_reads_where_llama_cpp_put_each_layer():
    log = "".join(f"load_tensors: layer {i:3d} assigned to device {d}, is_swa = 0\n"
                  for i, d in enumerate(["CPU", "CUDA0", "CUDA0", "CUDA1"]))
    assert conftest.layers_on_gpu("noise\n" + log) == (3, 4)
    assert conftest.layers_on_gpu("no load here") == (0, 0)


def test_the_offload_check_fails_a_model_left_on_the_cpu(tiny_r1, monkeypatch):
    if llamacpp.gpu_offload_supported():
        pytest.skip("a CPU build's test: on a GPU build the --gpu tests below hold the check")
    monkeypatch.setattr(llamacpp.LlamaCppModel, "__init__", llamacpp.LlamaCppModel.__init__)  # undone after
    conftest._require_full_offload()
    with pytest.raises(AssertionError, match=r"--gpu: 0 of 3 layers of .* on the GPU"):
        llamacpp.LlamaCppModel(tiny_r1, LoadOptions(context=256))
    asked = llamacpp.LlamaCppModel(tiny_r1, LoadOptions(context=256, gpu_layers=0))  # fewer, asked for: allowed
    assert asked.gpu_layers_seen == (0, 3)
    asked.close()


# --- on the GPU (scripts/gpu-check runs these with --gpu) -------------------------------------------------


@pytest.fixture
def gpu(request):
    if not request.config.getoption("--gpu"):
        pytest.skip("needs an NVIDIA GPU: pytest --gpu (scripts/gpu-check)")


def test_backends_and_doctor_report_the_gpu_offload(gpu):
    card = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True, check=True).stdout.splitlines()[0].strip()
    rows = {row["name"]: row for row in json.loads(run_ponder("backends", "--json").stdout)}
    assert rows["llama.cpp"]["acceleration"] == "GPU offload"
    assert [d["description"] for d in rows["llama.cpp"]["devices"]][:1] == [card]
    doctor = run_ponder("doctor", env=ponder_env()).stdout.decode()
    assert f"offloads every layer to CUDA0: {card}" in doctor


def test_a_loaded_model_has_every_layer_on_the_gpu(gpu, tiny_r1):
    model = llamacpp.LlamaCppModel(tiny_r1, LoadOptions(context=256))
    assert model.gpu_layers_seen == (3, 3)  # two blocks and the output layer
    model.close()
    partial = llamacpp.LlamaCppModel(tiny_r1, LoadOptions(context=256, gpu_layers=1))
    assert partial.gpu_layers_seen == (1, 3)  # the check tells a partial offload apart
    partial.close()


# --- the bundle --------------------------------------------------------------------------------------------


def bundle_module():
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check_bundle

    return gpu_check_bundle


def test_the_trained_model_packs_small_and_unpacks_to_the_same_bytes(tiny_r1, tmp_path):
    """Its embedding rows that no training pair uses are noise the bundle regenerates: 45 MB become ~2."""
    bundle = bundle_module()
    (tmp_path / "b" / "models").mkdir(parents=True)
    entry = bundle.pack_model("tiny_r1", Path(tiny_r1), tmp_path / "b" / "models", Path(tiny_r1).parent)
    assert entry["xor_noise"] and (tmp_path / "b" / "models" / entry["file"]).stat().st_size < 4 * 2**20
    unpacked = bundle.unpack_model(tmp_path / "b", entry, tmp_path / "cache")
    assert hashlib.sha256(unpacked.read_bytes()).hexdigest() == hashlib.sha256(Path(tiny_r1).read_bytes()).hexdigest()


@pytest.mark.skipif(not os.environ.get("PONDER_GPU_CHECK_BUNDLE"), reason="minutes: PONDER_GPU_CHECK_BUNDLE=1")
def test_a_bundle_builds_under_64_mib_and_installs_and_runs_offline():
    """The bundle made here, then scripts/gpu-check --cpu --from it: the offline path with a CPU build. In a folder
    of its own: pytest runs beside it would prune its basetemp within the half hour this takes on 2 cores."""
    with tempfile.TemporaryDirectory(prefix="ponder-gpu-check-") as tmp:
        bundle_and_run(Path(tmp))


def bundle_and_run(tmp_path: Path) -> None:
    made = subprocess.run([str(SCRIPT), "--bundle", str(tmp_path / "bundle")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    size = sum(p.stat().st_size for p in (tmp_path / "bundle").rglob("*") if p.is_file())
    assert size <= 64 * 2**20
    # Nothing but the bundle (no pip settings), and not this test again inside the run
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PONDER_GPU_CHECK_BUNDLE"}
    env["PONDER_GPU_CHECK_TESTS"] = "test_gpu_check test_parallel"
    run = subprocess.run([str(SCRIPT), "--cpu", "--from", str(tmp_path / "bundle"), "--work", str(tmp_path / "work"),
                          "--no-figures"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
