"""Memory planning: figures against hand-computed values, and `ponder plan` as a user runs it."""

from __future__ import annotations

import pytest

from ponder.catalogue import CATALOGUE
from ponder.plan import GIB, KNOWN_MODELS, OVERHEAD_BYTES, kv_bytes_per_token, largest_context, plan
from tests.support.cli import run_ponder

R1_7B = KNOWN_MODELS["7b"].shape


def test_kv_cache_per_token_of_r1_7b():
    assert kv_bytes_per_token(R1_7B, "f16") == 2 * 28 * 4 * 128 * 2 == 57344  # 56 KiB
    assert kv_bytes_per_token(R1_7B, "q8_0") == 2 * 28 * 4 * 128 * 34 / 32 == 30464
    assert kv_bytes_per_token(R1_7B, "q4_0") == 2 * 28 * 4 * 128 * 18 / 32 == 16128


def test_plan_adds_weights_cache_and_overhead():
    figures = plan(4_680_000_000, R1_7B, 32768, "f16")
    assert figures.kv_cache == 57344 * 32768 == 1_879_048_192  # 1.75 GiB
    assert figures.total == 4_680_000_000 + 1_879_048_192 + OVERHEAD_BYTES


def test_largest_context_that_fits():
    budget = 4_680_000_000 + OVERHEAD_BYTES + 57344 * 10_000
    assert largest_context(4_680_000_000, R1_7B, budget) == 9216  # 10,000 rounded down to whole 1024s
    assert largest_context(4_680_000_000, R1_7B, 4_000_000_000) == 0
    assert largest_context(0, R1_7B, 1000 * GIB) == R1_7B.trained_context


def test_plan_command_prints_each_quantization_against_a_memory_size():
    result = run_ponder("plan", "--ctx", "32768", "--memory", "8")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "KV cache f16: 56 KiB a token (2 x 28 layers x 4 KV heads x 128 dims x 2 bytes)" in out
    rows = {line.split()[0]: line for line in out.splitlines()[3:]}
    assert set(rows) == set(KNOWN_MODELS["7b"].sizes)
    assert rows["Q4_K_M"] == "Q4_K_M       4.36 GiB   1.75 GiB   0.75 GiB   6.86 GiB  RAM"  # 4.68 GB = 4.36 GiB
    q6 = largest_context(KNOWN_MODELS["7b"].sizes["Q6_K"], R1_7B, 8 * GIB)
    assert (8 * 2**30 - 6_250_000_000 - 805_306_368) // 57344 == 26761  # bytes left for the cache / 56 KiB
    assert q6 == 26624  # in whole 1024s
    assert rows["Q6_K"].endswith(f"no (at most {q6} tokens of context would)")
    assert rows["Q8_0"].endswith("no (not even the weights)")


def test_plan_on_this_machine_reports_its_memory():
    out = run_ponder("plan", "--quant", "q4_k_m").stdout.decode()
    assert "GiB available of" in out and out.count("\nQ4_K_M ") == 1


def test_plan_rejects_bad_values():
    assert run_ponder("plan", "--quant", "Q3").returncode == 2
    assert run_ponder("plan", "--kv-type", "f32").returncode == 2
    assert b"beyond it" in run_ponder("plan", "--ctx", "200000").stderr


def test_ask_picks_a_context_that_fits(smollm2):
    from tests.support.cli import ponder_env

    def ask(memory_gib: str, *args: str):
        result = run_ponder("ask", "--model", smollm2, "--max-tokens", "3", *args, "hi",
                            env=ponder_env(PONDER_MEMORY_GIB=memory_gib))
        assert result.returncode == 0, result.stderr
        return result.stderr.decode()

    # SmolLM2: 30 layers x 3 KV heads x 64 dims: 22.5 KiB a token; 0.9 GiB leaves room for 2048 of its 8192
    assert "context set to 2048 tokens so that it fits in PONDER_MEMORY_GIB (0.9 GiB)" in ask("0.9")
    assert "warning: this needs about 1.0 GiB" in ask("0.9", "--ctx", "8192")  # --ctx is kept, with a warning
    assert "warning: this needs about" in ask("0.5")  # not even the weights and overhead: say so, still try
    assert "context set" not in ask("64") and "needs about" not in ask("64")


def test_plan_options_name_every_model_and_cache_type():
    from ponder.cli.commands.plan_command import KV_TYPES, MODELS
    from ponder.plan import KV_BYTES

    assert set(MODELS) == set(KNOWN_MODELS) and set(KV_TYPES) == set(KV_BYTES)


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf"])
def test_a_bad_memory_cap_is_a_usage_error(smollm2, value):
    from tests.support.cli import ponder_env

    result = run_ponder("ask", "--model", smollm2, "--max-tokens", "3", "hi", env=ponder_env(PONDER_MEMORY_GIB=value))
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert f"PONDER_MEMORY_GIB must be a number of GiB above 0, not {value!r}" in err and "Traceback" not in err
    assert result.stdout == b""


@pytest.mark.parametrize("alias", sorted(CATALOGUE))
def test_each_download_has_the_size_plan_uses(alias):
    """The catalogue is built from the plan's table: a download's size is its model's, at its quantization."""
    artifact = CATALOGUE[alias]
    stem = artifact.repo.split("/")[1]  # "DeepSeek-R1-Distill-Qwen-7B-GGUF", "…-7B-4bit"
    known = next(known for known in KNOWN_MODELS.values() if stem.startswith(known.name + "-"))
    if artifact.filename:
        quant = artifact.filename.removeprefix(known.name + "-").removesuffix(".gguf")
    else:
        quant = "mlx-" + stem.removeprefix(known.name + "-")
    assert artifact.size == known.sizes[quant]
