"""Files ponder writes (ponder.files, the config file, chat's /save) and the history database, under
odd conditions a user meets: links, devices, pipes, immutable files, damaged or busy databases, ids
SQLite cannot hold. Each ends in a one-line error or does the right thing, and nothing the user had
is lost."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.cli import ponder_env, run_ponder

HUGE_ID = "99999999999999999999"  # beyond SQLite's 64-bit integers


def one_line_error(result, code: int, *needles: str) -> str:
    """The error a command ended with, checked: its exit status, `ponder: error:`, no traceback."""
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "ponder: error: " in err and "Traceback" not in err and "unexpected error" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@contextlib.contextmanager
def immutable(*paths: Path):
    """`paths` made immutable (chattr +i, which stops root too), or the test skipped where it cannot be."""
    made = []
    try:
        for path in paths:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)],
                                                                capture_output=True).returncode:
                pytest.skip("chattr +i is not available here")
            made.append(path)
        yield
    finally:
        for path in made:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def null_device(path: Path) -> Path:
    """A character device like /dev/null, of the test's own (never the machine's)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


def is_null_device(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


# --- ponder.files -----------------------------------------------------------------------------


def test_a_write_goes_through_a_link_to_its_target_and_keeps_its_mode(tmp_path):
    from ponder.files import write_text

    target = tmp_path / "dotfiles" / "settings.toml"
    target.parent.mkdir()
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    assert write_text(link, "new\n") == target
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert leftovers(tmp_path) == leftovers(target.parent) == []


def test_what_is_not_a_regular_file_is_never_replaced(tmp_path):
    from ponder.files import NotRegular, write_text

    device = null_device(tmp_path / "null")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    directory = tmp_path / "directory"
    directory.mkdir()
    link_to_device = tmp_path / "link"
    link_to_device.symlink_to(device)
    for path, kind in ((device, "a device"), (pipe, "a named pipe"), (directory, "a directory"),
                       (link_to_device, "a device")):
        with pytest.raises(NotRegular, match=kind):
            write_text(path, "x")
    assert is_null_device(device) and stat.S_ISFIFO(os.lstat(pipe).st_mode) and directory.is_dir()
    assert link_to_device.is_symlink() and leftovers(tmp_path) == []


def test_reading_takes_regular_files_only_and_never_blocks(tmp_path):
    from ponder.files import NotRegular, read_bytes

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)  # no writer: a plain open would wait forever
    for path in (pipe, Path("/dev/zero"), tmp_path):  # /dev/zero never ends
        with pytest.raises(NotRegular):
            read_bytes(path)
    (tmp_path / "f").write_bytes(b"abc")
    assert read_bytes(tmp_path / "f") == b"abc"


