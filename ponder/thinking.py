"""Keeping the reasoning in bounds: a token budget, no thinking at all, the user's "answer now", and
loop rescue.

`ReasoningGuard` watches a reply as the exchange splits it and says, before each delta, whether to
end the reasoning there. The exchange then stops the model and feeds it the closing text as tokens
right after the tokens it generated (a `Continuation`), so that it goes on to answer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ponder.events import GenerationParams, TextDelta
from ponder.loops import LoopDetector

# Qwen's documented message for a thinking budget: it closes the reasoning and asks for the answer.
BUDGET_MESSAGE = ("\n\nConsidering the limited time by the user, I have to give the solution based on the thinking "
                  "directly now.\n</think>\n\n")
# NoThinking (Ma et al., 2025): the reasoning prefilled as finished, so the model answers at once.
NO_THINKING = "Okay, I think I have finished thinking.\n</think>\n\n"
GRACE_TOKENS = 8  # past the budget, the word being written may finish within this many tokens
STOP = "stop"  # a loop the user wants stopped, or any loop in the answer
ANSWER_LOOP_TOKENS = 256  # an answer is stopped only once its repeats cover this many tokens


@dataclass(frozen=True)
class Cut:
    """The reasoning is ended early: why ("budget", "user", "loop"), and the text that ends it."""

    reason: str
    forced: str


class ReasoningGuard:
    def __init__(self, params: GenerationParams, reasoning_model: bool, answer_now: threading.Event | None = None):
        self.budget = params.think_budget if reasoning_model else None
        self.message = params.budget_message or BUDGET_MESSAGE
        self.on_loop = params.on_loop
        self.answer_now = answer_now
        self.no_thinking = self.budget == 0
        self.in_reasoning = reasoning_model
        self.reasoning_tokens = 0
        self._past_budget = 0
        self._last_text = "x"
        self._loops = {True: LoopDetector(), False: LoopDetector(min_length=ANSWER_LOOP_TOKENS)}  # reasoning, answer
        self.cut: Cut | None = Cut("budget", NO_THINKING) if self.no_thinking else None

    def observe(self, in_reasoning: bool, reasoning_tokens: int) -> None:
        """Where the reply stands after the exchange took in the last delta."""
        self.in_reasoning, self.reasoning_tokens = in_reasoning, reasoning_tokens

    def before(self, delta: TextDelta) -> Cut | str | None:
        """Before `delta` is taken: a Cut to end the reasoning here, STOP to end the reply, or None."""
        reasoning = self.in_reasoning and self.cut is None
        looping = self._looping(delta, reasoning)
        if not reasoning:
            return STOP if looping else None  # a loop in the answer always stops
        mid_character = not self._last_text  # the last delta ended inside a character: never cut here
        self._last_text = delta.text
        if mid_character or delta.text.startswith("</"):  # (the model closing its reasoning itself)
            self._past_budget += delta.tokens if self._over_budget() else 0
            return None
        decision: Cut | str | None = None
        if self.answer_now is not None and self.answer_now.is_set():
            decision = Cut("user", self.message)
        elif self._over_budget() and self._word_ends(delta):
            decision = Cut("budget", self.message)
        elif looping and self.on_loop != "continue":
            decision = Cut("loop", self.message) if self.on_loop == "answer" else STOP
        if isinstance(decision, Cut):
            self.cut = decision
        return decision

    def _over_budget(self) -> bool:
        return self.budget is not None and self.reasoning_tokens >= self.budget

    def _word_ends(self, delta: TextDelta) -> bool:
        """Cut before `delta` if it starts a new word, or once the grace is spent."""
        self._past_budget += delta.tokens
        first = delta.text[:1]
        return self._past_budget > GRACE_TOKENS or (bool(first) and not first.isalnum())

    def _looping(self, delta: TextDelta, reasoning: bool) -> bool:
        if not delta.text:
            return False
        key = delta.ids[0] if delta.ids else hash(delta.text)  # a server's deltas stand in for its tokens
        return self._loops[reasoning].add(key) is not None
