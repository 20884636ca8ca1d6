"""A conversation being held with a model: its turns, each kept in the history as it ends, the
message taken back when a turn fails, and how much of the context it fills.

Every front end that talks to a model uses it (chat for many turns, ask for one); no terminal here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ponder.backends.base import Model
from ponder.errors import UsageError
from ponder.events import GenerationParams, Reply, ReplyEvent
from ponder.history import Conversation, History, HistoryError, Turn
from ponder.exchange import generate_reply

CONTEXT_WARNING = 0.8  # a conversation this full of the context is worth a warning


class Chat:
    def __init__(self, history: History | None, kind: str):
        self.history = history  # None: not logged (--no-log, or the history failed)
        self.kind = kind  # "chat" or "ask", as the history records it
        self.conversation = Conversation()
        self.model: Model | None = None
        self.last_stats = None  # of the last finished reply
        self.history_error: str | None = None  # why the history turned itself off

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

    def use(self, model: Model) -> None:
        self.model = model
        self.conversation.model = self.conversation.model or model.info.name

    def clear(self) -> None:
        self.conversation = Conversation(model=self.model.info.name)
        self.last_stats = None

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
        turns = self.conversation.turns
        if not turns or turns[-1].role != "user":
            return ""
        text = turns[-1].content
        self.drop_last()
        return text

    def reply(self, params: GenerationParams, answer_now: threading.Event | None = None) -> Iterator[ReplyEvent]:
        """Stream the model's reply to the conversation as it stands (`answer_now`: see generate_reply)."""
        return generate_reply(self.model, self.conversation.messages(), params, answer_now)

    def replied(self, reply: Reply) -> bool:
        self.last_stats = reply.stats
        return self.add(Turn.from_reply(reply))

    def interrupted(self, answer: str, reasoning: str) -> bool:
        """Keep what arrived of a reply the user stopped."""
        return self.add(Turn("assistant", answer, reasoning, "cancelled"))

    # --- the context ------------------------------------------------------------------

    def context_used(self) -> int:
        stats = self.last_stats
        return stats.prompt_tokens + stats.reasoning_tokens + stats.answer_tokens if stats else 0

    def nearly_full(self) -> bool:
        total = self.model.info.context  # 0: a server that does not say
        return bool(total) and self.context_used() >= CONTEXT_WARNING * total
