"""`ponder ask` through MLX, backend selection, `ponder backends`: the real program, real models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.support.cli import ANSI, ponder_env, run_ponder
from tests.test_ask_errors import assert_clean_failure
from tests.test_ask_pipe import R1_ANSWER, R1_REASONING

# Runs ponder with the mlx packages made unimportable, as on a machine without them.
WITHOUT_MLX = "import sys; sys.modules['mlx'] = sys.modules['mlx_lm'] = None; from ponder.cli.app import main; main()"


def run_without_mlx(*args: str):
    return subprocess.run([sys.executable, "-c", WITHOUT_MLX, *args], capture_output=True,
                          stdin=subprocess.DEVNULL, env=ponder_env(), timeout=120)


def test_smollm2_on_mlx_answers_real_text(smollm2_mlx):
    result = run_ponder("ask", "--backend", "mlx", "--model", smollm2_mlx, "--temperature", "0",
                        "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout.decode()
    assert result.stderr == b""  # nothing from transformers or mlx-lm leaks onto the terminal


def test_options_mlx_cannot_honour_are_named(smollm2_mlx):
    result = run_ponder("ask", "--model", smollm2_mlx, "--threads", "2", "--max-tokens", "2", "--no-log", "Hi")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().startswith("ponder: note: the mlx backend ignores --threads here\n")


def test_mlx_directory_selects_mlx_and_separates_reasoning(tiny_r1_mlx):
    result = run_ponder("ask", "--model", tiny_r1_mlx, "What is 12*7?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == R1_ANSWER + "\n"
    assert R1_REASONING in result.stderr.decode()
    assert not ANSI.search(result.stderr.decode())


def test_json_names_the_backend_and_reports_peak_memory(tiny_r1_mlx):
    result = run_ponder("ask", "--json", "--model", tiny_r1_mlx, "What is 12*7?",
                        env=ponder_env(PONDER_BACKEND="mlx"))
    payload = json.loads(result.stdout)
    assert payload["backend"] == "mlx" and payload["boxed"] == "84"
    assert payload["stats"]["peak_memory_bytes"] > 1_000_000


def test_solve_on_mlx(tiny_r1_mlx):
    result = run_ponder("solve", "--answer-only", "--model", tiny_r1_mlx, "What is 12*7?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "84\n"


def test_gguf_with_backend_mlx(tiny_r1):
    err = assert_clean_failure(run_ponder("ask", "--backend", "mlx", "--model", tiny_r1, "hi"), 2, "is a GGUF file")
    assert "--backend llama.cpp" in err


def test_mlx_directory_with_backend_llama_cpp(tiny_r1_mlx):
    err = assert_clean_failure(run_ponder("ask", "--backend", "llama.cpp", "--model", tiny_r1_mlx, "hi"), 2,
                               "is an MLX model directory")
    assert "--backend mlx" in err


def test_unknown_backend(tiny_r1):
    assert_clean_failure(run_ponder("ask", "--backend", "vulkan", "--model", tiny_r1, "hi"), 2, "unknown backend 'vulkan'")


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_clean_failure(run_ponder("ask", "--model", str(tmp_path), "hi"), 1, "is not a model directory")


@pytest.fixture
def broken_copy(tiny_r1_mlx, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_r1_mlx, target)
    return target


def test_mlx_directory_without_weights(broken_copy):
    (broken_copy / "model.safetensors").unlink()
    assert_clean_failure(run_ponder("ask", "--model", str(broken_copy), "hi"), 1, "has no weights")


def test_mlx_directory_with_truncated_weights(broken_copy):
    weights = broken_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    err = assert_clean_failure(run_ponder("ask", "--model", str(broken_copy), "hi"), 1, "mlx-lm could not load")
    assert "truncated or corrupt" in err


def test_mlx_directory_with_garbage_weights(broken_copy):
    (broken_copy / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    assert_clean_failure(run_ponder("ask", "--model", str(broken_copy), "hi"), 1, "mlx-lm could not load")


def test_mlx_directory_without_tokenizer(broken_copy):
    (broken_copy / "tokenizer.json").unlink()
    assert_clean_failure(run_ponder("ask", "--model", str(broken_copy), "hi"), 1, "has no tokenizer")


def test_mlx_requested_where_it_is_not_installed(tiny_r1_mlx):
    err = assert_clean_failure(run_without_mlx("ask", "--model", tiny_r1_mlx, "hi"), 1,
                               "the mlx backend is not installed here")
    assert "pip install mlx-lm" in err


def test_backends_lists_both_as_usable():
    result = run_ponder("backends", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["llama.cpp"]["usable"] and rows["mlx"]["usable"]
    assert rows["llama.cpp"]["default"] and not rows["mlx"]["default"]  # Linux: llama.cpp unless the model implies MLX
    assert rows["mlx"]["acceleration"] == "none (CPU only)"  # mlx[cpu]: no Metal here
    assert rows["llama.cpp"]["version"].startswith("llama-cpp-python ")
    table = run_ponder("backends").stdout.decode()
    assert "llama.cpp *" in table and "mlx" in table and "usable" in table


def test_backends_explains_a_missing_engine():
    result = run_without_mlx("backends")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.decode().splitlines() if line.startswith("mlx"))
    assert "not usable" in line and "pip install mlx-lm" in line
