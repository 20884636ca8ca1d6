"""Conversations kept in SQLite, in the user data dir: one row per turn, written as it ends.

WAL journaling and a commit per turn mean a killed process loses nothing already shown.
The directory and database are created readable by the user alone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ponder.config import DATA_DIR_ENV
from ponder.events import Message, Reply

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,              -- 'chat' or 'ask'
    model TEXT NOT NULL,
    backend TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,              -- 'user' or 'assistant'
    content TEXT NOT NULL,           -- the answer alone, for an assistant
    reasoning TEXT NOT NULL DEFAULT '',
    finish_reason TEXT,              -- 'stop', 'length', 'cancelled' (interrupted)
    stats TEXT,                      -- JSON
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns(conversation_id, id);
"""


def data_dir() -> Path:
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("ponder", appauthor=False))


@dataclass
class Turn:
    role: str
    content: str
    reasoning: str = ""
    finish_reason: str | None = None
    stats: dict | None = None
    id: int | None = None

    @property
    def interrupted(self) -> bool:
        return self.finish_reason == "cancelled"

    @classmethod
    def from_reply(cls, reply: Reply) -> Turn:
        return cls("assistant", reply.answer, reply.reasoning, reply.finish_reason, asdict(reply.stats))


@dataclass
class Conversation:
    id: int | None = None  # None until its first turn is stored
    turns: list[Turn] = field(default_factory=list)
    model: str = ""

    def messages(self) -> list[Message]:
        return [Message(t.role, t.content) for t in self.turns]  # reasoning is never sent back


@dataclass(frozen=True)
class Summary:
    id: int
    kind: str
    model: str
    updated: float
    turns: int
    title: str


class History:
    def __init__(self, path: Path | None = None):
        path = path or data_dir() / "history.db"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        old_umask = os.umask(0o077)  # the database, its WAL and shared-memory files: user only
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            from ponder.errors import PonderError

            raise PonderError(f"the history database {path} cannot be used: {exc}",
                              hint="move it aside, or run with --no-log") from exc
        finally:
            os.umask(old_umask)
        self.path = path

    def close(self) -> None:
        self._db.close()

    # --- writing ------------------------------------------------------------------

    def add_turn(self, conversation: Conversation, turn: Turn, kind: str, backend: str) -> None:
        """Store `turn` (creating the conversation on its first turn) and commit at once."""
        now = time.time()
        with self._db:
            if conversation.id is None:
                conversation.id = self._db.execute(
                    "INSERT INTO conversations(kind, model, backend, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (kind, conversation.model, backend, now, now),
                ).lastrowid
            turn.id = self._db.execute(
                "INSERT INTO turns(conversation_id, role, content, reasoning, finish_reason, stats, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation.id, turn.role, turn.content, turn.reasoning, turn.finish_reason,
                 json.dumps(turn.stats) if turn.stats else None, now),
            ).lastrowid
            self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation.id))

    def remove_turn(self, turn: Turn) -> None:
        if turn.id is not None:
            with self._db:
                self._db.execute("DELETE FROM turns WHERE id = ?", (turn.id,))

    def delete(self, conversation_id: int) -> bool:
        with self._db:
            return self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0

    # --- reading ------------------------------------------------------------------

    def load(self, conversation_id: int) -> Conversation | None:
        row = self._db.execute("SELECT model FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            return None
        turns = [
            Turn(role, content, reasoning, finish, json.loads(stats) if stats else None, turn_id)
            for turn_id, role, content, reasoning, finish, stats in self._db.execute(
                "SELECT id, role, content, reasoning, finish_reason, stats FROM turns"
                " WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        ]
        return Conversation(conversation_id, turns, row[0])

    def last_chat(self) -> int | None:
        row = self._db.execute("SELECT id FROM conversations WHERE kind = 'chat' ORDER BY updated DESC, id DESC"
                               " LIMIT 1").fetchone()
        return row[0] if row else None

    def summaries(self, limit: int = 20) -> list[Summary]:
        rows = self._db.execute(
            "SELECT c.id, c.kind, c.model, c.updated, COUNT(t.id),"
            " (SELECT content FROM turns WHERE conversation_id = c.id AND role = 'user' ORDER BY id LIMIT 1)"
            " FROM conversations c LEFT JOIN turns t ON t.conversation_id = c.id"
            " GROUP BY c.id ORDER BY c.updated DESC, c.id DESC LIMIT ?", (limit,))
        return [Summary(i, kind, model, updated, n, " ".join((first or "").split())[:60])
                for i, kind, model, updated, n, first in rows]
