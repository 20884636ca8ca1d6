"""Chat's /copy (OSC 52) and /save-code: the handlers on a hand-built REPL, then /copy for real in tmux."""

from __future__ import annotations

import base64
import io
import subprocess
from types import SimpleNamespace

import pytest

from ponder.cli.chat.slash_commands import COMMANDS, HELP, run_command
from ponder.cli.views.terminal import Terminal
from ponder.history import Turn
from tests.support.cli import TmuxSession, ponder_env

# As the model writes it: a blank line first, two blocks (the second with a non-ASCII line).
ANSWER = "\n\nLike this:\n\n```python\nprint(1)\n```\n\nor in a shell:\n\n~~~bash\necho é\nls\n~~~\n"


def fake_repl(*turns: Turn, tty: bool = True):
    notes = []
    term = Terminal(io.BytesIO(), io.StringIO(), io.StringIO(), False, tty, tty, False)
    repl = SimpleNamespace(chat=SimpleNamespace(conversation=SimpleNamespace(turns=list(turns))),
                           run=SimpleNamespace(term=term), note=lambda text, style="dim": notes.append((text, style)))
    return repl, notes


def answered(content: str = ANSWER, tty: bool = True):
    return fake_repl(Turn("user", "How do I print?"), Turn("assistant", content), tty=tty)


def osc52(text: str) -> str:
    return f"\x1b]52;c;{base64.b64encode(text.encode()).decode()}\a"


@pytest.fixture(autouse=True)
def xterm(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("TMUX", raising=False)


def test_both_commands_are_in_help_and_completion():
    assert "/copy" in COMMANDS and "/save-code" in COMMANDS
    assert "\n/copy [N] " in HELP and "\n/save-code [N] FILE " in HELP


@pytest.mark.parametrize("line", ["/copy", "/save-code out.py"])
@pytest.mark.parametrize("turns", [(), (Turn("user", "Hello?"),)])
def test_no_answer_yet(line, turns, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repl, notes = fake_repl(*turns)
    run_command(repl, line)
    assert notes == [("no answer yet", "red")]
    assert repl.run.term.stdout.getvalue() == "" and not (tmp_path / "out.py").exists()


@pytest.mark.parametrize("line", ["/copy", "/save-code out.py"])
def test_an_answer_without_a_code_block(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repl, notes = answered("\n\nJust words, and `inline code`.")
    run_command(repl, line)
    assert notes == [("the last answer has no code block", "red")]
    assert not (tmp_path / "out.py").exists()


@pytest.mark.parametrize("line", ["/copy 3", "/copy 0", "/copy two", "/save-code 3 out.py"])
def test_n_out_of_range(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repl, notes = answered()
    run_command(repl, line)
    assert notes == [("N must be 1 to 2: the last answer has 2 code blocks", "red")]
    assert repl.run.term.stdout.getvalue() == "" and not (tmp_path / "out.py").exists()


def test_copy_writes_osc52_of_the_block_to_the_terminal():
    repl, notes = answered()
    run_command(repl, "/copy")
    run_command(repl, "/copy 2")
    assert repl.run.term.stdout.getvalue() == osc52("print(1)\n") + osc52("echo é\nls\n")
    assert notes == [("copied code block 1 (1 line) to the clipboard", "dim"),
                     ("copied code block 2 (2 lines) to the clipboard", "dim")]


def test_copy_under_tmux_says_what_tmux_needs(monkeypatch):
    monkeypatch.setenv("TMUX", "/tmp/tmux-1000/default,1,0")
    repl, notes = answered()
    run_command(repl, "/copy")
    assert notes == [("copied code block 1 (1 line) to the clipboard (under tmux: set -g set-clipboard on)", "dim")]


def test_copy_of_a_cut_off_block_says_so():
    repl, notes = answered("\n\n```python\nfor i in range(3):\n    print(i")
    run_command(repl, "/copy")
    assert repl.run.term.stdout.getvalue() == osc52("for i in range(3):\n    print(i")  # as far as it went
    assert notes == [("copied code block 1 (2 lines) (cut off: the answer ended inside it) to the clipboard", "dim")]


def test_copy_cannot_when_the_output_is_not_a_terminal():
    repl, notes = answered(tty=False)
    run_command(repl, "/copy")
    assert repl.run.term.stdout.getvalue() == ""
    assert notes == [("cannot copy: the output is not a terminal; /save-code FILE writes the block to a file",
                      "red")]


@pytest.mark.parametrize("term", ["linux", "dumb"])
def test_copy_cannot_on_a_terminal_without_osc52(term, monkeypatch):
    monkeypatch.setenv("TERM", term)
    repl, notes = answered()
    run_command(repl, "/copy")
    assert repl.run.term.stdout.getvalue() == ""
    assert notes == [(f"cannot copy: this terminal (TERM={term}) has no clipboard sequence (OSC 52); "
                      "/save-code FILE writes the block to a file", "red")]


def test_save_code_writes_the_exact_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    repl, notes = answered()
    run_command(repl, "/save-code first.py")
    run_command(repl, "/save-code 2 ~/second file.sh")  # N, then a name with a space, under ~
    assert (tmp_path / "first.py").read_bytes() == b"print(1)\n"
    assert (tmp_path / "second file.sh").read_bytes() == "echo é\nls\n".encode()
    assert notes == [("saved code block 1 (1 line) to first.py", "dim"),
                     (f"saved code block 2 (2 lines) to {tmp_path}/second file.sh", "dim")]


def test_save_code_refuses_an_existing_file(tmp_path):
    existing = tmp_path / "mine.py"
    existing.write_text("precious\n")
    repl, notes = answered()
    run_command(repl, f"/save-code {existing}")
    assert existing.read_text() == "precious\n"
    assert notes == [(f"{existing} exists; nothing written (give another name)", "red")]


@pytest.mark.parametrize("line", ["/save-code", "/save-code 2"])
def test_save_code_without_a_file_shows_the_usage(line):
    repl, notes = answered()
    run_command(repl, line)
    assert notes == [("usage: /save-code [N] FILE", "red")]


# --- for real: the program in a tmux pane, tmux storing the OSC 52 write as a paste buffer ----


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def test_copy_reaches_tmux_clipboard(tiny_r1, tmp_path):
    session = TmuxSession("chat", "--model", tiny_r1,
                          env=ponder_env(TERM="xterm-256color", PONDER_DATA_DIR=str(tmp_path / "data")))
    # set-clipboard is a server option (the default, "external", ignores what programs write):
    # set it for this test only, the server may be the user's own.
    before = tmux("show-options", "-sv", "set-clipboard").strip()
    tmux("set-option", "-s", "set-clipboard", "on")
    try:
        session.wait_for(r"(?m)^>$", timeout=90)
        buffers = set(tmux("list-buffers", "-F", "#{buffer_name}").split())
        session.line("Write hello world in Python.")
        session.wait_for(r'print\("hello world"\)\n>$')
        session.line("/copy")
        session.wait_for(r"copied code block 1 \(1 line\) to the clipboard")
        new = set(tmux("list-buffers", "-F", "#{buffer_name}").split()) - buffers
        assert len(new) == 1
        buffer = new.pop()
        assert tmux("show-buffer", "-b", buffer) == 'print("hello world")\n'
        tmux("delete-buffer", "-b", buffer)
        session.line(f"/save-code {tmp_path}/hello.py")
        session.wait_for(r"saved code block 1 \(1 line\) to\s+\S*hello\.py")
        assert (tmp_path / "hello.py").read_text() == 'print("hello world")\n'
    finally:
        tmux("set-option", "-s", "set-clipboard", before)
        session.close()
