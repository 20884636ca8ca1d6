"""Text from a model, a server or the history is data: no control sequence in it reaches a terminal,
and a live display always gives the terminal back as it found it (issue 20, "Terminal").

On a terminal each control character is shown in a visible, inert form (`^[[?1049h`); into a pipe or
a file the answer goes byte for byte as the model wrote it.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ponder.cli.views.terminal import Terminal
from ponder.events import AnswerDelta, ReasoningDelta, ReasoningDone, Reply, Stats

# What a model, a prompt or a server may slip into text, each meant to steer the terminal.
ATTACKS = {
    "alternate screen": "\x1b[?1049h",
    "hidden cursor": "\x1b[?25l",
    "title, BEL": "\x1b]0;pwned\x07",
    "title, ST": "\x1b]2;pwned\x1b\\",
    "clear screen": "\x1b[2J\x1b[H",
    "cursor up": "\x1b[5A",
    "hyperlink": "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "clipboard": "\x1b]52;c;cm0gLXJmIH4=\x07",
    "DCS": "\x1bP+q544e\x1b\\",
    "8-bit CSI": "\x9b?1049h",
    "8-bit OSC": "\x9d0;pwned\x9c",
    "carriage return": "safe\rEVIL",
    "backspace": "abc\x08\x08\x08xyz",
    "bidi override": "access\u202e nimda\u202c",
    "bidi isolate": "\u2066x\u2069",
}
HOSTILE = "\n\n".join(ATTACKS.values())  # a paragraph each, so Markdown keeps them apart
# How some of them look once made harmless.
SHOWN = ["^[[?1049h", "^[[?25l", "^[]0;pwned^G", "^[]52;c;cm0gLXJmIH4=^G", "<U+009B>?1049h", "safe^MEVIL",
         "abc^H^H^Hxyz", "access<U+202E> nimda<U+202C>"]
# Raw pieces of the attacks that must not reach a terminal. (rich itself writes ESC[…m styles, ESC[?25l/h
# around a live view, ESC[1A / ESC[2K and CR to redraw it: those are ponder's, not the model's.)
RAW = ["\x1b[?1049h", "\x1b]", "\x1bP", "\x1b[2J", "\x1b[H", "\x1b[5A", "\x07", "\x08", "\x9b", "\x9c", "\x9d",
       "\u202e", "\u202c", "\u2066", "\u2069", "safe\rEVIL"]


def raw_pieces(out: str) -> list[str]:
    return [piece for piece in RAW if piece in out]


def unstyled(out: str) -> str:
    """`out` without rich's colours and styles (ESC[…m), which split highlighted code into pieces."""
    return re.sub(r"\x1b\[[0-9;]*m", "", out)


def stats() -> Stats:
    return Stats(5, 7, 9, 0.1, 20.0, 0.4, 1.0, reasoning_end="model")


def fake_terminal(stdout_tty: bool, stderr_tty: bool, stdin=None) -> Terminal:
    return Terminal(stdin or io.BytesIO(), io.StringIO(), io.StringIO(), stdin is not None, stdout_tty, stderr_tty, True)


def events(reasoning: str, answer: str, pause: float = 0.0):
    """A reply's events, as the exchange yields them; `pause` lets the live view draw the reasoning."""
    yield ReasoningDelta(reasoning, 7)
    time.sleep(pause)
    yield ReasoningDone(0.4, 7)
    if answer:
        yield AnswerDelta(answer)
    yield Reply(reasoning, answer, "stop", stats())


# --- safe_text.visible ----------------------------------------------------------------------------


def test_visible_makes_every_control_sequence_inert():
    from ponder.cli.views.safe_text import visible

    for name, attack in ATTACKS.items():
        shown = visible(attack)
        assert not raw_pieces(shown), name
        assert all(ch in "\n\t" or (ch.isprintable() and not 0x80 <= ord(ch) <= 0x9f) for ch in shown), name
    assert visible("\x1b[?1049h") == "^[[?1049h"  # as cat -v and less show it
    assert visible("\x1b]0;t\x1b\\\x00\x7f") == "^[]0;t^[\\^@^?"
    assert visible("\x9b2J\u202e\ud800") == "<U+009B>2J<U+202E><U+D800>"
    assert visible("a\rb") == "a^Mb"


