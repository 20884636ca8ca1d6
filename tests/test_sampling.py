"""The numpy sampler draws from exactly the temperature + top-p distribution."""

from __future__ import annotations

import numpy as np
import pytest

from ponder.sampling import Sampler


def exact_distribution(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    probs = np.exp((logits - logits.max()) / temperature)
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
    nucleus = np.zeros_like(probs)
    nucleus[keep] = probs[keep]
    return nucleus / nucleus.sum()


def empirical(sampler: Sampler, logits: np.ndarray, draws: int) -> np.ndarray:
    counts = np.bincount([sampler.sample(logits) for _ in range(draws)], minlength=logits.size)
    return counts / draws


@pytest.mark.parametrize(
    "logits, temperature, top_p",
    [
        (np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0], dtype=np.float32), 0.6, 0.95),
        (np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0], dtype=np.float32), 1.0, 0.5),
        (np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0], dtype=np.float32), 0.7, 1.0),
        # A flat tail of 5000 tokens holding most of the mass: the thresholds must not cut it.
        (np.concatenate([[4.0, 3.0], np.zeros(5000)]).astype(np.float32), 1.0, 0.95),
    ],
)
def test_draws_follow_the_nucleus_distribution(logits, temperature, top_p):
    want = exact_distribution(logits.astype(np.float64), temperature, top_p)
    got = empirical(Sampler(temperature, top_p, seed=7), logits, draws=20000)
    assert np.all(got[want == 0] == 0)  # nothing outside the nucleus, ever
    assert np.abs(got - want).max() < 0.015


def test_top_p_keeps_a_dominant_token_alone():
    logits = np.array([10.0, 5.0, 4.0, 3.0], dtype=np.float32)
    sampler = Sampler(0.6, 0.95, seed=0)
    assert {sampler.sample(logits) for _ in range(500)} == {0}


def test_temperature_zero_is_greedy_and_seed_repeats():
    logits = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    assert Sampler(0.0, 0.95, None).sample(logits) == int(np.argmax(logits))
    a, b = Sampler(1.0, 0.9, seed=3), Sampler(1.0, 0.9, seed=3)
    assert [a.sample(logits) for _ in range(50)] == [b.sample(logits) for _ in range(50)]
