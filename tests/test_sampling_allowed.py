"""Sampler.sample_allowed (a grammar's draw without masking the whole vocabulary) draws exactly what masking
every forbidden logit first and then sampling draws, token for token and seed for seed."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ponder.sampling import Sampler

VOCAB = 4096  # 128 words of 32 tokens


def masked_draw(logits, words, temperature, top_p, seed):
    allowed = np.unpackbits(words.view(np.uint8), count=logits.size, bitorder="little").astype(bool)
    masked = np.where(allowed, logits, -np.inf).astype(np.float32)
    return Sampler(temperature, top_p, seed).sample(masked)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), temperature=st.sampled_from([0.0, 0.3, 0.6, 1.0, 1.5]),
       top_p=st.sampled_from([0.5, 0.95, 1.0]), share=st.sampled_from([0.02, 0.3, 0.9, 1.0]),
       peaked=st.booleans())
def test_a_draw_among_the_allowed_equals_the_masked_draw(seed, temperature, top_p, share, peaked):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(VOCAB) * (8 if peaked else 1)).astype(np.float32)
    words = np.where(rng.random(VOCAB // 32) < share, rng.integers(-2**31, 2**31, VOCAB // 32), 0).astype(np.int32)
    words[rng.integers(VOCAB // 32)] |= 1  # something is allowed
    expected = masked_draw(logits, words, temperature, top_p, seed)
    token = Sampler(temperature, top_p, seed).sample_allowed(logits, words)
    if token is None:  # the best token is forbidden: the caller masks, then samples
        best = int(np.argmax(logits))
        assert not (words[best >> 5] >> (best & 31)) & 1
    else:
        assert token == expected


def test_the_fast_path_is_taken_when_the_best_token_is_allowed():
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[100] = 5.0
    words = np.zeros(VOCAB // 32, dtype=np.int32)
    words[100 >> 5] = 1 << (100 & 31)
    assert Sampler(0.0, 1.0, 0).sample_allowed(logits, words) == 100
    assert Sampler(0.6, 0.95, 0).sample_allowed(logits, words) == 100
    words[:] = 0
    words[0] = 1
    assert Sampler(0.0, 1.0, 0).sample_allowed(logits, words) is None