def test_visible_leaves_ordinary_text_as_it_is():
    from ponder.cli.views.safe_text import visible

    ordinary = ("Newlines\nand\ttabs, CR LF\r\n, 中文, 日本語, 한국어, emoji 👩‍👩‍👧 🏳️‍🌈 ✓, combining e\u0301 and "
                "n\u0303, Arabic مرحبا with its marks \u200f\u200e\u061c, ZWNJ می\u200cخواهم, math ∑ x² ≤ ∞, "
                "box drawing ┌─┐, a backslash \\x1b written out, and ^[ typed as text")
    assert visible(ordinary) == ordinary


def test_rich_text_does_not_make_escape_sequences_harmless():
    """Why ponder needs visible(): rich's Text drops a few C0 controls (BEL, BS, CR…) but keeps ESC,
    C1 and bidi controls, so they reach the terminal; with BEL dropped, an OSC is even left unterminated."""
    from rich.console import Console
    from rich.text import Text

    out = io.StringIO()
    Console(file=out, force_terminal=True, width=100).print(Text("a\x1b[?1049hb\x1b]0;pwned\x07c\x9b2Jd\u202ee"))
    assert "\x1b[?1049h" in out.getvalue() and "\x1b]0;pwned" in out.getvalue()
    assert "\x9b" in out.getvalue() and "\u202e" in out.getvalue()


# --- the views --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["collapse", "show"])
def test_live_view_shows_what_the_model_wrote_rather_than_obeying_it(mode):
    from ponder.cli.views.render import TerminalRenderer
    from ponder.cli.views.show_reply import show_reply

    term = fake_terminal(stdout_tty=True, stderr_tty=True)
    answer = f"Here:\n\n{HOSTILE}\n\n```sh\necho {ATTACKS['clipboard']} {ATTACKS['alternate screen']}\n```\n"
    show_reply(events(HOSTILE, answer, pause=0.4), TerminalRenderer(term, mode), term)
    out = term.stdout.getvalue()
    assert raw_pieces(out) == []
    for shown in SHOWN:
        assert shown in out, shown
    assert "echo ^[]52;c;cm0gLXJmIH4=^G ^[[?1049h" in unstyled(out)  # in the code block too


def test_reasoning_shown_when_no_answer_follows_is_made_visible_too():
    from ponder.cli.views.render import TerminalRenderer
    from ponder.cli.views.show_reply import show_reply

    term = fake_terminal(stdout_tty=True, stderr_tty=True)
    show_reply(events(HOSTILE, ""), TerminalRenderer(term, "collapse"), term)
    out = term.stdout.getvalue()
    assert raw_pieces(out) == [] and "^[[?1049h" in out and "Thought for" in out


def test_a_markdown_link_shows_where_it_goes():
    """rich would hide a link's URL under its text (an OSC 8 hyperlink): the model chose both."""
    from ponder.cli.views.render import TerminalRenderer
    from ponder.cli.views.show_reply import show_reply

    term = fake_terminal(stdout_tty=True, stderr_tty=True)
    show_reply(events("", "See [your bank](https://evil.example/login).\n"), TerminalRenderer(term), term)
    out = term.stdout.getvalue()
    assert "\x1b]8;" not in out and "https://evil.example/login" in out


def test_in_a_pipe_the_answer_is_the_models_bytes_and_reasoning_on_a_terminal_is_made_visible():
    from ponder.cli.views.render import PlainRenderer
    from ponder.cli.views.show_reply import show_reply

    answer = HOSTILE + "\n"
    term = fake_terminal(stdout_tty=False, stderr_tty=True)
    show_reply(events(HOSTILE, answer), PlainRenderer(term), term)
    assert term.stdout.getvalue() == answer  # the user's data, exactly
    assert raw_pieces(term.stderr.getvalue()) == [] and "^[[?1049h" in term.stderr.getvalue()

    term = fake_terminal(stdout_tty=False, stderr_tty=False)  # stderr into a file too: as written
    show_reply(events(HOSTILE, answer), PlainRenderer(term), term)
    assert term.stdout.getvalue() == answer and term.stderr.getvalue() == HOSTILE + "\n"


