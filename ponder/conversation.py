"""A conversation being held with a model: its turns, each kept in the history as it ends, the
message taken back when a turn fails, how much of the context it fills, and what of it the model
sees once it outgrows the context (the oldest whole turns left out, or a summary in their place).

Every front end that talks to a model uses it (chat for many turns, ask for one); no terminal here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import replace

from ponder.backends.base import Model
from ponder.context_fit import estimated_tokens, fitting_start, reply_room, summary_room, turn_starts
from ponder.errors import BackendError, ContextOverflow, UsageError
from ponder.events import GenerationParams, Reply, ReplyEvent
from ponder.history import Conversation, History, HistoryError, Turn, messages
from ponder.exchange import generate_reply, model_prompt

CONTEXT_WARNING = 0.8  # a conversation this full of the context is worth a warning (on_full refuse)
SUMMARY = "summary"  # the finish_reason that marks a /compact summary in the history
# The request for a summary. It stays in the conversation as asked, before the summary: the model later
# sees one earlier exchange (this, and its summary) where the turns it replaces were.
COMPACT_REQUEST = ("Summarise our conversation so far in short notes: every fact, figure, name, decision, code"
                   " or formula we settled on, what I asked for, and any open question. From now on you will see"
                   " only your summary of it.")


class Chat:
    def __init__(self, history: History | None, kind: str, on_full: str = "drop"):
        self.history = history  # None: not logged (--no-log, or the history failed)
        self.kind = kind  # "chat" or "ask", as the history records it
        self.conversation = Conversation()
        self.model: Model | None = None
        self.last_stats = None  # of the last finished reply
        self.history_error: str | None = None  # why the history turned itself off
        self.on_full = on_full  # past the context: "drop" the oldest turns, "compact" them, or "refuse"
        # The first turn the model sees (a system message at the start it always sees). It only moves on,
        # so the prompt's beginning stays put between the moves and the model's cached prefix holds.
        self.seen_from = 0
        self.estimated = False  # token counts are estimates: the model cannot tokenize (a server)
        self.scale = 1.0  # estimates times this: what the server counted for the last prompt, over the estimate

    def resume(self, conversation_id: int | None, last: bool) -> None:
        """Continue a stored conversation: `conversation_id`, or with `last` the latest chat."""
        if conversation_id is None and not last:
            return
        if self.history is None:
            why = f"cannot be used: {self.history_error}" if self.history_error else "--no-log turns off"
            raise UsageError(f"--continue and --resume read the history, which {why}")
        found = conversation_id if conversation_id is not None else self.history.last_chat()
        loaded = self.history.load(found) if found is not None else None
        if loaded is None:
            raise UsageError(f"no conversation {conversation_id}" if conversation_id is not None
                             else "no earlier conversation to continue", hint="`ponder history` lists them")
        self.conversation = loaded
        self.seen_from = _seen_from(loaded.turns)

    def use(self, model: Model) -> None:
        self.model = model
        self.conversation.model = self.conversation.model or model.info.name

    def clear(self) -> None:
        self.conversation = Conversation(model=self.model.info.name)
        self.last_stats = None
        self.seen_from = 0

    # --- turns ------------------------------------------------------------------------

    def add(self, turn: Turn) -> bool:
        """Keep `turn`; False when the history failed just now (it is off from then on:
        `history_error` says why), since a conversation must not die with its log."""
        self.conversation.turns.append(turn)
        return self._logged(lambda history: history.add_turn(self.conversation, turn, self.kind,
                                                             self.model.info.backend))

    def drop_last(self) -> bool:
        """Forget the last turn; False when the history failed just now (as `add`)."""
        turn = self.conversation.turns.pop()
        return self._logged(lambda history: history.remove_turn(turn))

    def _logged(self, change) -> bool:
        if self.history is None:
            return True
        try:
            change(self.history)
        except HistoryError as exc:  # History raises nothing else for the database's failures
            self.history, self.history_error = None, exc.reason
            return False
        return True

    def take_back(self) -> str:
        """Drop the unanswered user message (its turn failed); its text, to be offered again
        (`history_error` is set if the history failed meanwhile)."""
        if not self._pending():
            return ""
        text = self.conversation.turns[-1].content
        self.drop_last()
        return text

    def reply(self, params: GenerationParams, answer_now: threading.Event | None = None) -> Iterator[ReplyEvent]:
        """Stream the model's reply to the conversation as it sees it (`answer_now`: see generate_reply)."""
        return generate_reply(self.model, messages(self.seen()), params, answer_now)

    def replied(self, reply: Reply) -> bool:
        self.last_stats = reply.stats
        self._calibrate(reply)
        return self.add(self._seeing(Turn.from_reply(reply)))

    def _calibrate(self, reply: Reply) -> None:
        """Where token counts are estimates, let the server's count of this reply's prompt scale them (a tenth
        more for what the next message may hold; bounded, should a server count only what it processed)."""
        counted = reply.stats.prompt_tokens
        if self.estimated and counted:
            guess = estimated_tokens(model_prompt(self.model, messages(self.seen())))
            self.scale = min(max(1.1 * counted / max(guess, 1), 0.2), 4.0)

    def interrupted(self, answer: str, reasoning: str) -> bool:
        """Keep what arrived of a reply the user stopped."""
        return self.add(self._seeing(Turn("assistant", answer, reasoning, "cancelled")))

    def _seeing(self, turn: Turn) -> Turn:
        """`turn`, with where the model's view began kept in its stats, for a resumed chat to begin there too."""
        if self.seen_from:
            turn.stats = {**(turn.stats or {}), "seen_from": self.seen_from}
        return turn

    def _pending(self) -> bool:
        """Whether the last turn is a user message still unanswered."""
        return bool(self.conversation.turns) and self.conversation.turns[-1].role == "user"

    # --- the context ------------------------------------------------------------------

    def context_used(self) -> int:
        stats = self.last_stats
        return stats.prompt_tokens + stats.reasoning_tokens + stats.answer_tokens if stats else 0

    def nearly_full(self) -> bool:
        total = self.model.info.context  # 0: a server that does not say
        return bool(total) and self.context_used() >= CONTEXT_WARNING * total

    def seen(self) -> list[Turn]:
        """The turns the model sees: a system message at the start, then those from `seen_from` on."""
        turns, head = self.conversation.turns, self._head()
        return turns[:head] + turns[max(head, self.seen_from):]

    def left_out(self) -> int:
        """Whole turns the model no longer sees (a summary's among them; those it summarised are not)."""
        turns = self.conversation.turns
        since = max((i for i in range(len(turns)) if turns[i].finish_reason == SUMMARY), default=0)
        return _whole_turns(turns[max(self._head(), since - 1):self.seen_from])

    def prompt_tokens(self, turns: list[Turn]) -> int:
        """The tokens of the prompt `turns` make, by the model's own tokenizer, or estimated generously
        where it has none (a server)."""
        prompt = model_prompt(self.model, messages(turns))
        if isinstance(prompt, str) and not self.estimated:
            try:
                return len(self.model.tokenize(prompt))
            except BackendError:  # a server: it does not tokenize, now or later
                pass
        self.estimated = True
        return math.ceil(estimated_tokens(prompt) * self.scale)

    def room(self, params: GenerationParams) -> int:
        info = self.model.info
        return reply_room(info.context, params.max_tokens, params.think_budget, info.chat.reasoning)

    def needs_room(self, params: GenerationParams) -> bool:
        """Whether the new message and room for its reply no longer fit with all the model sees."""
        context = self.model.info.context  # 0: a server that does not say; its refusal tells
        return bool(context) and self._pending() and self.prompt_tokens(self.seen()) + self.room(params) > context

    def make_room(self, params: GenerationParams) -> int:
        """Under on_full drop or compact, leave out the oldest whole turns that leave the reply to the new
        message too little room (see ponder.context_fit); how many went now. ContextOverflow, nothing
        changed, where the new message alone leaves too little."""
        context, turns, head = self.model.info.context, self.conversation.turns, self._head()
        if self.on_full == "refuse" or not self.needs_room(params):
            return 0
        first, room = max(head, self.seen_from), self.room(params)
        starts = turn_starts([turn.role for turn in turns], first, len(turns) - 1)
        start = fitting_start(starts, lambda at: self.prompt_tokens(turns[:head] + turns[at:]), context, room)
        if start is None:
            alone = self.prompt_tokens(turns[:head] + turns[-1:])
            about = "about " if self.estimated else ""
            raise ContextOverflow(f"the message makes a prompt of {about}{alone} tokens, which with room for a reply"
                                  f" ({room} tokens) does not fit the context of {context}",
                                  hint="shorten the message, or raise --ctx")
        self.seen_from = start
        return _whole_turns(turns[first:start])

    def overflowed(self) -> int:
        """The backend refused the prompt as too long, where ponder could only estimate it (a server): leave
        out the older half of the whole turns the model sees before the new message; how many (0: none left)."""
        turns, first = self.conversation.turns, max(self._head(), self.seen_from)
        if self.on_full == "refuse" or not self._pending():
            return 0
        starts = turn_starts([turn.role for turn in turns], first, len(turns) - 1)
        if len(starts) == 1:  # the new message alone: the refusal stands
            return 0
        self.seen_from = starts[len(starts) // 2]  # the older half of the len(starts) - 1 turns, rounded up
        return _whole_turns(turns[first:self.seen_from])

    def _head(self) -> int:
        """How many system messages open the conversation (the model always sees them)."""
        return next((i for i, turn in enumerate(self.conversation.turns) if turn.role != "system"),
                    len(self.conversation.turns))

    # --- a summary in place of the earlier turns (/compact) ----------------------------

    def compactable(self) -> int:
        """Whole turns the model sees before the new message (if any): what a summary would replace."""
        end = len(self.conversation.turns) - self._pending()
        return _whole_turns(self.conversation.turns[max(self._head(), self.seen_from):end])

    def summarise(self, params: GenerationParams) -> Iterator[ReplyEvent]:
        """Stream the model's summary of the turns it sees before the new message (as many of the latest as
        leave room for it), without reasoning where ponder can end it; `compacted` then puts it in their place."""
        info, seen = self.model.info, self.seen()
        asked = seen[: len(seen) - self._pending()] + [Turn("user", COMPACT_REQUEST)]
        think = 0 if info.reasoning_end else None  # (a server that cannot end the reasoning: room for it)
        room = summary_room(info.context, params.max_tokens) if think == 0 else self.room(params)
        if info.context:
            head = self._head()  # the system message, seen first
            starts = turn_starts([turn.role for turn in asked], head, len(asked) - 1)
            start = fitting_start(starts, lambda at: self.prompt_tokens(asked[:head] + asked[at:]), info.context,
                                  room)
            if start is None or start == starts[-1]:
                raise ContextOverflow(f"no turn fits the context of {info.context} beside the request for a"
                                      " summary and room for it")
            asked = asked[:head] + asked[start:]
        summary_params = replace(params, think_budget=think, max_tokens=room, constraint=None)
        return generate_reply(self.model, messages(asked), summary_params)

    def compacted(self, summary: Reply) -> int:
        """Put `summary` in place of the turns the model sees before the new message: the request and the
        summary go into the conversation (and the history) before it, the turns they replace stay there too,
        unseen. How many whole turns it replaced."""
        replaced = self.compactable()
        pending = self.take_back() if self._pending() else None
        self.seen_from = len(self.conversation.turns)
        self.add(Turn("user", COMPACT_REQUEST))
        turn = self._seeing(Turn.from_reply(summary))
        turn.finish_reason = SUMMARY
        self.add(turn)
        if pending is not None:
            self.add(Turn("user", pending))
        return replaced


def _whole_turns(turns: list[Turn]) -> int:
    return sum(turn.role == "user" for turn in turns)


def _seen_from(turns: list[Turn]) -> int:
    """Where the model's view of a stored conversation began at its last reply (the history is outside data:
    a value that names no earlier turn counts as none)."""
    for at in range(len(turns) - 1, -1, -1):
        if turns[at].role == "assistant":
            value = (turns[at].stats or {}).get("seen_from")
            if type(value) is int and 0 <= value < at:
                return value
            return at - 1 if turns[at].finish_reason == SUMMARY and at else 0
    return 0
