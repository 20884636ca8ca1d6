"""`ponder chat` driven in a real terminal (tmux) with real models, as a person would use it."""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest

from tests.support.cli import TmuxSession, piped_repl, ponder_env, run_ponder

PROMPT = r"(?m)^>$"  # an empty input line: the REPL waits for the next message


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def chat(data_dir):
    sessions = []

    def start(*args: str) -> TmuxSession:
        session = TmuxSession("chat", *args, env=ponder_env(TERM="xterm-256color", PONDER_DATA_DIR=str(data_dir)))
        session.wait_for(PROMPT, timeout=90)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def turns(data_dir, conversation_id=None):
    with sqlite3.connect(data_dir / "history.db") as db:
        if conversation_id is None:
            conversation_id = db.execute("SELECT max(id) FROM conversations").fetchone()[0]
        return db.execute("SELECT role, content, reasoning, finish_reason FROM turns WHERE conversation_id = ?"
                          " ORDER BY id", (conversation_id,)).fetchall()


def test_question_shows_reasoning_summary_then_answer(chat, tiny_r1, data_dir):
    session = chat("--model", tiny_r1)
    session.line("What is 12*7?")
    screen = session.wait_for(r"Thought for [0-9.]+ s · 42 tokens\n12 × 7 = 84, so the answer is 84\.\n>$")
    assert "<think>" not in screen and "10*7" not in screen  # reasoning collapsed to its summary
    assert turns(data_dir) == [
        ("user", "What is 12*7?", "", None),
        ("assistant", "\n\n12 × 7 = 84, so the answer is \\boxed{84}.",  # as written, for later turns
         "Okay, 12 times 7. 10*7 = 70 and 2*7 = 14, so 70 + 14 = 84.\n", "stop"),
    ]
    assert (os.stat(data_dir / "history.db").st_mode & 0o777) == 0o600
    assert (os.stat(data_dir).st_mode & 0o777) == 0o700


def test_ctrl_c_mid_reply_keeps_the_partial_answer(chat, smollm2, data_dir):
    session = chat("--model", smollm2, "--seed", "4")
    session.line("Write a very long story about a dragon.")
    # a line of the answer itself (the status line "⠋ Generating… 0.4 s · 9 tokens" has words too)
    session.wait_for(r"(?m)^(?!.*Generating)(\S+ ){12}", timeout=60,
                     after=session.wait_for(r"dragon\.").index("dragon.") + 8)
    session.keys("C-c")
    session.wait_for(r"\[interrupted\]\n>$", timeout=10)
    (_, question, _, _), (role, answer, _, finish) = turns(data_dir)
    assert question == "Write a very long story about a dragon."
    assert role == "assistant" and finish == "cancelled" and len(answer.split()) >= 10
    session.line("/model")  # the REPL goes on
    session.wait_for(r"llama\.cpp · context 8192 tokens")
    session.keys("C-d")
    session.wait_for("EXIT=0")


def test_slash_commands_and_their_errors(chat, tiny_r1, tmp_path):
    session = chat("--model", tiny_r1)
    for command, expected in [
        ("/help", r"/think show\|collapse\|hide"),
        ("/bogus", r"unknown command /bogus; the commands are /help"),
        ("/stats", r"no finished reply yet"),
        ("/retry", r"nothing to retry yet"),
        ("/save", r"nothing to save yet"),
        ("/set temperature hot", r"temperature must be a number, 0 or more, not 'hot'"),
        ("/set top_p 2", r"top_p must be a number in \(0, 1\], not '2'"),
        ("/set colour blue", r"usage: /set NAME VALUE"),
        ("/think loud", r"/think takes one of show, collapse, hide"),
        ("/set temperature 0", r"temperature = 0\.0"),
        ("/think show", r"reasoning: show"),
    ]:
        start = len(session.screen())
        session.line(command)
        session.wait_for(expected + r"[^\n]*\n(.*\n)*>$", after=start)
    session.line("What is 2+2?")
    session.wait_for(r"Two plus two\. 2 \+ 2 = 4\.\n.*Thought for .*\n.*The answer is 4\.\n>$")
    for command, expected in [
        # (any space may be a line break: the line's varying figures move where it wraps)
        ("/stats", r"prompt\s+12\s+tokens\s+·\s+reasoning\s+14\s+tokens\s+·\s+answer\s+9\s+tokens\s[\s\S]*\scontext\s+35"
                   r"\s+of\s+32768\s+tokens"),
        ("/retry", r"The answer is 4\.\n>$"),
        ("/history", r"\s+1\s+\S+ \S+\s+chat\s+2 turns\s+What is 2\+2\?"),
        (f"/save {tmp_path}/talk.md", r"saved .*talk\.md"),
        ("/clear", r"new conversation"),
    ]:
        start = len(session.screen())
        session.line(command)
        session.wait_for(expected, after=start)
    saved = (tmp_path / "talk.md").read_text()
    assert "## User\n\nWhat is 2+2?" in saved
    assert "<details>\n<summary>Reasoning</summary>\n\nTwo plus two. 2 + 2 = 4.\n\n</details>" in saved
    assert "The answer is \\boxed{4}." in saved
    session.line("/exit")
    session.wait_for("EXIT=0")