def test_an_immutable_file_or_directory_leaves_the_file_and_no_temporary(tmp_path):
    from ponder.files import FileError, write_text

    path = tmp_path / "config.toml"
    path.write_text("kept\n")
    with immutable(path):
        with pytest.raises(FileError, match="cannot write .*config.toml: Operation not permitted"):
            write_text(path, "new\n")
    assert path.read_text() == "kept\n" and leftovers(tmp_path) == []
    with immutable(tmp_path):
        with pytest.raises(FileError, match="Operation not permitted"):
            write_text(path, "new\n")
    assert path.read_text() == "kept\n" and leftovers(tmp_path) == []


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    """A real failure in the middle of writing: the process may write files of 1 KiB at most (EFBIG)."""
    path = tmp_path / "config.toml"
    path.write_text("kept\n")
    script = (
        "import resource, signal, sys\n"
        "from ponder.errors import PonderError\n"
        "from ponder.files import write_text\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
        "try:\n"
        f"    write_text({str(path)!r}, 'x' * 100_000)\n"
        "except PonderError as exc:\n"
        "    print(exc.message)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "File too large" in result.stdout, result.stderr
    assert path.read_text() == "kept\n" and leftovers(tmp_path) == []


def test_an_exclusive_write_never_replaces_anything(tmp_path):
    from ponder.files import FileExists, write_text

    mine = tmp_path / "mine.md"
    mine.write_text("precious\n")
    link = tmp_path / "link.md"
    link.symlink_to(mine)
    dangling = tmp_path / "dangling.md"
    dangling.symlink_to(tmp_path / "nowhere.md")
    for path in (mine, link, dangling):
        with pytest.raises(FileExists, match="exists; nothing written"):
            write_text(path, "new\n", exclusive=True)
    assert mine.read_text() == "precious\n" and not (tmp_path / "nowhere.md").exists()
    assert write_text(tmp_path / "fresh.md", "new\n", exclusive=True) == tmp_path / "fresh.md"
    assert (tmp_path / "fresh.md").read_text() == "new\n"


# --- the config file -------------------------------------------------------------------------


def config_env(path: Path, tmp_path: Path) -> dict:
    return ponder_env(PONDER_CONFIG=str(path), PONDER_DATA_DIR=str(tmp_path / "data"))


def test_config_set_and_unset_write_through_a_link_and_keep_it(tmp_path):
    target = tmp_path / "dotfiles" / "ponder.toml"
    target.parent.mkdir()
    target.write_text('model = "m.gguf"\n')
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    env = config_env(link, tmp_path)
    result = run_ponder("config", "set", "temperature", "0.5", env=env)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and target.read_text() == 'model = "m.gguf"\ntemperature = 0.5\n'
    assert run_ponder("config", "unset", "model", env=env).returncode == 0
    assert link.is_symlink() and target.read_text() == "temperature = 0.5\n"
    assert leftovers(tmp_path) == leftovers(target.parent) == []


def test_config_set_refuses_a_device_and_leaves_it(tmp_path):
    device = null_device(tmp_path / "null")
    for command in (["set", "temperature", "0.5"], ["unset", "temperature"], ["show"]):
        one_line_error(run_ponder("config", *command, env=config_env(device, tmp_path)), 2,
                       "is a device, not a regular file")
        assert is_null_device(device)


def test_dev_null_reads_as_no_config_and_is_never_replaced(tmp_path, monkeypatch):
    """PONDER_CONFIG=/dev/null, the usual way to say "no config file". (A node of the test's own
    stands in for the machine's /dev/null, which an older ponder, run as root, would replace.)"""
    from ponder import settings
    from ponder.files import NotRegular

    device = null_device(tmp_path / "null")
    monkeypatch.setattr(os, "devnull", str(device))
    assert settings.read(device).raw == {} and settings.load(device) == {}
    with pytest.raises(NotRegular, match="is a device, not a regular file: ponder will not replace it"):
        settings.edit("temperature", 0.5, device)
    assert is_null_device(device) and leftovers(tmp_path) == []


def test_a_config_file_that_never_ends_is_refused_not_read(tmp_path):
    """PONDER_CONFIG=/dev/full (or /dev/zero) reads zeros for ever: refused at once (memory capped
    here, so that a ponder that does read it fails fast)."""
    script = ("import resource, runpy, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
              "sys.argv = ['ponder', *sys.argv[1:]]\n"
              "runpy.run_module('ponder', run_name='__main__')\n")
    for device in ("/dev/full", "/dev/zero"):
        for args in (["config", "set", "temperature", "0.5"], ["config", "show"], ["ask", "hi"]):
            result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, timeout=60,
                                    stdin=subprocess.DEVNULL, env=config_env(Path(device), tmp_path))
            one_line_error(result, 2, f"{device} is a device, not a regular file")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)  # no writer: reading it would wait forever
    one_line_error(run_ponder("config", "show", env=config_env(pipe, tmp_path), timeout=30), 2, "a named pipe")


