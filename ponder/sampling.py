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
            token = int(np.argmax(logits))  # (the first NaN, where there is one)
            if math.isnan(logits[token]):
                raise _not_numbers()
            return token
        top = float(logits.max())
        if math.isnan(top):
            raise _not_numbers()
        candidates = np.flatnonzero(logits >= top + self.temperature * _NEGLIGIBLE)
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


def _not_numbers() -> BackendError:
    return BackendError("the model's scores for the next token are not numbers (NaN)",
                        hint="its weights may be corrupt: download the model again")
