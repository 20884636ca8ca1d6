"""The command line at its edges: full and closed streams, signals, and the exit codes as documented.
Real processes throughout: the shell's redirections, pipes whose reader is gone, kill, a tmux terminal."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import TmuxSession, piped_repl, ponder_env, run_ponder

LONG = "word " * 1000  # over a 256-token context


def ponder_in_shell(redirections: str, *args: str, env: dict | None = None, timeout: float = 180):
    """`ponder ARGS REDIRECTIONS` as a shell runs it (`>&-`, `<&-`, `>/dev/full`), stderr kept."""
    command = 'exec "$@" ' + redirections
    return subprocess.run(["sh", "-c", command, "sh", sys.executable, "-m", "ponder", *args],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env or ponder_env(), timeout=timeout)


def into_closed_pipe(*args: str, stdin: bytes | None = None, env: dict | None = None):
    """`ponder ARGS | true`: stdout is a pipe whose reader is gone before ponder writes a byte."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "ponder", *args], input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL, stdout=write,
                              stderr=subprocess.PIPE, env=env or ponder_env(), timeout=300)
    finally:
        os.close(write)


def clean(err: bytes) -> str:
    text = err.decode()
    assert "Traceback" not in text and "Exception ignored" not in text and "unexpected error" not in text, text
    return text


def write_tasks(path, count: int = 3) -> str:
    path.write_text("".join(json.dumps({"id": i, "prompt": "What is 12*7?"}) + "\n" for i in range(count)))
    return str(path)