def test_ask_x_shows_code_safely_on_a_terminal_and_exactly_in_a_pipe():
    from ponder.cli.views.code_output import CodeRenderer
    from ponder.cli.views.show_reply import show_reply

    code = f"echo {ATTACKS['clipboard']} {ATTACKS['alternate screen']}\r\n"
    answer = f"Run this:\n\n```sh\n{code}```\n"
    term = fake_terminal(stdout_tty=True, stderr_tty=True)
    show_reply(events("thinking", answer), CodeRenderer(term, "collapse"), term)
    assert term.stdout.getvalue() == "echo ^[]52;c;cm0gLXJmIH4=^G ^[[?1049h\r\n"
    term = fake_terminal(stdout_tty=False, stderr_tty=False)
    show_reply(events("thinking", answer), CodeRenderer(term, "collapse"), term)
    assert term.stdout.getvalue() == code


def test_sample_board_shows_boxed_answers_safely():
    from ponder.cli.views.sample_board import SampleBoard

    term = fake_terminal(stdout_tty=False, stderr_tty=True)
    boxed = "\x1b[?1049h\x1b]0;pwned\x1b\\84"
    with SampleBoard(term, 2) as board:
        for index in range(2):
            board.event(index, Reply("", f"so \\boxed{{{boxed}}}", "stop", stats()))
    out = term.stderr.getvalue()
    assert raw_pieces(out) == []
    assert "^[[?1049h^[]0;pwned^[\\84" in out  # the rows, and the vote line under them


def test_json_escapes_what_a_terminal_would_obey_and_keeps_the_text():
    """json.dumps(ensure_ascii=False) escapes C0 (ESC too) but leaves DEL, C1 and bidi controls raw."""
    from ponder.backends.base import ModelInfo
    from ponder.cli.views.json_output import JsonlRenderer, JsonRenderer
    from ponder.cli.views.show_reply import show_reply
    from ponder.prompt import ChatFormat

    text = HOSTILE + "\x7f 中文 👩‍👩‍👧"
    info = ModelInfo("m", "m", "test", 0, 0, ChatFormat(None, reasoning=True))
    for renderer in (JsonRenderer, JsonlRenderer):
        term = fake_terminal(stdout_tty=True, stderr_tty=True)
        show_reply(events(text, text), renderer(term.stdout, info), term)
        out = term.stdout.getvalue()
        assert raw_pieces(out) == [] and "\x7f" not in out
        assert "中文 👩‍👩‍👧" in out  # ordinary text stays readable
        last = json.loads(out) if renderer is JsonRenderer else json.loads(out.splitlines()[-1])
        assert last["reasoning"] == text and last["answer"] == text  # the same text, escaped


# --- echo comes back however the live display ends ---------------------------------------------------


class FailingStream(io.StringIO):
    """A stream that fails once told to, as a full disk or a closed terminal does."""

    failing = False

    def write(self, text: str) -> int:
        if self.failing:
            raise OSError(28, "No space left on device")
        return super().write(text)


@pytest.fixture
def pty_stdin():
    """The slave side of a pseudo-terminal as stdin, echo on."""
    master, slave = os.openpty()
    stdin = os.fdopen(slave, "rb", buffering=0)
    yield stdin
    stdin.close()
    os.close(master)


def echoing(stdin) -> bool:
    return bool(termios.tcgetattr(stdin.fileno())[3] & termios.ECHO)


def test_live_view_gives_echo_back_when_stopping_it_fails(pty_stdin):
    from ponder.cli.views.render import TerminalRenderer

    term = Terminal(pty_stdin, FailingStream(), io.StringIO(), True, True, True, True)
    renderer = TerminalRenderer(term)
    assert not echoing(pty_stdin)  # keys do not echo into the live view
    renderer.answer("partial")
    term.stdout.failing = True
    with pytest.raises(OSError):
        renderer.finish(None)
    assert echoing(pty_stdin)


def test_sample_board_gives_echo_back_when_stopping_it_fails(pty_stdin):
    from ponder.cli.views.sample_board import SampleBoard

    term = Terminal(pty_stdin, io.StringIO(), FailingStream(), True, False, True, True)
    with pytest.raises(OSError):
        with SampleBoard(term, 2):
            assert not echoing(pty_stdin)
            term.stderr.failing = True
    assert echoing(pty_stdin)


# --- the real ponder, on a real terminal ------------------------------------------------------------


