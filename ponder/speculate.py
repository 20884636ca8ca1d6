"""Speculative decoding: guesses of the next tokens, checked by the model in one call.

A backend feeds the token it just drew together with a guess of the tokens after it, gets logits for
every position in one model call, and draws each position's token in order with its own sampler: a
guessed token is kept while it equals the model's draw, and the first draw that differs is the model's
next token. The sampler makes exactly one draw per token it gives, in the same order as without
speculation, so a greedy or seeded reply is the same text either way (where the engine's logits for a
position do not depend on how many positions one call computes; see the README).

Guesses come from a Drafter: the reply's own text (NgramDrafter), or a smaller model (a backend's).
A Speculation asks it and counts; in "auto" (AdaptiveSpeculation) it weighs what a guess of each length
is expected to gain against what the calls cost, and guesses only where that pays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from ponder.errors import UsageError
from ponder.events import SpeculationStats

LONGEST = 16  # the most tokens guessed at once
SHORTEST = 2  # what a guess shrinks to after rejections
FIRST = 8  # the first guess's length
NGRAMS = (4, 3, 2)  # the lengths of the text's end that NgramDrafter looks up, longest first


class Drafter(Protocol):
    free: bool  # whether a guess costs nothing to make (so every position's guess can be checked unasked)

    def propose(self, history: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` guesses of the tokens after `history` (every token so far: the prompt, then the
        reply); none where it has no guess. `history` only grows within a reply."""


class NgramDrafter:
    """Guesses from the text so far: where the last few tokens occurred before, what followed them then
    (prompt lookup decoding). Reasoning restates equations and code is rewritten with small changes, so
    the text often holds its own next tokens. Costs one dictionary lookup per n-gram length."""

    free = True

    def __init__(self) -> None:
        self._seen: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAMS}  # n-gram -> where it last ended
        self._indexed = 0  # n-grams ending before this position are in `_seen`
        self.order = 0  # the n-gram length that found the last guess (0: none)

    def propose(self, history: Sequence[int], limit: int) -> list[int]:
        end = len(history) - 1  # the n-grams ending here are the ones looked up, so not indexed yet
        for stop in range(self._indexed, end):
            for n, seen in self._seen.items():
                if stop + 1 >= n:
                    seen[tuple(history[stop + 1 - n : stop + 1])] = stop
        self._indexed = max(self._indexed, end)
        for n in NGRAMS:
            if len(history) > n:
                found = self._seen[n].get(tuple(history[-n:]))
                if found is not None:
                    self.order = n
                    return list(history[found + 1 : found + 1 + limit])
        self.order = 0
        return []


class Speculation:
    """One reply's speculative decoding with a guess of a set length ("ngram", "draft"): it starts at FIRST,
    doubles after a guess kept whole and shrinks to what was kept, plus one, after a rejection."""

    def __init__(self, drafter: Drafter):
        self.drafter = drafter
        self.length = FIRST
        self.drafted = self.accepted = self.calls = 0

    def guess(self, history: Sequence[int], room: int) -> list[int]:
        """The guess to feed after `history`'s last token, at most `room` tokens (what the reply may still
        generate after that token, less one: the last call must give a token of its own)."""
        limit = min(self.length, room)
        return self.drafter.propose(history, limit)[:limit] if limit > 0 else []

    def settle(self, guessed: int, kept: int, seconds: float) -> None:
        """A model call of a `guessed`-token guess (0: a plain call) gave `kept` + 1 tokens in `seconds`,
        guessing included."""
        self.calls += 1
        if guessed:
            self.drafted += guessed
            self.accepted += kept
            self.length = min(LONGEST, self.length * 2) if kept == guessed else max(SHORTEST, kept + 1)

    def stats(self) -> SpeculationStats:
        return SpeculationStats(drafted=self.drafted, accepted=self.accepted, calls=self.calls)


