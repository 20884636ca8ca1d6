from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2() -> str:
    from tests.support.packages import smollm2_gguf

    return str(smollm2_gguf())


@pytest.fixture(scope="session")
def tiny_r1_random() -> str:
    from tests.support.tiny_r1 import random_gguf

    return str(random_gguf())


@pytest.fixture(scope="session")
def tiny_r1() -> str:
    """The overfitted tiny model that answers TRAINING_PAIRS in R1's shape."""
    from tests.support.tiny_r1 import trained_gguf

    return str(trained_gguf())


@pytest.fixture(scope="session")
def tiny_r1_mlx(tiny_r1) -> str:
    """The same trained tiny model as an MLX directory (float32, tokenizer.json from the GGUF)."""
    from pathlib import Path

    from tests.support.mlx_models import mlx_dir

    return str(mlx_dir(Path(tiny_r1)))


@pytest.fixture(scope="session")
def tiny_r1_random_mlx(tiny_r1_random) -> str:
    from pathlib import Path

    from tests.support.mlx_models import mlx_dir

    return str(mlx_dir(Path(tiny_r1_random)))


@pytest.fixture(scope="session")
def smollm2_mlx(smollm2) -> str:
    """SmolLM2 as an 8-bit MLX directory, quantized by mlx_lm.convert as mlx-community's are."""
    from pathlib import Path

    from tests.support.mlx_models import mlx_dir

    return str(mlx_dir(Path(smollm2), bits=8))
