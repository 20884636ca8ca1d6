"""Temperature + top-p sampling over a logits row, in numpy.

llama.cpp's C sampler chain builds a candidate struct for every vocabulary entry on every
token (about 1 ms a token for a 49k vocabulary here, 7% of a small model's decode). This
does the same arithmetic on only the tokens that can matter: one pass over the row finds
them, then the weights, the nucleus and the draw are computed on those few.
"""

from __future__ import annotations

import math

import numpy as np

from ponder.errors import BackendError

# Tokens whose weight is below this fraction of the best token's are left out from the start:
# together they hold under vocabulary size x 1e-12 of the mass (1.5e-7 for a 152k vocabulary),
# less than float32 logits' own rounding moves the weights, so the draw is exact to that precision.
_NEGLIGIBLE = math.log(1e-12)
# Relative weights below which tokens are left out of the sort, tried in turn. A threshold
# is used only if the tokens above it already hold top_p of the mass, so the nucleus (the
# smallest set of most likely tokens reaching top_p) always lies inside: the result is exact.
_THRESHOLDS = (1e-4, 1e-8)


class Sampler:
    def __init__(self, temperature: float, top_p: float, seed: int | None):
        self.temperature = temperature
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray) -> int:
        if self.temperature <= 0:
            return _best(logits)
        top = _top(logits)
        return self._draw(logits, np.flatnonzero(logits >= top + self.temperature * _NEGLIGIBLE), top)

    def sample_allowed(self, logits: np.ndarray, words: np.ndarray) -> int | None:
        """A draw among the tokens a grammar allows (`words`: a bit a token, 32 a word), the same as masking
        the others first would give, or None where the best token is not allowed: mask them, then `sample`.
        Where it is allowed, the tokens that can matter are the allowed ones among those near the best: no
        need to touch the rest of a large vocabulary."""
        if self.temperature <= 0:
            token = _best(logits)
            return token if _allowed(words, np.array([token]))[0] else None
        top = _top(logits)
        candidates = np.flatnonzero(logits >= top + self.temperature * _NEGLIGIBLE)
        candidates = candidates[_allowed(words, candidates)]
        if not candidates.size or logits[candidates].max() < top:
            return None  # the allowed best is lower: tokens the threshold above left out may count
        return self._draw(logits, candidates, top)

    def _draw(self, logits: np.ndarray, candidates: np.ndarray, top: float) -> int:
        weights = np.exp((logits[candidates] - np.float32(top)) * np.float32(1.0 / self.temperature))  # the best weighs 1
        if self.top_p >= 1.0:
            cumulative = np.cumsum(weights, dtype=np.float64)
            pick = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
            return int(candidates[min(pick, candidates.size - 1)])
        needed = self.top_p * float(weights.sum(dtype=np.float64))
        for threshold in _THRESHOLDS:
            inside = np.flatnonzero(weights >= threshold)
            if weights[inside].sum(dtype=np.float64) >= needed:
                break
        else:
            inside = np.arange(weights.size)
        kept = weights[inside]
        order = np.argsort(-kept, kind="stable")
        cumulative = np.cumsum(kept[order], dtype=np.float64)
        size = min(int(np.searchsorted(cumulative, needed)) + 1, cumulative.size)
        pick = int(np.searchsorted(cumulative[:size], self.rng.random() * cumulative[size - 1], side="right"))
        return int(candidates[inside[order[min(pick, size - 1)]]])


def _best(logits: np.ndarray) -> int:
    token = int(np.argmax(logits))  # (the first NaN, where there is one)
    if math.isnan(logits[token]):
        raise _not_numbers()
    return token


def _top(logits: np.ndarray) -> float:
    top = float(logits.max())
    if math.isnan(top):
        raise _not_numbers()
    return top


def _allowed(words: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Whether each token's bit is set in `words` (llguidance's bitmask: int32 words, low bit first)."""
    return ((words[tokens >> 5] >> (tokens & 31)) & 1).astype(bool)


def _not_numbers() -> BackendError:
    return BackendError("the model's scores for the next token are not numbers (NaN)",
                        hint="its weights may be corrupt: download the model again")
