"""Verbatim repetition at the end of a token stream: a model that says the same thing over and over.

A span of MIN_SPAN to MAX_SPAN tokens repeated at least REPEATS times in a row, ending at the newest
token. For each span length p, `run[p]` counts how many newest tokens in a row equal the token p
before them; the stream ends in REPEATS copies of a p-token span exactly when run[p] >= (REPEATS-1)*p.
Each token updates every run at once with numpy: constant work per token (MAX_SPAN compares), never a
rescan of what came before.
"""

from __future__ import annotations

import numpy as np

MIN_SPAN, MAX_SPAN, REPEATS = 8, 512, 3


class LoopDetector:
    def __init__(self, min_span: int = MIN_SPAN, max_span: int = MAX_SPAN, repeats: int = REPEATS,
                 min_length: int = 0):
        """`min_length`: the fewest tokens the repeats must cover, whatever the span (an answer may
        rightly repeat a short pattern for a while: a row of zeros, "a" a hundred times)."""
        self.spans = np.arange(min_span, max_span + 1)
        self.needed = np.maximum((repeats - 1) * self.spans, min_length - self.spans)
        self.window = np.full(max_span + 1, -1, dtype=np.int64)  # the last max_span tokens, a ring
        self.runs = np.zeros(len(self.spans), dtype=np.int64)
        self.seen = 0

    def add(self, token: int) -> int | None:
        """Take the next token; the span length of a loop that ends here, or None."""
        size = len(self.window)
        back = self.window[(self.seen - self.spans) % size]  # the token `span` places back, for each span
        valid = self.spans <= self.seen
        self.runs = np.where(valid & (back == token), self.runs + 1, 0)
        self.window[self.seen % size] = token
        self.seen += 1
        found = np.nonzero(self.runs >= self.needed)[0]
        return int(self.spans[found[0]]) if len(found) else None