class ScriptedServer:
    """An OpenAI-compatible server on loopback that streams a fixed reasoning (in
    `delta.reasoning_content`, as SGLang and llama-server do) and answer, for every choice asked for."""

    def __init__(self, reasoning: str, answer: str):
        script = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "fake-r1", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    return self._json(404, {"error": {"message": "not found"}})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                n = body.get("n", 1)
                pieces = [{"reasoning_content": part} for part in _halves(script.reasoning)]
                pieces += [{"content": part} for part in _halves(script.answer)]
                for delta in pieces:
                    self._event({"choices": [{"index": i, "delta": delta, "finish_reason": None} for i in range(n)]})
                self._event({"choices": [{"index": i, "delta": {}, "finish_reason": "stop"} for i in range(n)]})
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, payload):
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.reasoning, self.answer = reasoning, answer
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _halves(text: str) -> list[str]:
    return [part for part in (text[: len(text) // 2], text[len(text) // 2 :]) if part]


@pytest.fixture
def hostile_server():
    server = ScriptedServer(HOSTILE, f"The answer:\n\n{HOSTILE}\n\nso \\boxed{{{ATTACKS['alternate screen']}84}}\n")
    yield server
    server.close()


@pytest.fixture
def user_env(tmp_path):
    from tests.support.cli import ponder_env

    return ponder_env(TERM="xterm-256color", PONDER_DATA_DIR=str(tmp_path / "data"),
                      PONDER_CONFIG=str(tmp_path / "config.toml"), HOME=str(tmp_path))


def in_tmux(shell_command: str, env: dict, cols: int = 120, rows: int = 60) -> tuple[str, str]:
    """Run `shell_command` (its words already quoted) in a tmux pane with exactly `env`; once it has
    finished: (the screen, "alternate_on cursor_flag pane_title" of the pane)."""
    import shlex
    import shutil

    from tests.support.cli import new_tmux_session

    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed")
    name = f"ponder-escapes-{time.monotonic_ns()}"
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    # The pane's own shell prints EXIT after ponder has gone: what the terminal is left in is ponder's doing.
    new_tmux_session(name, cols, rows, f"env -i {assignments} sh -c {shlex.quote(shell_command)}; "
                                       "printf 'EXIT=%s\\n' $?; sleep 60")
    try:
        deadline = time.monotonic() + 90
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-", "-t", name],
                                    capture_output=True, text=True).stdout
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("ponder did not finish:\n" + screen)
        state = subprocess.run(["tmux", "display", "-p", "-t", name, "#{alternate_on} #{cursor_flag} #{pane_title}"],
                               capture_output=True, text=True).stdout.strip()
        return screen, state
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def ponder_words(*args: str) -> str:
    import shlex
    import sys

    return " ".join(shlex.quote(word) for word in [sys.executable, "-m", "ponder", *args])


def assert_terminal_untouched(screen: str, state: str) -> None:
    alternate, cursor, *title = state.split(" ", 2)
    assert (alternate, cursor) == ("0", "1"), f"alternate screen {alternate}, cursor shown {cursor}:\n{screen}"
    assert "pwned" not in " ".join(title)
    assert "EXIT=0" in screen, screen


def test_ask_on_a_terminal_then_history_show_what_the_server_sent_and_obey_none_of_it(hostile_server, user_env):
    prompt = "Hello \x1b]2;pwned\x07 there"  # a prompt can hold them too: history's titles show it
    screen, state = in_tmux(ponder_words("ask", "--server", hostile_server.url, "--show-reasoning", prompt), user_env)
    assert_terminal_untouched(screen, state)
    assert "^[[?1049h" in screen and "^[]52;c;cm0gLXJmIH4=^G" in screen

    screen, state = in_tmux(ponder_words("history"), user_env)
    assert_terminal_untouched(screen, state)
    assert "Hello ^[]2;pwned^G there" in screen
    conversation = re.search(r"^\s*(\d+)\s", screen, re.M).group(1)

    screen, state = in_tmux(ponder_words("history", "show", conversation), user_env)
    assert_terminal_untouched(screen, state)
    assert "^[[?1049h" in screen and "safe^MEVIL" in screen


def test_history_and_history_show_of_a_stored_conversation_obey_none_of_it(user_env, tmp_path):
    """A conversation as the history holds it, whatever wrote it: titles, model name, reasoning, answer."""
    from ponder.history import Conversation, History, Turn

    history = History(tmp_path / "data" / "history.db")
    conversation = Conversation(model="model\x1b]2;pwned\x07")
    for turn in (Turn("user", "Hi \x1b[?1049h\x1b]0;pwned\x07 there"), Turn("assistant", HOSTILE, reasoning=HOSTILE)):
        history.add_turn(conversation, turn, "chat", "test")
    history.close()

    screen, state = in_tmux(ponder_words("history"), user_env)
    assert_terminal_untouched(screen, state)
    assert "Hi ^[[?1049h^[]0;pwned^G there" in screen

    screen, state = in_tmux(ponder_words("history", "show", str(conversation.id)), user_env)
    assert_terminal_untouched(screen, state)
    assert "model^[]2;pwned^G" in screen and "^[]52;c;cm0gLXJmIH4=^G" in screen and "safe^MEVIL" in screen


def test_reasoning_on_a_terminal_is_shown_safely_while_the_piped_answer_keeps_its_bytes(hostile_server, user_env,
                                                                                      tmp_path):
    out = tmp_path / "answer.txt"
    command = ponder_words("ask", "--server", hostile_server.url, "--no-log", "q") + f" > {out}"
    screen, state = in_tmux(command, user_env)
    assert_terminal_untouched(screen, state)
    assert "^[[?1049h" in screen  # the reasoning, on stderr: the pane
    assert out.read_bytes() == hostile_server.answer.encode()  # stdout: exactly what the model wrote

    saved = tmp_path / "show.md"  # history show into a file: as stored, too
    screen, state = in_tmux(ponder_words("ask", "--server", hostile_server.url, "q") + " >/dev/null; " +
                            ponder_words("history", "show", "1") + f" > {saved}", user_env)
    assert HOSTILE.encode() in saved.read_bytes()


def test_the_sample_board_shows_answers_safely(hostile_server, user_env, tmp_path):
    command = ponder_words("solve", "--server", hostile_server.url, "--samples", "2", "q") + f" > {tmp_path / 'out'}"
    screen, state = in_tmux(command, user_env)
    assert_terminal_untouched(screen, state)
    assert "^[[?1049h84 ×2" in screen  # the board's vote line, on stderr
    assert (tmp_path / "out").read_bytes().startswith(b"Answer: \x1b[?1049h84\n")  # stdout: the data


def test_chat_shows_the_reply_safely(hostile_server, user_env):
    from tests.support.cli import TmuxSession

    chat = TmuxSession("chat", "--server", hostile_server.url, env=user_env, cols=120, rows=60)
    try:
        chat.wait_for(r">")
        chat.line("hello")
        chat.wait_for(r"so .*84")
        screen = chat.screen()
        assert "^[[?1049h" in screen
        state = subprocess.run(["tmux", "display", "-p", "-t", chat.name, "#{alternate_on} #{pane_title}"],
                               capture_output=True, text=True).stdout.strip()
        assert state.startswith("0 ") and "pwned" not in state, state
        chat.line("/exit")
        chat.wait_for("EXIT=0")
    finally:
        chat.close()


def test_a_view_failing_as_it_stops_does_not_hide_why_the_reply_stopped():
    """Ctrl-C (or any error) while streaming, then the view's last write fails on a full or closed
    stream: the command still ends for the first reason (130 for Ctrl-C), not with the write's error."""
    from ponder.cli.views.render import PlainRenderer
    from ponder.cli.views.show_reply import show_reply

    def interrupted():
        yield AnswerDelta("partial")
        term.stdout.failing = True
        raise KeyboardInterrupt

    term = Terminal(io.BytesIO(), FailingStream(), io.StringIO(), False, False, False, True)
    with pytest.raises(KeyboardInterrupt):
        show_reply(interrupted(), PlainRenderer(term), term)


def test_history_limit_must_be_at_least_one(user_env):
    """`-n 0` listed nothing and said there were no conversations; `-n -1` listed them all."""
    from tests.support.cli import run_ponder

    for limit in ("0", "-1"):
        result = run_ponder("history", "-n", limit, env=user_env)
        assert result.returncode == 2 and b"--limit" in result.stderr and result.stdout == b""