def test_tab_completes_slash_commands(chat, tiny_r1):
    session = chat("--model", tiny_r1)
    session.keys("/mo", "Tab")
    session.wait_for(r"> /model$")  # completed (completions are computed in the background)
    session.keys("Enter")
    session.wait_for(r"Tiny R1 .* · llama\.cpp · context")


def test_multi_line_input(chat, tiny_r1, data_dir):
    session = chat("--model", tiny_r1, "--max-tokens", "3")
    session.keys("first line", "Escape", "Enter", "second line", "Enter")
    session.wait_for(r"second line\n[\s\S]*token limit[\s\S]*>$")
    for line, shown in [('"""', r'> """\n…$'), ("block one", r"… block one\n…$"), ("block two", r"… block two\n…$")]:
        session.line(line)
        session.wait_for(shown)
    session.line('"""')
    session.wait_for(r'… """\n[\s\S]*token limit[\s\S]*>$')
    asked = [content for role, content, _, _ in turns(data_dir) if role == "user"]
    assert asked == ["first line\nsecond line", "block one\nblock two"]


def test_exit_then_continue_resumes_the_conversation(chat, tiny_r1, data_dir):
    session = chat("--model", tiny_r1)
    session.line("What is 12*7?")
    session.wait_for(r"answer is 84\.\n>$")
    session.keys("C-d")
    session.wait_for("EXIT=0")

    resumed = chat("--model", tiny_r1, "--continue")
    screen = resumed.screen()
    assert "> What is 12*7?" in screen and "12 × 7 = 84" in screen  # the conversation so far, shown again
    resumed.line("/history")
    resumed.wait_for(r"chat\s+2 turns\s+What is 12\*7\?")
    resumed.line("What is 2+2?")
    resumed.wait_for(r"Thought for [\s\S]*>$", after=len(screen))
    assert [role for role, *_ in turns(data_dir)] == ["user", "assistant", "user", "assistant"]

    result = run_ponder("chat", "--model", tiny_r1, "--resume", "999", env=ponder_env(PONDER_DATA_DIR=str(data_dir)))
    assert result.returncode == 2 and b"no conversation 999" in result.stderr


def test_history_survives_sigkill_during_a_reply(chat, smollm2, data_dir):
    session = chat("--model", smollm2, "--seed", "4")
    session.line("/set max_tokens 8")
    session.line("Say hi.")
    session.wait_for(r"stopped at the token limit[\s\S]*>$")
    session.line("/set max_tokens 5000")
    session.line("Write a very long story about a dragon.")
    session.wait_for(r"(?m)^(?!.*Generating)(\S+ ){8}", after=session.wait_for(r"dragon\.").index("dragon.") + 8)
    os.kill(session.pid(), signal.SIGKILL)
    session.wait_for("EXIT=137")
    rows = turns(data_dir)
    assert [(role, content) for role, content, *_ in rows][:1] == [("user", "Say hi.")]
    assert rows[1][0] == "assistant" and rows[1][3] == "length" and rows[1][1]
    assert rows[2][:2] == ("user", "Write a very long story about a dragon.")
    shown = run_ponder("history", "show", "1", env=ponder_env(PONDER_DATA_DIR=str(data_dir)))
    assert shown.returncode == 0 and b"Write a very long story about a dragon." in shown.stdout