@pytest.fixture
def own_settings(monkeypatch, tmp_path):
    """In-process runs: no config file, a history of the test's own, no PONDER_* variable from outside."""
    for name in [name for name in os.environ if name.startswith("PONDER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("PONDER_DATA_DIR", str(tmp_path / "data"))


# --- 1. OS errors as one line, with the right exit code -------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models"], ["history"], ["ask", "--help"]])
def test_a_full_disk_on_stdout_is_one_line_and_exit_1(args):
    result = ponder_in_shell(">/dev/full", *args)
    err = clean(result.stderr)
    assert result.returncode == 1, err
    assert err.strip() == "ponder: error: cannot write to stdout: No space left on device"


def test_ask_onto_a_full_disk_stops_with_one_line(tiny_r1):
    result = ponder_in_shell(">/dev/full", "ask", "--model", tiny_r1, "--no-log", "What is 12*7?")
    err = clean(result.stderr)
    assert result.returncode == 1 and "ponder: error: cannot write to stdout: No space left on device" in err


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models"], ["history"], ["config", "path"], ["plan"], ["backends"]])
def test_every_command_ends_quietly_with_141_when_the_reader_is_gone(args):
    result = into_closed_pipe(*args)
    assert result.returncode == 141, result.stderr
    assert result.stderr == b""  # quiet, as a program killed by SIGPIPE


def test_ask_and_batch_end_quietly_with_141_when_the_reader_is_gone(tiny_r1, tmp_path):
    asked = into_closed_pipe("ask", "--model", tiny_r1, "--no-log", "What is 12*7?")
    assert asked.returncode == 141, asked.stderr
    assert clean(asked.stderr) == "Okay, 12 times 7. 10*7 = 70 and 2*7 = 14, so 70 + 14 = 84.\n"  # the reasoning alone
    batch = into_closed_pipe("batch", "--model", tiny_r1, write_tasks(tmp_path / "tasks.jsonl"))
    assert batch.returncode == 141, batch.stderr
    clean(batch.stderr)


@pytest.mark.parametrize("error, shown", [
    (PermissionError(errno.EACCES, "Permission denied", "/etc/ponder/x"), "/etc/ponder/x: Permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), "/tmp: Is a directory"),
    (OSError(errno.EROFS, "Read-only file system", "/sys/x"), "/sys/x: Read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device"), "cannot write to stdout: No space left on device"),  # unnamed
    (OSError(errno.ENOENT, "No such file or directory"), "No such file or directory"),
])
def test_os_errors_from_any_command_are_one_line_and_exit_1(own_settings, monkeypatch, error, shown):
    """The CLI's one mapping, whatever raises the error (here reading ask's stdin)."""
    from ponder.cli.app import main
    from ponder.cli.views.terminal import Terminal

    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr("ponder.cli.commands.user_input.read_stdin", fail)
    term = Terminal(io.BytesIO(), io.StringIO(), io.StringIO(), False, False, False, False)
    with pytest.raises(SystemExit) as exit:
        main(["ask", "--model", "any.gguf"], term=term)
    assert exit.value.code == 1
    assert term.stderr.getvalue() == f"ponder: error: {shown}\n"


def test_a_bug_still_gets_its_last_resort_line(own_settings, monkeypatch):
    from ponder.cli.app import main
    from ponder.cli.views.terminal import Terminal

    def bug(*_args, **_kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("ponder.cli.commands.user_input.read_stdin", bug)
    term = Terminal(io.BytesIO(), io.StringIO(), io.StringIO(), False, False, False, False)
    with pytest.raises(SystemExit) as exit:
        main(["ask", "--model", "any.gguf"], term=term)
    assert exit.value.code == 1 and "unexpected error: ZeroDivisionError" in term.stderr.getvalue()


# --- 2. stdin or stdout closed by the shell ------------------------------------------------------------------


def test_ask_with_stdin_closed_reads_it_as_empty(tiny_r1):
    answered = ponder_in_shell("<&-", "ask", "--model", tiny_r1, "--no-log", "What is 12*7?")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.decode() == "12 × 7 = 84, so the answer is \\boxed{84}.\n"
    no_prompt = ponder_in_shell("<&-", "ask", "--model", tiny_r1)
    assert no_prompt.returncode == 2 and "ponder: error: no prompt" in clean(no_prompt.stderr)


def test_chat_with_stdin_closed_ends_at_once(tiny_r1):
    result = ponder_in_shell("<&-", "chat", "--model", tiny_r1, "--no-log")
    assert result.returncode == 0, clean(result.stderr)


@pytest.mark.parametrize("command", ["ask", "chat", "solve"])
def test_a_model_command_with_stdout_closed_says_so_before_loading(command, tmp_path):
    # The model does not exist: the closed stdout is found first, before any model is looked for.
    args = [command, "--model", str(tmp_path / "nope.gguf")] + (["What is 12*7?"] if command != "chat" else [])
    result = ponder_in_shell(">&-", *args)
    err = clean(result.stderr)
    assert result.returncode == 1 and "ponder: error: stdout is closed" in err and "nope.gguf" not in err


@pytest.mark.parametrize("args", [["--version"], ["models"], ["history"], ["--help"]])
def test_other_commands_with_stdout_closed_fail_as_cat_does(args):
    result = ponder_in_shell(">&-", *args)
    err = clean(result.stderr)
    assert result.returncode == 1 and err.strip() == "ponder: error: stdout is closed"


def test_batch_with_stdin_or_stdout_closed_is_one_line(tiny_r1, tmp_path):
    no_tasks = ponder_in_shell("<&-", "batch", "--model", tiny_r1)
    assert no_tasks.returncode == 2 and "ponder: error: no tasks" in clean(no_tasks.stderr)
    closed = ponder_in_shell(">&-", "batch", "--model", tiny_r1, write_tasks(tmp_path / "tasks.jsonl"))
    assert closed.returncode == 1 and "ponder: error: stdout is closed" in clean(closed.stderr)


def test_stderr_closed_loses_only_stderr(tiny_r1):
    result = ponder_in_shell("2>&-", "ask", "--model", tiny_r1, "--no-log", "--stats", "What is 12*7?")
    assert result.returncode == 0 and result.stdout.decode().endswith("\\boxed{84}.\n")


# --- 3. SIGTERM and SIGHUP, handled as Ctrl-C is -------------------------------------------------------------


def cursor_visible(session: TmuxSession) -> bool:
    flag = subprocess.run(["tmux", "display", "-p", "-t", session.name, "#{cursor_flag}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return flag == "1"


def history_turns(data_dir) -> list[tuple]:
    with sqlite3.connect(data_dir / "history.db") as db:
        last = db.execute("SELECT max(id) FROM conversations").fetchone()[0]
        return db.execute("SELECT role, content, reasoning, finish_reason FROM turns WHERE conversation_id = ?"
                          " ORDER BY id", (last,)).fetchall()


THINKING = ("--model-kind", "reasoning", "--max-tokens", "3000", "--seed", "1", "--on-loop", "continue")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_while_thinking_restores_the_terminal_and_keeps_what_arrived(smollm2, tmp_path, signum, code):
    data = tmp_path / "data"
    session = TmuxSession("ask", "--model", smollm2, *THINKING, "Write a long story about a dragon.",
                          env=ponder_env(TERM="xterm-256color", PONDER_DATA_DIR=str(data)))
    try:
        session.wait_for(r"Thinking… [0-9.]+ s · \d{2,} tokens", timeout=120)  # some reasoning arrived
        assert not cursor_visible(session)  # the live view hides it
        os.kill(session.pid(), signum)
        screen = session.wait_for(r"EXIT=\d+", timeout=20)
        assert f"EXIT={code}" in screen and f"ponder: stopped by {signal.Signals(signum).name}" in screen
        assert re.search(r"Thought for [0-9.]+ s · \d+ tokens \(stopped\)", screen)
        assert cursor_visible(session)
        assert "Traceback" not in screen
    finally:
        session.close()
    (user, assistant) = history_turns(data)
    assert user[1] == "Write a long story about a dragon."
    assert assistant[3] == "cancelled" and len(assistant[2].split()) > 5  # the reasoning that arrived, kept


# Stands in for the user's shell: when the terminal closes, the session leader gets SIGHUP and bash passes it on.
SHELL_ON_HANGUP = ("import signal, subprocess, sys; child = subprocess.Popen(sys.argv[2:]); "
                   "signal.signal(signal.SIGHUP, lambda *_: child.send_signal(signal.SIGHUP)); "
                   "open(sys.argv[1], 'w').write(str(child.wait()))")


def test_closing_the_terminal_keeps_what_arrived_and_exits_129(smollm2, tmp_path):
    """A real hangup: the terminal is gone, so restoring it and the closing line fail (EIO) on top of the signal."""
    import shlex

    from tests.support.cli import new_tmux_session

    data, status = tmp_path / "data", tmp_path / "status"
    env = ponder_env(TERM="xterm-256color", PONDER_DATA_DIR=str(data))
    args = [sys.executable, "-c", SHELL_ON_HANGUP, str(status), sys.executable, "-m", "ponder", "ask", "--model",
            smollm2, *THINKING, "Write a long story about a dragon."]
    session = TmuxSession.__new__(TmuxSession)  # (a pane running the stand-in shell, not tmux_command's)
    session.name = f"ponder-hangup-{time.monotonic_ns()}"
    new_tmux_session(session.name, 100, 40, "env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
                     + " " + " ".join(map(shlex.quote, args)))
    try:
        session.wait_for(r"Thinking… [0-9.]+ s · \d{2,} tokens", timeout=120)
    finally:
        session.close()  # the terminal goes away
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (status.exists() and status.read_text()):
        time.sleep(0.1)
    assert status.read_text() == "129"
    (_, assistant) = history_turns(data)
    assert assistant[3] == "cancelled" and len(assistant[2].split()) > 5


def test_sigterm_in_chat_keeps_the_partial_reply_and_ends_the_chat(smollm2, tmp_path):
    data = tmp_path / "data"
    session = TmuxSession("chat", "--model", smollm2, *THINKING,
                          env=ponder_env(TERM="xterm-256color", PONDER_DATA_DIR=str(data)))
    try:
        session.wait_for(r"(?m)^>$", timeout=120)
        session.line("Write a long story about a dragon.")
        session.wait_for(r"Thinking… [0-9.]+ s · \d{2,} tokens", timeout=60)
        os.kill(session.pid(), signal.SIGTERM)
        screen = session.wait_for(r"EXIT=\d+", timeout=20)
        assert "EXIT=143" in screen and cursor_visible(session)
    finally:
        session.close()
    assert [turn[0] for turn in history_turns(data)] == ["user", "assistant"]
    assert history_turns(data)[1][3] == "cancelled"


def test_sigterm_at_the_chat_prompt_exits_143_with_the_terminal_restored(tiny_r1, tmp_path):
    session = TmuxSession("chat", "--model", tiny_r1, env=ponder_env(TERM="xterm-256color",
                                                                       PONDER_DATA_DIR=str(tmp_path)))
    try:
        session.wait_for(r"(?m)^>$", timeout=120)
        session.keys("half a mess")
        os.kill(session.pid(), signal.SIGTERM)
        screen = session.wait_for(r"EXIT=\d+", timeout=20)
        assert "EXIT=143" in screen and "Traceback" not in screen
        assert cursor_visible(session)
        session.keys("typed after")
        session.wait_for(r"EXIT=143\s*typed after")  # keys echo again: prompt_toolkit's raw mode was left
    finally:
        session.close()


def _wait_until_mapped(pid: int, path: str, limit: float = 60) -> None:
    """Until process `pid` has the model file mapped: llama.cpp is loading it (or, at the latest, decoding)."""
    ends, path = time.monotonic() + limit, os.path.realpath(path)  # (the maps name the file, not a link to it)
    while time.monotonic() < ends:
        try:
            if path in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError("the model was never mapped")


def test_sigterm_while_loading_exits_143_at_once(smollm2):
    child = subprocess.Popen([sys.executable, "-m", "ponder", "ask", "--model", smollm2, "--ctx", "65536", "hi"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=ponder_env())
    _wait_until_mapped(child.pid, smollm2)  # the load has begun (a fixed sleep missed it on a fast machine)
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 143, err
    assert time.monotonic() - sent < 20  # not after the load (generous: a loaded CI machine)
    assert clean(err).strip().endswith("ponder: stopped by SIGTERM") and out == b""


def test_a_process_started_ignoring_sighup_keeps_ignoring_it(tiny_r1):
    """`nohup ponder ...`: the hangup is ignored, as nohup asks."""
    child = subprocess.Popen([sys.executable, "-m", "ponder", "ask", "--model", tiny_r1, "--no-log", "What is 12*7?"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=ponder_env(), preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    time.sleep(1.0)
    child.send_signal(signal.SIGHUP)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.decode() == "12 × 7 = 84, so the answer is \\boxed{84}.\n"


def test_a_signal_while_a_generation_stops_is_held_until_it_has_stopped():
    """SIGTERM (as a second Ctrl-C) while the model finishes its token: delivered after the wait."""
    import threading

    from ponder.threads import Terminated, raise_on_termination, stop_and_wait

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    raise_on_termination()
    try:
        cancel, done = threading.Event(), threading.Event()

        def model_step():
            cancel.wait()
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the main thread waits for the step
            time.sleep(0.3)
            done.set()

        threading.Thread(target=model_step).start()
        with pytest.raises(Terminated) as stopped:
            stop_and_wait(cancel, done)
        assert done.is_set() and stopped.value.signum == signal.SIGTERM
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- 4. exit codes as documented ------------------------------------------------------------------------------


def test_piped_chat_with_a_message_longer_than_the_context_exits_2(tiny_r1_random):
    result = run_ponder("chat", "--model", tiny_r1_random, "--ctx", "256", "--no-log", stdin=LONG.encode() + b"\n")
    assert result.returncode == 2, result.stderr
    assert "does not fit the context of 256" in " ".join((result.stdout.decode() + result.stderr.decode()).split())


def test_no_think_with_a_prompt_longer_than_the_context_is_the_usual_error(tiny_r1_random):
    result = run_ponder("ask", "--model", tiny_r1_random, "--ctx", "256", "--no-think", LONG)
    err = clean(result.stderr)
    assert result.returncode == 2, err
    assert "the prompt is 10" in err and "context holds 256" in err and "token budget" not in err


def test_chat_no_think_gives_a_message_too_long_back(tiny_r1_random):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.events import GenerationParams

    model = LlamaCppModel(tiny_r1_random, LoadOptions(context=256))
    try:
        repl, term = piped_repl(model, LONG.encode() + b"\n", GenerationParams(think_budget=0))
        repl.loop()
    finally:
        model.close()
    assert "input line 1: " in term.stderr.getvalue() and "the chat goes on without it" in term.stderr.getvalue()
    assert repl.chat.conversation.turns == []  # not stored as sent
    assert repl.failed == 2  # (piped: the exit status)


def test_solve_answer_only_json_without_a_box_exits_1(tiny_r1):
    result = run_ponder("solve", "--model", tiny_r1, "--answer-only", "--json", "Write hello world in Python.")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["vote"]["winner"] is None
    assert "no \\boxed{} answer" in clean(result.stderr)


@pytest.mark.parametrize("args", [[], ["--json"], ["-n", "2"], ["-n", "2", "--json"], ["-n", "2", "--answer-only"]])
def test_solve_without_any_boxed_answer_exits_1_whatever_the_form(tiny_r1, args):
    result = run_ponder("solve", "--model", tiny_r1, "--seed", "1", *args, "Write hello world in Python.")
    err = clean(result.stderr)
    assert result.returncode == 1, err
    assert "no \\boxed{} answer" in err or "no sample gave a \\boxed{} answer" in err or "no \\boxed{} final" in err


# --- 5. odd input a user may type -----------------------------------------------------------------------------


@pytest.mark.parametrize("args, code, message", [
    (["ask", ""], 2, "no prompt"),
    (["ask", "   \n\t "], 2, "no prompt"),
    (["ask", "--max-tokens", "0", "hi"], 2, "--max-tokens"),
    (["ask", "--temperature", "nan", "hi"], 2, "--temperature"),
    (["ask", "--seed", str(2**70), "hi"], 2, "--seed"),
    (["ask", "--model", "", "hi"], 1, "no model given"),  # (as no --model: `--server ''` is no server too)
    (["frobnicate"], 2, "No such command"),
])
def test_odd_command_lines_are_one_line_usage_errors(tiny_r1_random, args, code, message):
    if "--model" not in args and args[0] == "ask":
        args = [*args, "--model", tiny_r1_random]
    result = run_ponder(*args)
    err = clean(result.stderr)
    assert result.returncode == code, err
    assert message in err


def test_a_large_prompt_on_stdin_is_refused_as_too_long(tiny_r1_random):
    result = run_ponder("ask", "--model", tiny_r1_random, "--ctx", "256", stdin=b"many words " * 1_000_000)
    assert result.returncode == 2 and "context holds 256" in clean(result.stderr)


def test_solve_refuses_more_samples_than_it_can_plan(tmp_path):
    """-n 1000000000 planned a job per sample up front: gigabytes within seconds, then the kernel's OOM killer."""
    result = run_ponder("solve", "-n", "1000000000", "--model", str(tmp_path / "nope.gguf"), "What is 12*7?")
    err = clean(result.stderr)
    assert result.returncode == 2 and "--samples" in err and "1024" in err


def test_stdin_beyond_any_context_is_refused_before_it_fills_memory(tmp_path):
    huge = tmp_path / "huge.log"
    huge.write_bytes(b"a long log line\n" * (65 * 2**16))  # 65 MiB of text
    with open(huge, "rb") as stdin:
        result = subprocess.run([sys.executable, "-m", "ponder", "ask", "--model", str(tmp_path / "nope.gguf")],
                                stdin=stdin, capture_output=True, env=ponder_env(), timeout=120)
    err = clean(result.stderr)
    assert result.returncode == 2 and "stdin holds more than 64 MiB" in err
