"""Verbatim repetition at the end of a token stream: a model that says the same thing over and over.

A span of MIN_SPAN to MAX_SPAN tokens repeated at least REPEATS times in a row, ending at the newest
token. For each span length p, `run[p]` counts how many newest tokens in a row equal the token p
before them; the stream ends in REPEATS copies of a p-token span exactly when run[p] >= (REPEATS-1)*p.
Only the spans at which the newest token occurred before can have a run, so each token visits just
those: where it was within the last MAX_SPAN tokens (a handful for most tokens), never the whole
window, and never a rescan of what came before. This runs beside the decode on every token, where
each numpy call on a cache the model's weights have just swept costs tens of microseconds.
"""

from __future__ import annotations

from collections import deque

MIN_SPAN, MAX_SPAN, REPEATS = 8, 512, 3


class LoopDetector:
    def __init__(self, min_span: int = MIN_SPAN, max_span: int = MAX_SPAN, repeats: int = REPEATS,
                 min_length: int = 0):
        """`min_length`: the fewest tokens the repeats must cover, whatever the span (an answer may
        rightly repeat a short pattern for a while: a row of zeros, "a" a hundred times)."""
        self.min_span, self.max_span = min_span, max_span
        # the run a span needs to be a loop, by span length
        self.needed = [max((repeats - 1) * span, min_length - span) for span in range(max_span + 1)]
        self.runs: dict[int, int] = {}  # span -> its run, for the spans whose run is not 0
        self.places: dict[object, deque[int]] = {}  # token -> where it was, oldest first (pruned as it comes again)
        self.seen = 0

    def add(self, token) -> int | None:
        """Take the next token; the span length of a loop that ends here, or None."""
        now, runs = self.seen, self.runs
        places = self.places.get(token)
        if places is None:
            if len(self.places) >= 4 * self.max_span:
                self._forget_old()
            places = self.places[token] = deque()
        while places and now - places[0] > self.max_span:
            places.popleft()
        fresh: dict[int, int] = {}
        found, needed, shortest = None, self.needed, self.min_span
        for place in places:  # (oldest first: the spans shrink, so the last one found is the shortest)
            span = now - place
            if span >= shortest:
                run = fresh[span] = runs.get(span, 0) + 1
                if run >= needed[span]:
                    found = span
        self.runs = fresh
        places.append(now)
        self.seen = now + 1
        return found

    def _forget_old(self) -> None:
        """Drop the tokens not seen within the window (a long varied stream would keep them all)."""
        oldest = self.seen - self.max_span
        self.places = {token: places for token, places in self.places.items() if places[-1] >= oldest}
