"""The history database: all-or-nothing writes, and a schema that later releases can change."""

from __future__ import annotations

import sqlite3

import pytest

from ponder.errors import PonderError
from ponder import history
from ponder.history import Conversation, History, HistoryError, Turn
from tests.support.cli import ponder_env, run_ponder

# The tables as ponder 0.1 created them, before the schema had a version: a frozen record, never
# to be changed, of what users' databases hold.
UNVERSIONED_SCHEMA = """
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


def rows(path, table: str) -> list:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def user_version(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "history.db"


def fail_on_conversation_update(path) -> None:
    """A trigger that makes add_turn's last statement fail, after its inserts have run."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TRIGGER no_update BEFORE UPDATE ON conversations"
                   " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")


def test_a_failure_inside_add_turn_writes_nothing(db_path):
    store = History(db_path)
    fail_on_conversation_update(db_path)
    conversation, turn = Conversation(model="m"), Turn("user", "hi")
    with pytest.raises(HistoryError, match="disk on fire"):
        store.add_turn(conversation, turn, "chat", "llama.cpp")
    assert rows(db_path, "conversations") == [] and rows(db_path, "turns") == []
    assert conversation.id is None and turn.id is None  # not pointing at rows that were rolled back
    assert not store._db.in_transaction  # the connection is usable for the next turn
    store.close()


def test_a_failed_turn_leaves_the_conversation_as_it_was(db_path):
    store = History(db_path)
    conversation = Conversation(model="m")
    store.add_turn(conversation, Turn("user", "hi"), "chat", "llama.cpp")
    before = rows(db_path, "conversations"), rows(db_path, "turns")
    fail_on_conversation_update(db_path)
    with pytest.raises(HistoryError):
        store.add_turn(conversation, Turn("assistant", "hello"), "chat", "llama.cpp")
    assert (rows(db_path, "conversations"), rows(db_path, "turns")) == before
    store.close()


def test_a_database_from_before_versioning_is_adopted_with_its_history(db_path):
    with sqlite3.connect(db_path) as db:
        db.executescript(UNVERSIONED_SCHEMA)
        db.execute("INSERT INTO conversations VALUES (7, 'chat', 'Old model', 'llama.cpp', 1.0, 2.0)")
        db.execute("INSERT INTO turns VALUES (1, 7, 'user', 'What is 2+2?', '', NULL, NULL, 1.0)")
        db.execute("INSERT INTO turns VALUES (2, 7, 'assistant', '4', 'Two and two.', 'stop', '{\"a\": 1}', 2.0)")
    assert user_version(db_path) == 0

    store = History(db_path)
    conversation = store.load(7)
    assert conversation.model == "Old model"
    assert [(t.role, t.content, t.reasoning, t.finish_reason, t.stats) for t in conversation.turns] == [
        ("user", "What is 2+2?", "", None, None), ("assistant", "4", "Two and two.", "stop", {"a": 1})]
    store.add_turn(conversation, Turn("user", "And 3+3?"), "chat", "llama.cpp")
    assert [t.content for t in store.load(7).turns] == ["What is 2+2?", "4", "And 3+3?"]
    store.close()
    assert user_version(db_path) == len(history.MIGRATIONS) >= 1


def test_a_new_database_is_at_the_latest_version(db_path):
    History(db_path).close()
    assert user_version(db_path) == len(history.MIGRATIONS)
    History(db_path).close()  # opening it again changes nothing
    assert user_version(db_path) == len(history.MIGRATIONS)


def test_migrations_run_in_order_each_recorded_and_a_failed_one_changes_nothing(db_path, monkeypatch):
    History(db_path).close()
    latest = len(history.MIGRATIONS)

    def add_pinned(db):
        db.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    def broken(db):
        db.execute("ALTER TABLE conversations ADD COLUMN title TEXT")
        raise sqlite3.OperationalError("a bug in a migration")

    monkeypatch.setattr(history, "MIGRATIONS", [*history.MIGRATIONS, add_pinned, broken])
    with pytest.raises(PonderError, match="a bug in a migration"):
        History(db_path)
    assert user_version(db_path) == latest + 1  # add_pinned applied and recorded; broken undone
    with sqlite3.connect(db_path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(conversations)")]
    assert "pinned" in columns and "title" not in columns


def test_a_database_from_a_newer_ponder_is_refused_untouched(db_path, tmp_path):
    History(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {len(history.MIGRATIONS) + 1}")
        db.execute("CREATE TABLE future (x)")
    before = db_path.read_bytes()
    with pytest.raises(PonderError, match="newer version of ponder") as raised:
        History(db_path)
    assert "--no-log" in raised.value.hint
    assert db_path.read_bytes() == before

    result = run_ponder("history", env=ponder_env(PONDER_DATA_DIR=str(tmp_path)))
    err = result.stderr.decode()
    assert result.returncode == 1 and "newer version of ponder" in err and "Traceback" not in err


def test_an_existing_database_is_made_private(tmp_path):
    import os
    import stat

    from ponder.history import History

    path = tmp_path / "history.db"
    History(path).close()
    os.chmod(path, 0o644)  # as an older ponder, or a copy, may have left it
    History(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
