"""What a new user's trial found at the edges: Ctrl-C while the prompt cache writes at exit, text that is not
UTF-8, a full stdout named as such, a piped chat's notes on stderr, the prompt cache leaving other files
alone, choice options in any case, and a prompt cache folder that cannot be used said so. Real processes
and models throughout; a model path that does not exist where the point is that nothing loads."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ponder import prompt_cache
from ponder.prompt_cache import MIN_TOKENS, PromptCache
from tests.support.cli import piped_repl, ponder_env, run_ponder

NO_MODEL = "/nonexistent/model.gguf"  # anything checked before loading never gets to it
DOCUMENT = " ".join(f"{n}. The ferry leaves the harbour at dawn and returns at dusk." for n in range(1, 12))


def entries(root: Path) -> list[Path]:
    return sorted(root.glob(f"*/*{prompt_cache.SUFFIX}"))


def run_bytes(*args: bytes | str, stdin: bytes | None = None, env: dict | None = None):
    """`ponder ARGS`, where an argument may be bytes that are not UTF-8 (as a shell passes $'caf\\xe9')."""
    return subprocess.run([sys.executable, "-m", "ponder", *args], input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True,
                          env=env or ponder_env(), timeout=120)


# --- 1. Ctrl-C while the prompt cache entry is written at exit --------------------------------------------------

# `ponder ask`, its prompt cache writes slowed down and announced: the signal arrives while the entry is written.
SLOW_SAVE = """
import sys, time
from ponder import prompt_cache
real = prompt_cache.PromptCache.save
def save(self, tokens, payload):
    print("[saving]", file=sys.stderr, flush=True)
    time.sleep(3)
    return real(self, tokens, payload)