def test_turn_two_sends_no_reasoning_from_turn_one(tiny_r1):
    """Drive the REPL with piped input and a real model; look at every prompt it sent."""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    model = LlamaCppModel(tiny_r1, LoadOptions(context=2048))
    sent = []
    real_stream = model.stream

    def recording_stream(prompt, params, cancel=None):
        sent.append(model.tokenize(prompt))
        return real_stream(prompt, params, cancel)

    model.stream = recording_stream
    repl, term = piped_repl(model, b"What is 12*7?\nWhat is 2+2?\n")
    repl.loop()
    model.close()

    probe = LlamaCppModel(tiny_r1, LoadOptions(context=512))
    reasoning = probe._tokenize("10*7 = 70 and 2*7 = 14", add_bos=False)
    answer_alone = probe._tokenize("12 × 7 = 84, so the answer is \\boxed{84}.<｜end▁of▁sentence｜>", add_bos=False)
    probe.close()
    assert len(sent) == 2
    turn_one, turn_two = sent
    assert turn_two[: len(turn_one) - 2] == turn_one[:-2]  # turn one's prompt, less its "<think>\n"
    assert not _contains(turn_two, reasoning)
    assert 151649 not in turn_two  # </think>
    assert _contains(turn_two, answer_alone)  # the answer alone went back
    assert term.stdout.getvalue().startswith("12 × 7 = 84, so the answer is \\boxed{84}.\n")  # piped: answers alone