def test_config_set_keeps_comments_and_layout(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('# my defaults\nmodel = "m.gguf"  # the big one\n\n# sampling\ntemperature = 0.7\n'
                    "\n[notes]\nwhy = 'mine'\n")
    env = config_env(path, tmp_path)
    assert run_ponder("config", "set", "temperature", "0.5", env=env).returncode == 0
    assert run_ponder("config", "set", "top_p", "0.9", env=env).returncode == 0
    assert path.read_text() == ('# my defaults\nmodel = "m.gguf"  # the big one\n\n# sampling\ntemperature = 0.5\n'
                                "top_p = 0.9\n\n[notes]\nwhy = 'mine'\n")


def test_an_immutable_config_file_is_one_line_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("temperature = 0.7\n")
    with immutable(path):
        result = run_ponder("config", "set", "temperature", "0.5", env=config_env(path, tmp_path))
    one_line_error(result, 1, "cannot write", "Operation not permitted")
    assert path.read_text() == "temperature = 0.7\n" and leftovers(tmp_path) == []


def test_a_config_file_with_a_byte_order_mark_is_read_and_kept_so(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes('\ufeffreasoning = "hide"\n'.encode())
    env = config_env(path, tmp_path)
    show = run_ponder("config", "show", env=env)
    assert show.returncode == 0 and show.stdout.decode() == "reasoning = hide\n", show.stderr
    assert run_ponder("config", "set", "top_p", "0.5", env=env).returncode == 0
    assert path.read_bytes() == '\ufeffreasoning = "hide"\ntop_p = 0.5\n'.encode()


def test_a_config_file_that_is_a_directory_is_one_line(tmp_path):
    path = tmp_path / "config.toml"
    path.mkdir()
    for args in (["config", "show"], ["config", "set", "temperature", "0.5"], ["ask", "hi"]):
        one_line_error(run_ponder(*args, env=config_env(path, tmp_path)), 2, "is a directory")
    assert path.is_dir() and list(path.iterdir()) == []


# --- chat's /save ----------------------------------------------------------------------------


def saving_repl():
    from ponder.history import Turn

    notes = []
    chat = SimpleNamespace(conversation=SimpleNamespace(turns=[Turn("user", "hi"), Turn("assistant", "hello")]),
                           model=SimpleNamespace(info=SimpleNamespace(name="m")))
    return SimpleNamespace(chat=chat, note=lambda text, style="dim": notes.append((text, style))), notes


def test_save_refuses_an_existing_file_as_save_code_does(tmp_path):
    from ponder.cli.chat.slash_commands import run_command

    mine = tmp_path / "notes.md"
    mine.write_text("precious\n")
    link = tmp_path / "link.md"
    link.symlink_to(mine)
    repl, notes = saving_repl()
    for path in (mine, link):
        run_command(repl, f"/save {path}")
    assert mine.read_text() == "precious\n" and link.is_symlink()
    assert notes == [(f"{path} exists; nothing written (give another name)", "red") for path in (mine, link)]
    run_command(repl, f"/save {tmp_path / 'new.md'}")
    assert notes[-1] == (f"saved {tmp_path / 'new.md'}", "dim")
    assert "## User\n\nhi" in (tmp_path / "new.md").read_text()


def test_save_to_a_device_writes_nothing_there(tmp_path):
    from ponder.cli.chat.slash_commands import run_command

    device = null_device(tmp_path / "null")
    repl, notes = saving_repl()
    run_command(repl, f"/save {device}")
    run_command(repl, "/save /dev/full")
    assert [style for _, style in notes] == ["red", "red"] and is_null_device(device)
    assert "nothing written" in notes[1][0]


# --- the history ----------------------------------------------------------------------------


def stored_history(data: Path, conversations: int = 3) -> Path:
    from ponder.history import Conversation, History, Turn

    store = History(data / "history.db")
    for n in range(conversations):
        conversation = Conversation(model="m")
        store.add_turn(conversation, Turn("user", f"question {n}"), "chat", "llama.cpp")
        store.add_turn(conversation, Turn("assistant", f"answer {n} " * 200), "chat", "llama.cpp")
    store.close()  # the last connection folds the WAL into the database
    return data / "history.db"


def damaged(path: Path) -> bytes:
    """Every page after the first (the header and schema) overwritten in part."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for offset in range(page, len(data), page):
        data[offset:offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("args", [["history", "show", HUGE_ID], ["history", "delete", HUGE_ID],
                                  ["chat", "--resume", HUGE_ID], ["history", "show", "--", "-" + HUGE_ID],
                                  ["history", "show", "--", "-3"], ["chat", "--resume", "-3"]])
def test_an_id_sqlite_cannot_hold_is_no_conversation(tmp_path, args):
    stored_history(tmp_path)
    one_line_error(run_ponder(*args, env=ponder_env(PONDER_DATA_DIR=str(tmp_path))), 2, "no conversation")


def test_a_history_with_damaged_pages_is_one_line_and_left_as_it_is(tmp_path):
    before = damaged(stored_history(tmp_path))
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path))
    for args in (["history"], ["history", "show", "1"], ["history", "delete", "1"], ["chat", "--continue"]):
        one_line_error(run_ponder(*args, env=env), 1, "history.db cannot be used: database disk image is malformed")
    assert (tmp_path / "history.db").read_bytes() == before


def test_an_immutable_history_is_read_and_not_written(tmp_path):
    path = stored_history(tmp_path)
    before = path.read_bytes()
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path))
    with immutable(path):
        listed = run_ponder("history", env=env)
        assert listed.returncode == 0 and "question 2" in listed.stdout.decode(), listed.stderr
        one_line_error(run_ponder("history", "delete", "1", env=env), 1, "readonly database", "lsattr")
    assert path.read_bytes() == before


def test_a_data_dir_that_is_a_file_is_one_line_and_left_alone(tmp_path):
    data = tmp_path / "data"
    data.write_text("not a directory\n")
    env = ponder_env(PONDER_DATA_DIR=str(data))
    for args in (["history"], ["history", "show", "1"]):
        one_line_error(run_ponder(*args, env=env), 1, "a file is in the way", "PONDER_DATA_DIR")
    assert data.read_text() == "not a directory\n"


def test_resuming_without_a_history_says_why():
    from ponder.conversation import Chat
    from ponder.errors import UsageError

    chat = Chat(None, "chat")
    with pytest.raises(UsageError, match="which --no-log turns off"):
        chat.resume(None, last=True)
    chat.history_error = "disk I/O error"  # the history failed to open
    with pytest.raises(UsageError, match="which cannot be used: disk I/O error"):
        chat.resume(3, last=False)


def test_a_history_another_process_keeps_locked_is_one_line(tmp_path):
    """Another program holds the write lock the whole time: ponder waits its busy timeout, then says so."""
    path = stored_history(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
                               "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)",
         str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        one_line_error(run_ponder("history", "delete", "1", env=ponder_env(PONDER_DATA_DIR=str(tmp_path))), 1,
                       "database is locked", "another ponder")
    finally:
        holder.kill()
        holder.wait()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 3


def test_a_lock_held_a_moment_is_waited_for(tmp_path):
    path = stored_history(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
                               "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(2)\n"
                               "db.execute('COMMIT')",
         str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    result = run_ponder("history", "delete", "1", env=ponder_env(PONDER_DATA_DIR=str(tmp_path)))
    holder.wait()
    assert result.returncode == 0 and "deleted conversation 1" in result.stdout.decode(), result.stderr


def test_rows_of_the_wrong_type_are_read_as_text(tmp_path):
    """The history is outside data: a row edited by hand, or written by a bug, is shown, not a crash."""
    from ponder.history import History

    path = stored_history(tmp_path, conversations=1)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE turns SET content = x'ff41', stats = 'not json' WHERE id = 1")
        db.execute("UPDATE turns SET stats = '[1, 2]', finish_reason = x'01' WHERE id = 2")  # a blob in a TEXT column
        db.execute("UPDATE conversations SET model = 42, updated = 1e300")
    store = History(path)
    turns = store.load(1).turns
    assert turns[0].content == "\ufffdA" and turns[0].stats is None
    assert turns[1].stats is None and turns[1].finish_reason is None
    assert store.load(1).model == "42"
    store.close()
    listed = run_ponder("history", env=ponder_env(PONDER_DATA_DIR=str(tmp_path)))
    assert listed.returncode == 0 and "????-??-?? ??:??  chat    2 turns  \ufffdA" in listed.stdout.decode()
    shown = run_ponder("history", "show", "1", env=ponder_env(PONDER_DATA_DIR=str(tmp_path)))
    assert shown.returncode == 0 and shown.stdout.decode().startswith("# Conversation with 42\n"), shown.stderr


def test_a_failing_history_only_turns_itself_off_in_a_chat(tmp_path):
    """Every failure of the database is a HistoryError, which Chat takes as the end of the log, not the chat."""
    from ponder.conversation import Chat
    from ponder.errors import PonderError
    from ponder.history import History, HistoryError, Turn

    path = stored_history(tmp_path, conversations=0)
    chat = Chat(History(path), "chat")
    chat.model = SimpleNamespace(info=SimpleNamespace(name="m", backend="llama.cpp"))
    assert chat.add(Turn("user", "hi"))
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE turns")
    assert chat.add(Turn("assistant", "hello")) is False
    assert chat.history is None and chat.history_error == "no such table: turns"
    assert [t.content for t in chat.conversation.turns] == ["hi", "hello"]
    assert issubclass(HistoryError, PonderError)


def test_bytes_are_written_exactly(tmp_path):
    from ponder.files import write_bytes

    data = bytes(range(256)) * 4  # a plot, say: no encoding, no newline translation
    assert write_bytes(tmp_path / "plot.png", data) == tmp_path / "plot.png"
    assert (tmp_path / "plot.png").read_bytes() == data