prompt_cache.PromptCache.save = save
sys.argv[0] = "ponder"
from ponder.__main__ import main
main()
"""


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_while_the_entry_is_written_at_exit_ends_130_with_the_entry_whole(smollm2, tmp_path, signals):
    root = tmp_path / "cache"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, "ask", "--model", smollm2, "--max-tokens", "3", "--no-log", DOCUMENT],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=ponder_env(PONDER_CACHE_DIR=str(root)))
    err = b""
    try:
        # Once the entry is being written and the command has said its last line (the token limit's warning):
        # ponder is then on its way out, as the trial's Ctrl-C found it.
        while b"[saving]" not in err or b"stopped after 3 tokens" not in err:
            line = process.stderr.readline()
            assert line, f"ponder ended before saving: {err!r}"
            err += line
        time.sleep(0.5)
        for _ in range(signals):
            process.send_signal(signal.SIGINT)
            time.sleep(0.2)
        out, rest = process.communicate(timeout=120)
    finally:
        process.kill()
    err = (err + rest).decode()
    assert process.returncode == 130, err
    assert "ponder: interrupted" in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert out.strip()  # the reply came first
    [entry] = entries(root)
    assert not list(root.glob("*/.writing-*"))
    with open(entry, "rb") as file:
        header = prompt_cache._read_header(file)
        assert entry.stat().st_size == file.tell() + 4 * header["tokens"] + header["bytes"]  # whole


# --- 2. Text that is not UTF-8: one usage line before a model loads ---------------------------------------------


@pytest.mark.parametrize("args, said", [
    ([b"ask", b"caf\xe9"], "the prompt argument is not UTF-8 text: it holds the byte 0xE9 at character 4"),
    ([b"solve", b"\xff 1+1"], "the prompt argument is not UTF-8 text: it holds the byte 0xFF at character 1"),
    ([b"ask", b"hi", b"--choice", b"yes,n\xf6"], "--choice is not UTF-8 text"),
    ([b"ask", b"hi", b"--schema", b"name, \xe9ge int"], "--schema is not UTF-8 text"),
    ([b"ask", b"hi", b"--budget-message", b"\xe9 </think>"], "'--budget-message': the value is not UTF-8 text"),
    ([b"ask", b"hi", b"--server", b"http://h\xe9st/v1"], "'--server' (env var: 'PONDER_SERVER'): the value is not UTF-8 text"),
])
def test_an_argument_that_is_not_utf8_is_a_usage_error_before_the_model_loads(args, said):
    result = run_bytes(*args, b"--model", NO_MODEL.encode())
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 2 and said in err, err
    assert "model not found" not in err and "unexpected error" not in err


@pytest.mark.parametrize("line, field", [
    ({"id": 1, "prompt": "a \ud800 b"}, "prompt"),
    ({"id": "x\udc00", "prompt": "hi"}, "id"),
    ({"id": 1, "prompt": "hi", "choices": ["yes", "n\udcf6"]}, "choices"),
    ({"id": 1, "prompt": "hi", "schema": {"type": "object", "properties": {"\ud83d": {"type": "string"}}}},
     "schema"),
    ({"id": 1, "problem": "1+1", "answer": "\udfff"}, "answer"),
])
def test_a_task_line_that_is_not_utf8_is_refused_naming_its_line(line, field):
    tasks = b'{"id": 0, "prompt": "fine"}\n' + json.dumps(line).encode() + b"\n"  # (json escapes it: \ud800)
    result = run_ponder("batch", "--model", NO_MODEL, stdin=tasks)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert f'line 2 has text that is not UTF-8 in "{field}" (a lone surrogate' in err, err
    assert "model not found" not in err and "line 1" not in err


# --- 3. A full stdout is named; a device is no file to resume -----------------------------------------------------


def test_a_reply_onto_a_full_stdout_names_stdout(smollm2):
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-m", "ponder", "ask", "--model", smollm2, "--max-tokens", "3",
                                 "--no-log", "Say hi."], stdout=full, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=ponder_env(), timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "ponder: error: cannot write to stdout: No space left on device" in err and "Traceback" not in err


def test_a_device_as_the_results_file_gets_no_hint_to_resume(tmp_path):
    from ponder.batch_results import ResultsSink, resume
    from ponder.errors import PonderError

    sink = ResultsSink(Path("/dev/full"), resume(Path("/dev/full"), {1}))
    sink.open()
    try:
        with pytest.raises(PonderError) as failed:
            sink.write({"id": 1, "samples": []})
    finally:
        sink.close()
    assert failed.value.message == "cannot write to /dev/full: No space left on device"
    assert failed.value.hint is None  # (a regular file's rerun with the same -o goes on; a device's starts over)


# --- 4. A piped chat: stdout for the answers, notes and errors on stderr, an error naming its line ----------------


def test_a_piped_chat_says_its_notes_and_errors_on_stderr_naming_the_line(smollm2):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.events import GenerationParams

    model = LlamaCppModel(smollm2, LoadOptions(context=256))
    try:
        lines = b"Say hi.\n/bogus\n\n" + b"word " * 400 + b"\n"
        repl, term = piped_repl(model, lines, GenerationParams(temperature=0, max_tokens=2))
        repl.loop()
    finally:
        model.close()
    out, err = term.stdout.getvalue(), term.stderr.getvalue().splitlines()
    assert out.strip() and "[stopped" not in out and "error" not in out and "input line" not in out, out
    assert "[stopped at the token limit: /set max_tokens N raises it]" in err, err
    assert any(line.startswith("ponder: error: input line 2: unknown command /bogus; the commands are /help")
               and line.endswith("/exit, /quit") for line in err), err  # one line, past 80 columns
    refusal = [line for line in err if line.startswith("ponder: error: input line 4: ")]
    assert refusal and refusal[0].endswith("the chat goes on without it."), err
    assert "back in the input line" not in term.stderr.getvalue()
    assert repl.failed == 2


# --- 5. The prompt cache removes only its own files ---------------------------------------------------------------


def test_files_named_like_entries_that_are_not_ponders_are_skipped_never_removed(tmp_path):
    identity = "a" * 40
    cache = PromptCache(identity, root=tmp_path / "cache")
    assert cache.save(list(range(MIN_TOKENS)), b"state") is not None
    elsewhere = PromptCache(identity, root=tmp_path / "other").save(list(range(MIN_TOKENS, 2 * MIN_TOKENS)), b"s")
    folder = cache.folder
    foreign = folder / ("b" * 40 + ".kv")
    foreign.write_bytes(b"another program's file, no magic")
    link = folder / ("c" * 40 + ".kv")
    link.symlink_to(elsewhere)  # a link to an entry: ponder never follows one, nor removes it
    fifo = folder / ("d" * 40 + ".kv")
    os.mkfifo(fifo)
    stale = folder / ".writing-link"
    stale.symlink_to(foreign)
    old = time.time() - 7200
    os.utime(foreign, (old, old))
    assert cache.longest(list(range(MIN_TOKENS + 5))).shared == MIN_TOKENS
    assert cache.save(list(range(MIN_TOKENS + 80)), b"a longer state") is not None  # (checks every entry)
    prompt_cache.clear(tmp_path / "cache")
    assert foreign.read_bytes() == b"another program's file, no magic"
    assert link.is_symlink() and fifo.exists() and stale.is_symlink() and elsewhere.exists()
    assert entries(tmp_path / "cache") == sorted([foreign, link, fifo])  # ponder's own entries went


def test_a_damaged_entry_of_ponders_is_still_removed(tmp_path):
    cache = PromptCache("a" * 40, root=tmp_path)
    path = cache.save(list(range(MIN_TOKENS)), b"state" * 100)
    os.truncate(path, path.stat().st_size - 10)
    assert cache.longest(list(range(MIN_TOKENS))) is None and not path.exists()


# --- 6. Choice options: any case, one plain line for a wrong one ----------------------------------------------------


@pytest.mark.parametrize("args, said", [
    (["ask", "hi", "--speculate", "bogus"], "Invalid value for '--speculate': 'bogus' is not one of 'auto', 'ngram',"
                                            " 'draft', 'off'."),
    (["ask", "hi", "--reasoning", "loud"], "Invalid value for '--reasoning': 'loud' is not one of 'show',"),
    (["chat", "--on-full", "x"], "Invalid value for '--on-full': 'x' is not one of 'drop', 'compact', 'refuse'."),
])
def test_a_wrong_choice_is_one_plain_line(args, said):
    result = run_ponder(*args, "--model", NO_MODEL)
    err = result.stderr.decode()
    assert result.returncode == 2 and said in err and "Value error" not in err, err


def test_choices_are_taken_in_any_case():
    result = run_ponder("ask", "hi", "--speculate", "AUTO", "--reasoning", "Show", "--on-loop", "STOP",
                        "--model-kind", "Plain", "--model", NO_MODEL)
    err = result.stderr.decode()
    assert result.returncode == 1 and "model not found" in err and "Invalid value" not in err, err


# --- 7. A prompt cache folder that cannot be used is said so -----------------------------------------------------


def test_a_cache_dir_that_is_a_file_or_relative_is_said_so(tmp_path):
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    for value, said in ((str(blocked), f"{blocked} is not a folder"),
                        (str(blocked / "cache"), f"{blocked} is not a folder, so {blocked / 'cache'} cannot be made"),
                        ("rel/cache", "PONDER_CACHE_DIR=rel/cache is a relative path")):
        env = ponder_env(PONDER_CACHE_DIR=value)
        for args in (["cache"], ["cache", "clear"]):
            shown = run_ponder(*args, env=env)
            err = shown.stderr.decode()
            assert shown.returncode == 2 and f"ponder: error: the prompt cache cannot be used: {said}" in err, err
        asked = run_ponder("ask", "hi", "--model", NO_MODEL, env=env)
        err = asked.stderr.decode()
        assert err.count(f"ponder: warning: no prompt cache this run: {said}") == 1, err
        assert run_ponder("ask", "hi", "--model", NO_MODEL, "--no-prompt-cache", env=env).stderr.count(b"warning") == 0
    assert blocked.read_text() == "not a folder" and not (Path.cwd() / "rel").exists()


def test_a_cache_folder_open_to_others_is_said_so(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o777)
    shown = run_ponder("cache", env=ponder_env(PONDER_CACHE_DIR=str(root)))
    assert shown.returncode == 2 and b"is open to other users (mode 777)" in shown.stderr, shown.stderr
    from ponder.cli.commands.cache_command import holding

    monkeypatch.setenv("PONDER_CACHE_DIR", str(root))
    assert holding().startswith(f"not used: {root} is open to other users")