class AdaptiveSpeculation(Speculation):
    """ "auto": before each call, the guess length that gives the most tokens a second, or no guess where
    none beats a plain call; so speculation pays where the text repeats itself and costs next to nothing
    where it does not.

    Tokens a call gives: 1 + the guessed tokens kept, expected from how far the drafter's guesses ran
    before (Runs, one per kind of guess: the n-gram length that found it). A free drafter's guess at every
    position is checked against the text that follows, asked for or not, so what it is worth is known
    without a call spent on it; a draft model's only from the guesses checked. Seconds a call costs: a
    plain call's (a moving average), and a guess of g tokens' fitted as plain * (1 + a + b * g) to the
    calls with guesses (Costs): about 1 on a GPU, where a call of many tokens costs what one does, and
    up to g + 1 on a CPU, where it does not."""

    def __init__(self, drafter: Drafter):
        super().__init__(drafter)
        self._plain_s: float | None = None  # seconds per plain call (a moving average)
        self._costs = Costs()
        self._runs: dict[int, Runs] = {}  # kind of guess -> how far its guesses ran
        self._watched: list[list] = []  # [position, guess, runs, matched so far]: guesses not yet resolved
        self._epoch = 0  # the history length at which counts weigh 1

    def guess(self, history: Sequence[int], room: int) -> list[int]:
        self._watch(history)
        if self._plain_s is None:
            return []  # (a plain call is timed first)
        if self.drafter.free:
            proposal = self.drafter.propose(history, LONGEST)
            if not proposal:
                return []
            runs = self._runs.setdefault(getattr(self.drafter, "order", 0), Runs(NGRAM_PRIOR))
            self._watched.append([len(history), proposal, runs, 0])
            length = self._best_length(runs, min(len(proposal), room))
            return proposal[:length]
        runs = self._runs.setdefault(0, Runs(DRAFT_PRIOR))
        length = self._best_length(runs, min(LONGEST, room))
        proposal = self.drafter.propose(history, length)[:length] if length else []
        if proposal:
            self._watched.append([len(history), proposal, runs, 0])
        return proposal

    def _best_length(self, runs: "Runs", longest: int) -> int:
        best, best_rate = 0, 1.0 + MARGIN  # tokens per plain call's time: a plain call's own rate is 1
        expected = reached = 1.0  # tokens a call gives; the chance that the guess's g-th token is kept
        base, per_token = self._costs.line()
        for g, kept in enumerate(runs.chances(longest), 1):
            reached *= kept
            expected += reached
            rate = expected / (1 + max(0.0, base + per_token * g))
            if rate > best_rate:
                best, best_rate = g, rate
        return best

    def _watch(self, history: Sequence[int]) -> None:
        """Check the guesses made so far against the text that followed them."""
        weight = FADE ** (len(history) - self._epoch)  # later tokens' counts weigh more: older ones fade
        if weight > 1e6:  # (rescaled: only the counts' ratios matter)
            for runs in self._runs.values():
                runs.rescale(weight)
            self._epoch, weight = len(history), 1.0
        for runs in self._runs.values():
            runs.weight = weight
        still = []
        for watched in self._watched:
            position, proposal, runs, matched = watched
            while matched < len(proposal) and position + matched < len(history):
                kept = history[position + matched] == proposal[matched]
                runs.count(matched, kept)
                if not kept:
                    break
                matched += 1
            else:
                if matched < len(proposal):
                    watched[3] = matched
                    still.append(watched)
        self._watched = still

    def settle(self, guessed: int, kept: int, seconds: float) -> None:
        super().settle(guessed, kept, seconds)
        if seconds <= 0:
            return
        if not guessed:
            self._plain_s = seconds if self._plain_s is None else 0.8 * self._plain_s + 0.2 * seconds
            self._costs.idle()
        elif self._plain_s is not None:
            self._costs.add(guessed, seconds / self._plain_s)


