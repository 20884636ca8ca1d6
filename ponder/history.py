"""Conversations kept in SQLite, in the user data dir: one row per turn, written as it ends.

WAL journaling and a transaction per turn mean a killed process loses nothing already shown,
and a failure half-way leaves nothing half-written. The schema has a version (PRAGMA
user_version) and migrations, so a later release can change the tables and keep everyone's
history. The directory and database are created readable by the user alone. Whatever goes
wrong (a damaged, busy, read-only or newer database) is a HistoryError, and the file is never
deleted or made afresh; what the rows hold is read as outside data, its types not trusted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ponder.defaults import DATA_DIR_ENV
from ponder.errors import PonderError
from ponder.events import Message, Reply


def _v1_initial(db: sqlite3.Connection) -> None:
    """The tables as ponder first made them. IF NOT EXISTS: a database from before the schema
    had a version (user_version 0) already holds them, and is adopted as it is."""
    db.execute("""
        CREATE TABLE IF NOT EXISTS conversations (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,              -- 'chat' or 'ask'
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""")
    db.execute("""
        CREATE TABLE IF NOT EXISTS turns (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL,              -- 'user' or 'assistant'
            content TEXT NOT NULL,           -- the answer alone, for an assistant
            reasoning TEXT NOT NULL DEFAULT '',
            finish_reason TEXT,              -- 'stop', 'length', 'cancelled' (by the user), 'interrupted' (the backend failed)
            stats TEXT,                      -- JSON
            created REAL NOT NULL
        )""")
    db.execute("CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns(conversation_id, id)")


# MIGRATIONS[n] takes the schema from version n to n + 1 (PRAGMA user_version). Append only, never
# edit one that has shipped: users' databases hold its result. Each runs in a transaction of its
# own with the version bump, so a failed step changes nothing. (Statements one by one: sqlite3's
# executescript would commit the open transaction first.)
MIGRATIONS = [_v1_initial]


def _version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


ROW_IDS = range(-2**63, 2**63)  # what SQLite's INTEGER holds: any other id names no row
HINT = "ponder leaves it as it is: move it aside to start a new one, or run with --no-log"


class HistoryError(PonderError):
    """The history database cannot be opened, read or written (exit 1). `reason` is the bare
    cause, for lines that already say it is about the history."""

    def __init__(self, path: Path, reason: str, hint: str = HINT):
        super().__init__(f"the history database {path} cannot be used: {reason}", hint=hint)
        self.reason = reason


def _history_error(path: Path, exc: Exception) -> HistoryError:
    """The error to show for `exc`, with the hint that fits it."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):  # PONDER_DATA_DIR names a file
        return HistoryError(path, f"cannot make the directory {path.parent}: a file is in the way",
                            hint=f"{DATA_DIR_ENV} must name a directory; or run with --no-log")
    reason = str(exc)
    if isinstance(exc, OSError):
        reason = (exc.strerror or reason) + (f" ({exc.filename})" if exc.filename else "")
    if isinstance(exc, PermissionError) or "readonly" in reason or "unable to open" in reason:
        return HistoryError(path, reason, hint="check the file and its directory: their permissions (`lsattr`"
                                               " shows an immutable one), their kind; or run with --no-log")
    if "locked" in reason:
        return HistoryError(path, reason, hint="another ponder is writing to it: try again, or run with --no-log")
    if "malformed" in reason or "not a database" in reason:
        return HistoryError(path, reason, hint="ponder will not change it: move it aside to start a new one"
                                               " (sqlite3's .recover may save what it holds), or run with --no-log")
    return HistoryError(path, reason)


def _text(value) -> str:
    """A text column as text, whatever the row holds (a database edited by hand, a bug)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _stats(value) -> dict | None:
    try:
        stats = json.loads(value) if isinstance(value, (str, bytes)) else None
    except ValueError:
        return None
    return stats if isinstance(stats, dict) else None


def data_dir() -> Path:
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("ponder", appauthor=False))


@dataclass
class Turn:
    # finish_reason is the reply's, or "summary" for a /compact summary; stats may hold "seen_from", the first
    # turn the model saw for that reply (ponder.context_fit), so a resumed chat sees the same.
    role: str
    content: str
    reasoning: str = ""
    finish_reason: str | None = None
    stats: dict | None = None
    id: int | None = None

    @property
    def interrupted(self) -> bool:
        return self.finish_reason in ("cancelled", "interrupted")

    @classmethod
    def from_reply(cls, reply: Reply) -> Turn:
        return cls("assistant", reply.answer, reply.reasoning, reply.finish_reason, asdict(reply.stats))


@dataclass
class Conversation:
    id: int | None = None  # None until its first turn is stored
    turns: list[Turn] = field(default_factory=list)
    model: str = ""

    def messages(self) -> list[Message]:
        return messages(self.turns)


def messages(turns: list[Turn]) -> list[Message]:
    """What of some turns goes to the model: reasoning is never sent back."""
    return [Message(t.role, t.content) for t in turns]


@dataclass(frozen=True)
class Summary:
    id: int
    kind: str
    model: str
    updated: float
    turns: int
    title: str


class History:
    """Every failure, opening included, is a HistoryError: the database is never deleted or made
    afresh, and a reply never depends on it (conversation.Chat turns a failing history off)."""

    def __init__(self, path: Path | None = None):
        self.path = path or data_dir() / "history.db"
        with self._errors():
            self._db = self._open(self.path)
            try:
                version = self._migrate()  # none for a newer ponder's database: it is left exactly as it is
            except BaseException:
                self.close()
                raise
        if version > len(MIGRATIONS):
            self.close()
            raise HistoryError(self.path, f"it was written by a newer version of ponder (schema {version};"
                                      f" this one knows up to {len(MIGRATIONS)})",
                           hint="upgrade ponder to use it, or run with --no-log")

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        old_umask = os.umask(0o077)  # the database, its WAL and shared-memory files: user only
        try:
            # timeout: another ponder writing a turn holds the lock a moment; wait that long for it
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
            try:
                if _version(db) <= len(MIGRATIONS):
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA foreign_keys=ON")
            except BaseException:
                db.close()
                raise
        finally:
            os.umask(old_umask)
        for name in (path.name, path.name + "-wal", path.name + "-shm"):  # made readable by an older ponder
            try:
                os.chmod(path.with_name(name), 0o600)
            except OSError:
                pass
        return db

    @contextmanager
    def _errors(self):
        """SQLite's and the OS's errors as one line that names the database."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise _history_error(self.path, exc) from exc

    def _migrate(self) -> int:
        """Apply the migrations this database lacks, in order; its version after."""
        while (version := _version(self._db)) < len(MIGRATIONS):
            with self._transaction():
                if _version(self._db) == version:  # else another ponder migrated it meanwhile: look again
                    MIGRATIONS[version](self._db)
                    self._db.execute(f"PRAGMA user_version = {version + 1}")
        return version

    @contextmanager
    def _transaction(self):
        """All the statements inside, or none. Explicit, because with isolation_level=None
        `with connection:` opens no transaction: each statement would commit on its own.
        IMMEDIATE takes the write lock up front, so a busy database fails before any change."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:  # Ctrl-C included
            if self._db.in_transaction:  # SQLite may have rolled back already (a full disk, say)
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass  # nothing is left uncommitted: each change committed on its own

    # --- writing ------------------------------------------------------------------

    def add_turn(self, conversation: Conversation, turn: Turn, kind: str, backend: str) -> None:
        """Store `turn` (creating the conversation on its first turn) and commit at once."""
        now = time.time()
        conversation_id = conversation.id
        with self._errors(), self._transaction():
            if conversation_id is None:
                conversation_id = self._db.execute(
                    "INSERT INTO conversations(kind, model, backend, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (kind, conversation.model, backend, now, now),
                ).lastrowid
            turn_id = self._db.execute(
                "INSERT INTO turns(conversation_id, role, content, reasoning, finish_reason, stats, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, turn.role, turn.content, turn.reasoning, turn.finish_reason,
                 json.dumps(turn.stats) if turn.stats else None, now),
            ).lastrowid
            self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        conversation.id, turn.id = conversation_id, turn_id  # only once committed: no ids of rolled-back rows

    def remove_turn(self, turn: Turn) -> None:
        if turn.id is not None:
            with self._errors(), self._transaction():
                self._db.execute("DELETE FROM turns WHERE id = ?", (turn.id,))

    def delete(self, conversation_id: int) -> bool:
        if conversation_id not in ROW_IDS:
            return False
        with self._errors(), self._transaction():
            return self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0

    # --- reading ------------------------------------------------------------------

    def load(self, conversation_id: int) -> Conversation | None:
        if conversation_id not in ROW_IDS:
            return None
        with self._errors():
            row = self._db.execute("SELECT model FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                return None
            rows = self._db.execute("SELECT id, role, content, reasoning, finish_reason, stats FROM turns"
                                    " WHERE conversation_id = ? ORDER BY id", (conversation_id,)).fetchall()
        turns = [Turn(_text(role), _text(content), _text(reasoning), finish if isinstance(finish, str) else None,
                      _stats(stats), turn_id)
                 for turn_id, role, content, reasoning, finish, stats in rows]
        return Conversation(conversation_id, turns, _text(row[0]))

    def last_chat(self) -> int | None:
        with self._errors():
            row = self._db.execute("SELECT id FROM conversations WHERE kind = 'chat' ORDER BY updated DESC, id DESC"
                                   " LIMIT 1").fetchone()
        return row[0] if row else None

    def summaries(self, limit: int = 20) -> list[Summary]:
        with self._errors():
            rows = self._db.execute(
                "SELECT c.id, c.kind, c.model, c.updated, COUNT(t.id),"
                " (SELECT content FROM turns WHERE conversation_id = c.id AND role = 'user' ORDER BY id LIMIT 1)"
                " FROM conversations c LEFT JOIN turns t ON t.conversation_id = c.id"
                " GROUP BY c.id ORDER BY c.updated DESC, c.id DESC LIMIT ?",
                (limit if limit in ROW_IDS else -1,)).fetchall()  # -1: no limit, as a huge one means
        return [Summary(i, _text(kind), _text(model), updated if isinstance(updated, (int, float)) else 0.0, n,
                        " ".join(_text(first).split())[:60])
                for i, kind, model, updated, n, first in rows]
