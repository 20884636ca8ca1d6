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
    before (Runs, one per kind of guess: the n-gram length that found it). A free drafter's guess before
    every call is checked against the text that follows, sent or not, so what it is worth is known
    without a call spent on it; a draft model's only from the guesses checked. Seconds a call costs: a
    plain call's (a moving average), and, in plain calls, a guess of g tokens' as measured (Costs): about 1
    on a GPU, where a call of many tokens costs what one does, up to g + 1 on a CPU, where it does not, and
    more with a draft model's decodes."""

    def __init__(self, drafter: Drafter, repeatable: bool = False):
        super().__init__(drafter)
        self.repeatable = repeatable  # choose from the text alone, never from timings (see speculation_for)
        self._plain_s: float | None = None  # seconds per plain call (a moving average, from the second on)
        self._first_plain_s: float | None = None  # (the first alone may be a warm-up's)
        self._since_plain = 0  # calls since the last plain one
        self._costs = FixedCosts() if repeatable else Costs()
        self._runs: dict[int, Runs] = {}  # kind of guess -> how far its guesses ran
        self._watched: list[list] = []  # [position, guess, runs, matched so far]: guesses not yet resolved

    def guess(self, history: Sequence[int], room: int) -> list[int]:
        self._watch(history)
        if self._plain_s is None or self._since_plain >= REPLAIN:
            return []  # a plain call is timed first, and again now and then: guesses are measured against it
        if self.drafter.free:
            proposal = self.drafter.propose(history, LONGEST)
            if not proposal:
                return []
            runs = self._runs_of(getattr(self.drafter, "order", 0), NGRAM_PRIOR, FADE, len(history))
            self._watched.append([len(history), proposal, runs, 0])
            length = self._best_length(runs, min(len(proposal), room))
            return proposal[:length]
        runs = self._runs_of(0, DRAFT_PRIOR, DRAFT_FADE, len(history))
        length = self._best_length(runs, min(LONGEST, room))
        proposal = self.drafter.propose(history, length)[:length] if length else []
        if proposal:
            self._watched.append([len(history), proposal, runs, 0])
        return proposal

    def _runs_of(self, kind: int, prior: float, fade: float, now: int) -> "Runs":
        runs = self._runs.get(kind)
        if runs is None:
            runs = self._runs[kind] = Runs(prior, fade, now)
        return runs

    def _best_length(self, runs: "Runs", longest: int) -> int:
        best, best_rate = 0, 1.0 + MARGIN  # tokens per plain call's time: a plain call's own rate is 1
        expected = reached = 1.0  # tokens a call gives; the chance that the guess's g-th token is kept
        cost = self._costs.table
        for g, kept in enumerate(runs.chances(longest), 1):
            reached *= kept
            expected += reached
            rate = expected / cost[g]
            if rate > best_rate:
                best, best_rate = g, rate
        return best

    def _watch(self, history: Sequence[int]) -> None:
        """Check the guesses made so far against the text that followed them."""
        for runs in self._runs.values():
            runs.advance(len(history))
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
        if self.repeatable:
            seconds = 1.0  # (the yardstick exists, but its figures come from FixedCosts)
        if seconds <= 0:
            return
        self._since_plain = 0 if not guessed else self._since_plain + 1
        if not guessed:
            if self._first_plain_s is None:
                self._first_plain_s = seconds
            elif self._plain_s is None:
                self._plain_s = min(self._first_plain_s, seconds)
            else:
                self._plain_s = 0.8 * self._plain_s + 0.2 * seconds
            self._costs.idle()
        elif self._plain_s is not None:
            self._costs.add(guessed, seconds / self._plain_s)


class Runs:
    """How far one kind of guess runs: at each depth d, how often a guess whose first d tokens were kept
    kept the next one too (recent guesses counting most, as the text changes), shrunk towards the depth
    before where it has seen little."""

    def __init__(self, prior: float, fade: float, now: int) -> None:
        self._prior = prior  # the chance believed where nothing was seen
        self._fade, self._epoch = fade, now  # a count weighs fade ** (its position - epoch): older ones fade
        self._kept = [0.0] * LONGEST  # depth -> weighted count of tokens kept there
        self._missed = [0.0] * LONGEST
        self.weight = 1.0  # what a count weighs now

    def advance(self, now: int) -> None:
        """The text is `now` tokens long."""
        self.weight = self._fade ** (now - self._epoch)
        if self.weight > 1e6:  # (rescaled: only the counts' ratios matter)
            self._kept = [k / self.weight for k in self._kept]
            self._missed = [m / self.weight for m in self._missed]
            self._epoch, self.weight = now, 1.0

    def count(self, depth: int, kept: bool) -> None:
        (self._kept if kept else self._missed)[depth] += self.weight

    def chances(self, longest: int) -> Iterator[float]:
        """For depths 0 to `longest` - 1: the chance that a guess's token there is kept, given every one
        before it was."""
        prior, p = self.weight * PRIOR_WEIGHT, self._prior
        for kept, missed in zip(self._kept[:longest], self._missed[:longest]):
            p = (kept + prior * p) / (kept + missed + prior)
            yield p