def _contains(haystack: list[int], needle: list[int]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def test_context_nearly_full_warns_and_a_message_that_does_not_fit_is_kept(chat, tiny_r1_mlx, data_dir):
    session = chat("--model", tiny_r1_mlx, "--ctx", "90", "--on-full", "refuse")  # MLX: the context is exactly --ctx (llama.cpp pads it)
    session.line("What is 12*7?")
    session.wait_for(r"answer is 84\.\nwarning: the context is 84% full \(76 of 90 tokens\); /clear starts a new "
                     r"conversation\n>$")
    long_message = ("Please consider this rather long follow-up message " * 10).strip()
    session.line(long_message)
    screen = session.wait_for(r"the prompt is \d+ tokens, but the context holds 90\. Your message is back in the input "
                              r"line; /clear\s+starts a new conversation\.\n> Please consider this")
    offered_again = screen.split("starts a new conversation.\n> ")[-1]
    assert "".join(offered_again.split()) == "".join(long_message.split())  # all of it, in the input line
    assert [role for role, *_ in turns(data_dir)] == ["user", "assistant"]  # and not stored as sent
    session.keys("C-u")
    session.line("/clear")
    session.line("What is 2+2?")
    session.wait_for(r"The answer is 4\.\n>$")


def test_bare_ponder_on_a_terminal_opens_the_chat(tiny_r1, data_dir):
    session = TmuxSession(env=ponder_env(TERM="xterm-256color", PONDER_MODEL=tiny_r1, PONDER_DATA_DIR=str(data_dir)))
    try:
        session.wait_for(r"ponder chat · Tiny R1 [\s\S]*>$", timeout=90)
        session.keys("C-d")
        session.wait_for("EXIT=0")
    finally:
        session.close()
    plain = run_ponder()  # not a terminal: the usage, as before
    assert plain.returncode == 2 and plain.stderr.startswith(b"Usage: ponder")


def test_an_interrupted_reply_is_shown_exactly_once(chat, smollm2, data_dir):
    """What the screen shows of an interrupted reply is exactly what the history keeps."""
    import time

    session = chat("--model", smollm2, "--seed", "4")
    session.line("Write a very long story about a dragon.")
    session.wait_for(r"(?m)^(?!.*Generating)(\S+ ){5}", after=session.wait_for(r"dragon\.").index("dragon.") + 8)
    time.sleep(2)
    session.keys("C-c")
    screen = session.wait_for(r"\[interrupted\]\n>$", timeout=10)
    shown = screen.split("Write a very long story about a dragon.\n", 1)[1].rsplit("[interrupted]", 1)[0]
    stored = turns(data_dir)[1][1]
    assert shown.split() == stored.split()


def test_two_quick_ctrl_c_then_a_new_turn_answers_as_a_fresh_run(chat, smollm2, data_dir):
    """The second Ctrl-C lands while the first is still stopping the model (a long prompt is being
    processed, 512 tokens at a time): the REPL must wait for the model to be idle, leave no live
    view drawing, and the next turn must run alone on a consistent cache."""
    import time

    session = chat("--model", smollm2, "--temperature", "0")
    session.line("Summarise this. " + "The quick brown fox jumps over the lazy dog, again and again. " * 150)
    session.wait_for(r"Generating…")  # the prompt is being processed
    session.keys("C-c")
    time.sleep(0.05)
    session.keys("C-c")
    session.wait_for(r"\[interrupted\]\n>$", timeout=30)
    time.sleep(1)  # a live view left running would repaint its status line meanwhile
    after_stop = session.screen().rsplit("[interrupted]", 1)[1]
    assert after_stop == "\n>", after_stop
    assert turns(data_dir)[-1][3] == "cancelled"

    session.line("/clear")
    session.line("What is 2+2?")
    session.wait_for(r"What is 2\+2\?\n[\s\S]+\n>$")
    fresh = run_ponder("ask", "--model", smollm2, "--temperature", "0", "--no-log", "What is 2+2?")
    assert fresh.returncode == 0, fresh.stderr
    assert turns(data_dir)[-1][1].strip() == fresh.stdout.decode().strip()


def test_a_failed_turn_is_reported_and_the_chat_goes_on(tiny_r1):
    """A runtime failure in one turn (here the backend raising mid-reply) ends that turn only."""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.errors import BackendError

    model = LlamaCppModel(tiny_r1, LoadOptions(context=2048))
    real_stream = model.stream
    calls = []

    def failing_once(prompt, params, cancel=None):
        calls.append(prompt)
        if len(calls) == 1:
            raise BackendError("llama_decode failed (-3)")
        return real_stream(prompt, params, cancel)

    model.stream = failing_once
    repl, term = piped_repl(model, b"What is 2+2?\nWhat is 12*7?\n")
    repl.loop()
    model.close()
    output = term.stdout.getvalue()
    # Piped: the error on stderr, naming the line of the message (there is no input line to give it back to).
    said = term.stderr.getvalue()  # (the reasoning too, in a pipe)
    assert said.startswith("ponder: error: input line 1: llama_decode failed (-3); the chat goes on without it.\n")
    assert output.rstrip() == "12 × 7 = 84, so the answer is \\boxed{84}."
    assert [t.role for t in repl.chat.conversation.turns] == ["user", "assistant"]  # the failed turn is not kept
    assert repl.chat.conversation.turns[0].content == "What is 12*7?"


def test_a_closed_stdout_ends_the_chat_as_it_ends_ask(tiny_r1):
    """`ponder chat < questions | head -c 3`: the first reply hits the closed pipe; the chat stops (141)."""
    import subprocess
    import sys

    chat = subprocess.Popen([sys.executable, "-m", "ponder", "chat", "--model", tiny_r1, "--no-log"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ponder_env())
    chat.stdin.write(b"What is 12*7?\n" * 20)
    chat.stdin.close()
    assert chat.stdout.read(3)
    chat.stdout.close()
    assert chat.wait(timeout=120) == 141
    assert b"Traceback" not in chat.stderr.read()


def test_a_history_that_fails_mid_chat_only_warns(tiny_r1, tmp_path):
    """The database breaks after the first turn (here its turns table is gone): the chat goes on."""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.history import History

    model = LlamaCppModel(tiny_r1, LoadOptions(context=2048))
    repl, term = piped_repl(model, b"What is 12*7?\n/history\n/clear\nWhat is 2+2?\n")
    repl.chat.history = History(tmp_path / "history.db")
    real_replied = repl.chat.replied

    def replied_then_break(reply):
        stored = real_replied(reply)
        with sqlite3.connect(tmp_path / "history.db") as db:
            db.execute("DROP TABLE IF EXISTS turns")
        return stored

    repl.chat.replied = replied_then_break
    repl.loop()
    model.close()
    output, said = term.stdout.getvalue(), term.stderr.getvalue()  # (piped: ponder's own lines on stderr)
    assert said.count("ponder: warning: history is off from here on: no such table: turns") == 1
    assert "ponder: error: input line 2: cannot read the history: no such table: turns" in said  # the chat goes on
    assert "The answer is \\boxed{4}." in output and "history" not in output
    assert [t.role for t in repl.chat.conversation.turns] == ["user", "assistant"]
