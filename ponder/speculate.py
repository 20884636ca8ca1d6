"""Speculative decoding: guesses of the next tokens, checked by the model in one call.

A backend feeds the token it just drew together with a guess of the tokens after it, gets logits for
every position in one model call, and draws each position's token in order with its own sampler: a
guessed token is kept while it equals the model's draw, and the first draw that differs is the model's
next token. The sampler makes exactly one draw per token it gives, in the same order as without
speculation, so a greedy or seeded reply is the same text either way (where the engine's logits for a
position do not depend on how many positions one call computes; see the README).

Guesses come from a Drafter: the reply's own text (NgramDrafter), or a smaller model (a backend's).
A Speculation asks it, counts, and, in "auto", measures what the guesses gain and stops asking while
they lose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ponder.errors import UsageError
from ponder.events import SpeculationStats

LONGEST = 16  # the most tokens guessed at once
SHORTEST = 2  # what a guess shrinks to after rejections
FIRST = 8  # the first guess's length
NGRAMS = (4, 3, 2)  # the lengths of the text's end that NgramDrafter looks up, longest first


class Drafter(Protocol):
    def propose(self, history: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` guesses of the tokens after `history` (every token so far: the prompt, then the
        reply); none where it has no guess. `history` only grows within a reply."""


class NgramDrafter:
    """Guesses from the text so far: where the last few tokens occurred before, what followed them then
    (prompt lookup decoding). Reasoning restates equations and code is rewritten with small changes, so
    the text often holds its own next tokens. Costs one dictionary lookup per n-gram length."""

    def __init__(self) -> None:
        self._seen: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAMS}  # n-gram -> where it last ended
        self._indexed = 0  # n-grams ending before this position are in `_seen`

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
                    return list(history[found + 1 : found + 1 + limit])
        return []


class Speculation:
    """One reply's speculative decoding: what to guess before each model call, and what each call gave.

    `adaptive` ("auto") compares each checked guess's tokens per second with plain calls' and stops
    guessing while they lose, for longer each time they lose again, then tries again: speculation is
    then never meaningfully slower than none, and pays where the text repeats itself."""

    def __init__(self, drafter: Drafter, adaptive: bool):
        self.drafter, self.adaptive = drafter, adaptive
        self.length = FIRST
        self.drafted = self.accepted = self.calls = 0
        self._plain_s: float | None = None  # seconds per plain call (a moving average)
        self._gain = 1.0  # tokens per plain call's time, of calls with a guess (a moving average)
        self._given = 0  # tokens given so far
        self._resume_at = 0  # while paused: the token count at which guessing resumes
        self._pause = 16  # tokens the next pause lasts

    def guess(self, history: Sequence[int], room: int) -> list[int]:
        """The guess to feed after `history`'s last token, at most `room` tokens (what the reply may still
        generate after that token, less one: the last call must give a token of its own)."""
        if room < 1 or self._given < self._resume_at or (self.adaptive and self._plain_s is None):
            return []
        return self.drafter.propose(history, min(self.length, room))[: min(self.length, room)]

    def settle(self, guessed: int, kept: int, seconds: float) -> None:
        """A model call of a `guessed`-token guess (0: a plain call) gave `kept` + 1 tokens in `seconds`,
        guessing included."""
        self.calls += 1
        self._given += kept + 1
        if not guessed:
            self._plain_s = seconds if self._plain_s is None else 0.8 * self._plain_s + 0.2 * seconds
            return
        self.drafted += guessed
        self.accepted += kept
        self.length = min(LONGEST, self.length * 2) if kept == guessed else max(SHORTEST, kept + 1)
        if not self.adaptive or self._plain_s is None or seconds <= 0:
            return
        self._gain = 0.7 * self._gain + 0.3 * ((kept + 1) * self._plain_s / seconds)
        if self._gain < 1.0:  # losing: plain calls for a while, longer each time
            self._resume_at = self._given + self._pause
            self._pause = min(self._pause * 2, 1024)
            self._gain = 1.0
        elif self._gain > 1.2:
            self._pause = 16

    def stats(self) -> SpeculationStats:
        return SpeculationStats(drafted=self.drafted, accepted=self.accepted, calls=self.calls)


def speculation_for(mode: str, draft: Drafter | None) -> Speculation | None:
    """A reply's Speculation for `--speculate mode` (GenerationParams.speculate); None: "off". `draft` is the
    loaded draft model's drafter, where the backend has one: "auto" then guesses with it (the user loaded it
    for that), under the same controller as n-gram guesses."""
    if mode == "off":
        return None
    if mode == "draft" and draft is None:
        raise UsageError("--speculate draft needs a draft model", hint="give one with --draft MODEL")
    if draft is not None and mode in ("draft", "auto"):
        return Speculation(draft, adaptive=mode == "auto")
    return Speculation(NgramDrafter(), adaptive=mode == "auto")