class Costs:
    """What a call with a guess of g tokens costs, in plain calls: measured for each length guessed (a
    moving average, the latest calls weighing most); between two measured lengths, in proportion; below
    them, in proportion to the tokens; above them, growing as between the last two, or from none, and at
    least by PRIOR_COST a token: longer guesses look worth a try, and are then measured. Before any is measured, and again once
    all are forgotten (they fade while only plain calls are made), a guess is taken to cost what it would
    on a GPU (PRIOR_COST), so guessing is tried, and tried again now and then."""

    def __init__(self) -> None:
        self._seen: dict[int, list[float]] = {}  # length -> [weighted sum of costs, weight]
        self.table = self._estimates()  # length -> cost, for 0 to LONGEST

    def add(self, guessed: int, ratio: float) -> None:
        """A call with a guess of `guessed` tokens cost `ratio` plain calls."""
        total, weight = self._seen.get(guessed, (0.0, 0.0))
        self._seen[guessed] = [total * COST_FADE + ratio, weight * COST_FADE + 1]
        self.table = self._estimates()

    def idle(self) -> None:
        """A plain call was made: what the lengths cost fades (the machine's load changes, a draft warms up)."""
        for seen in self._seen.values():
            seen[0] *= IDLE_FADE
            seen[1] *= IDLE_FADE
        faded = [g for g, (_, weight) in self._seen.items() if weight < FORGET]
        for g in faded:
            del self._seen[g]
        if faded:
            self.table = self._estimates()

    def _estimates(self) -> list[float]:
        known = sorted((g, total / weight) for g, (total, weight) in self._seen.items())
        table = [1.0]
        for g in range(1, LONGEST + 1):
            if not known:
                table.append(1 + PRIOR_COST * g)
                continue
            below = [(h, c) for h, c in known if h <= g]
            above = [(h, c) for h, c in known if h >= g]
            if below and above:
                (h0, c0), (h1, c1) = below[-1], above[0]
                table.append(c0 if h0 == h1 else c0 + (c1 - c0) * (g - h0) / (h1 - h0))
            elif above:  # shorter than any measured: in proportion to the tokens
                h, c = above[0]
                table.append(1 + (c - 1) * g / h)
            else:  # longer: as the last two measured lengths differ, at least PRIOR_COST a token (then measured)
                (h, c), step = known[-1], PRIOR_COST
                if len(known) > 1:
                    step = max(step, (c - known[-2][1]) / (h - known[-2][0]))
                table.append(c + step * (g - h))
        return table


class FixedCosts(Costs):
    """Costs that are not measured: a call of 1 + g tokens costs 1.9 + 0.4 g plain calls, about what a small
    model's does on a CPU (measured on SmolLM2 Q4_1, 2 cores: 1.96 at g = 1, 7.5 at 16); cautious elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.table = [1.0] + [1.9 + 0.4 * g for g in range(1, LONGEST + 1)]

    def add(self, guessed: int, ratio: float) -> None:
        pass

    def idle(self) -> None:
        pass


PRIOR_COST = 0.1  # a guessed token's cost, in plain calls, before any is measured (a GPU's is about 0.02)
FORGET = 0.2  # a length's measured cost is forgotten once its weight fades below this
MARGIN = 0.05  # what a guess must be expected to gain over a plain call
REPLAIN = 64  # the most calls in a row with guesses: then a plain one, to keep the yardstick true
FADE = 1 / 0.98  # what a count of Runs weighs against one a token earlier (n-gram guesses: one a token)
DRAFT_FADE = 1 / 0.995  # (a draft's: one a guess, so a longer memory)
# Runs' belief where it has seen nothing (an n-gram's guess is often wrong; a draft model, loaded by the user
# for this, is usually right), and what it is worth in counts
NGRAM_PRIOR, DRAFT_PRIOR, PRIOR_WEIGHT = 0.3, 0.7, 2.0
COST_FADE = 0.8  # how much a call's cost counts after each later call of the same length
IDLE_FADE = 0.995  # ... and after each plain call


def speculation_for(mode: str, draft: Drafter | None, repeatable: bool = False) -> Speculation | None:
    """A reply's Speculation for `--speculate mode` (GenerationParams.speculate); None: "off". `draft` is the
    loaded draft model's drafter, where the backend has one: "auto" then guesses with it (the user loaded it
    for that), under the same controller as n-gram guesses. `repeatable` (a greedy or seeded reply): "auto"
    decides from the text alone, as the other modes do, so the reply is the same every run even where the
    engine's logits depend on a call's size (llama.cpp's CPU kernels past the 256th position)."""
    if mode == "off":
        return None
    if mode == "draft" and draft is None:
        raise UsageError("--speculate draft needs a draft model", hint="give one with --draft MODEL")
    drafter = draft if draft is not None and mode in ("draft", "auto") else NgramDrafter()
    if mode == "auto" and not (repeatable and not drafter.free):  # (a draft's worth is known only by asking it:
        return AdaptiveSpeculation(drafter, repeatable)          # a repeatable reply asks it as "draft" does)
    return Speculation(drafter)