class Runs:
    """How far one kind of guess runs: at each depth d, how often a guess whose first d tokens were kept
    kept the next one too (recent guesses counting most, as the text changes), shrunk towards the depth
    before where it has seen little."""

    def __init__(self, prior: float) -> None:
        self._prior = prior  # the chance believed where nothing was seen
        self._kept = [0.0] * LONGEST  # depth -> weighted count of tokens kept there
        self._missed = [0.0] * LONGEST
        self.weight = 1.0  # what a count weighs now (set by the owner as tokens go by)

    def count(self, depth: int, kept: bool) -> None:
        (self._kept if kept else self._missed)[depth] += self.weight

    def rescale(self, factor: float) -> None:
        self._kept = [k / factor for k in self._kept]
        self._missed = [m / factor for m in self._missed]

    def chances(self, longest: int) -> Iterator[float]:
        """For depths 0 to `longest` - 1: the chance that a guess's token there is kept, given every one
        before it was."""
        prior, p = self.weight * PRIOR_WEIGHT, self._prior
        for kept, missed in zip(self._kept[:longest], self._missed[:longest]):
            p = (kept + prior * p) / (kept + missed + prior)
            yield p


class Costs:
    """What a call with a guess of g tokens costs, as a multiple of a plain call: 1 + a + b * g, fitted by
    least squares to the calls so far (the later weighing more), with two optimistic made-up calls that keep
    the fit defined and, as real calls fade while none is made, bring guessing back to be tried again."""

    def __init__(self) -> None:
        self._sums = [0.0] * 5  # weighted n, g, g², y, g·y of the calls' y = ratio - 1

    def add(self, guessed: int, ratio: float) -> None:
        """A call with a guess of `guessed` tokens cost `ratio` plain calls."""
        y = ratio - 1
        terms = (1, guessed, guessed * guessed, y, guessed * y)
        self._sums = [s * COST_FADE + term for s, term in zip(self._sums, terms)]

    def idle(self) -> None:
        self._sums = [s * IDLE_FADE for s in self._sums]

    def line(self) -> tuple[float, float]:
        """(a, b): a guess of g tokens costs 1 + a + b * g plain calls."""
        n, g, gg, y, gy = (s + PRIOR_CALLS * p for s, p in zip(self._sums, _PRIOR_SUMS))
        slope = (n * gy - g * y) / (n * gg - g * g)
        return (y - slope * g) / n, slope


# The made-up calls of Costs: a guess of 1 token costing 1.25 plain calls, of LONGEST 2.5 (GPU-like), each
# weighing PRIOR_CALLS real ones.
PRIOR_CALLS = 0.5
_PRIOR_SUMS = [2.0, 1 + LONGEST, 1 + LONGEST**2, 0.25 + 1.5, 0.25 + 1.5 * LONGEST]
MARGIN = 0.05  # what a guess must be expected to gain over a plain call
FADE = 1 / 0.98  # what a count of Runs weighs against one a token earlier
# Runs' belief where it has seen nothing (an n-gram's guess is often wrong; a draft model, loaded by the user
# for this, is usually right), and what it is worth in counts
NGRAM_PRIOR, DRAFT_PRIOR, PRIOR_WEIGHT = 0.3, 0.7, 2.0
COST_FADE = 0.9  # how much a call's cost counts after each later guessed call
IDLE_FADE = 0.995  # ... and after each plain call


def speculation_for(mode: str, draft: Drafter | None) -> Speculation | None:
    """A reply's Speculation for `--speculate mode` (GenerationParams.speculate); None: "off". `draft` is the
    loaded draft model's drafter, where the backend has one: "auto" then guesses with it (the user loaded it
    for that), under the same controller as n-gram guesses."""
    if mode == "off":
        return None
    if mode == "draft" and draft is None:
        raise UsageError("--speculate draft needs a draft model", hint="give one with --draft MODEL")
    drafter = draft if draft is not None and mode in ("draft", "auto") else NgramDrafter()
    return AdaptiveSpeculation(drafter) if mode == "auto" else Speculation(drafter)
