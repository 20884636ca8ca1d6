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
