"""Odd arguments and odd config files: text that is not UTF-8, a config file ponder cannot read (never
overwritten), and `ponder solve -n N` stopped by Ctrl-C keeping the samples that had finished. Real processes
throughout; the solve test runs the tiny trained R1 model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from ponder.settings import KEYS
from tests.support.cli import ponder_env, signal_when_said

NOT_UTF8 = b"http://x\xe9"  # as a shell passes $'http://x\xe9'


def run_bytes(*args: bytes | str, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "ponder", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          env=env, timeout=120)


@pytest.fixture
def config(tmp_path):
    """A config file of the test's own, and the environment that points ponder at it."""
    path = tmp_path / "config.toml"
    return path, ponder_env(PONDER_CONFIG=str(path))


def one_error(out, exit_code: int = 2) -> str:
    err = out.stderr.decode()
    assert out.returncode == exit_code, err
    assert err.startswith("ponder: error: ") and "Traceback" not in err and "unexpected error" not in err, err
    return err.splitlines()[0]


@pytest.mark.parametrize("key", KEYS)
def test_config_set_refuses_a_value_that_is_not_utf8_and_keeps_the_file(config, key):
    path, env = config
    path.write_text("# mine\ntemperature = 0.7\n")
    line = one_error(run_bytes("config", "set", key, NOT_UTF8, env=env))
    assert f"the value for {key} is not UTF-8 text: it holds the byte 0xE9 at character 9" in line
    assert path.read_text() == "# mine\ntemperature = 0.7\n"


@pytest.mark.parametrize("command", [("set", b"ser\xe9ver", "x"), ("unset", b"ser\xe9ver")])
def test_a_key_that_is_not_utf8_is_a_usage_error(config, command):
    _, env = config
    assert "the key is not UTF-8 text: it holds the byte 0xE9 at character 4" in one_error(
        run_bytes("config", *command, env=env))


@pytest.mark.parametrize("content, said", [
    (b'temperature = 0.7\nmodel = "a\xe9"\n', "is not UTF-8 text: byte 0xE9 at offset 28"),
    (b'{"temperature": 0.7}\n', "is not valid TOML"),
    (b"[[[\n", "is not valid TOML"),
])
@pytest.mark.parametrize("command", [("config", "show"), ("config", "set", "temperature", "0.5"),
                                     ("config", "unset", "model"), ("ask", "--model", "/nonexistent.gguf", "hi")])
def test_a_config_file_ponder_cannot_read_is_named_and_kept(config, content, said, command):
    path, env = config
    path.write_bytes(content)
    line = one_error(run_bytes(*command, env=env))
    assert f"the config file {path} {said}" in line
    assert path.read_bytes() == content


def test_wrong_types_in_the_config_file_are_named_and_the_rest_kept(config):
    path, env = config
    path.write_text('temperature = "hot"\n[server]\nurl = "x"\n')
    line = one_error(run_bytes("ask", "--model", "/nonexistent.gguf", "hi", env=env))
    assert f"temperature in {path} must be a number, 0 or more, not 'hot'" in line
    out = run_bytes("config", "set", "temperature", "0.5", env=env)
    assert out.returncode == 0, out.stderr.decode()
    assert path.read_text() == 'temperature = 0.5\n[server]\nurl = "x"\n'
    assert f"warning: server in {path} must be a URL" in out.stderr.decode()


def test_a_config_file_that_is_a_directory_is_named(config):
    path, env = config
    path.mkdir()
    for command in (("config", "show"), ("config", "set", "temperature", "1"), ("config", "unset", "model")):
        assert f"{path} is a directory, not a regular file" in one_error(run_bytes(*command, env=env))
    assert path.is_dir()


@pytest.mark.parametrize("memory", ["nan", "inf", "-1", "0.05", "1e308"])
def test_plan_memory_out_of_range_says_the_range(memory):
    out = run_bytes("plan", f"--memory={memory}", env=ponder_env())
    assert out.returncode == 2
    assert "a number of GiB from 0.1 to 1073741824 is needed" in out.stderr.decode()  # (nan was "above the maximum")


LONG = "a" * 5000  # longer than any file name may be (ENAMETOOLONG)


@pytest.mark.parametrize("command, said", [
    (("models", "info", LONG), "no local model 'aaaa"),
    (("models", "rm", LONG), "no local model 'aaaa"),
    (("models", "info", f"owner/{LONG}"), "no local model 'owner/aaaa"),
    (("pull", LONG), "unknown model 'aaaa"),
    (("plan", "--quant", LONG), "no quantization 'aaaa"),
    (("pull", "--backend="), "no default model for the backend ''"),
])
def test_a_name_no_file_can_have_is_a_short_usage_error(command, said):
    line = one_error(run_bytes(*command, env=ponder_env()))
    assert said in line and len(line) < 400, line  # (was "File name too long", exit 1; or all 5000 characters)


# --- `ponder solve -n 4` stopped by Ctrl-C after two samples ---------------------------------------------------

# `ponder solve`, its third sample held back (announced on stderr) so that Ctrl-C comes after two have finished.
STALLED = """
import sys, time
from ponder import samples
real, calls = samples.generate_reply, []
def generate_reply(*args, **kwargs):
    calls.append(None)
    if len(calls) > 2:
        print("[stalled]", file=sys.stderr, flush=True)
        time.sleep(120)
    return real(*args, **kwargs)
samples.generate_reply = generate_reply
sys.argv[0] = "ponder"
from ponder.__main__ import main
main()
"""


def interrupted_solve(tiny_r1, *extra: str) -> tuple[int, str, str]:
    return signal_when_said(STALLED, ["solve", "What is 12*7?", "--model", tiny_r1, "-n", "4", "--parallel", "1", *extra],
                            b"[stalled]", signal.SIGINT)


@pytest.mark.parametrize("output", ["text", "--json", "--jsonl", "--answer-only"])
def test_ctrl_c_during_solve_keeps_the_samples_that_finished(tiny_r1, output):
    code, out, err = interrupted_solve(tiny_r1, *([] if output == "text" else [output]))
    assert code == 130, err
    assert "Traceback" not in err and "unexpected error" not in err
    if output == "text":
        assert out.splitlines() == ["Partial answer: 84", "Votes (interrupted after 2 of 4 samples): 84 ×2"]
    elif output == "--answer-only":
        assert out == ""  # stdout is for a final answer alone
        assert "ponder: Votes (interrupted after 2 of 4 samples): 84 ×2" in err
    elif output == "--json":
        result = json.loads(out)
        assert result["interrupted"] is True
        assert [s.get("boxed") for s in result["samples"]] == ["84", "84", None, None]
        assert result["samples"][2] == {"interrupted": True}
        assert result["vote"] == {"winner": "84", "counts": [["84", 2]], "missing": 0}
    else:
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["type"] for line in lines] == ["sample", "sample", "vote"]
        assert lines[-1] == {"type": "vote", "interrupted": True, "winner": "84", "counts": [["84", 2]], "missing": 0}


def test_a_task_line_that_is_not_json_says_where_it_broke():
    from ponder.batch_tasks import read_tasks
    from ponder.errors import UsageError

    with pytest.raises(UsageError) as caught:
        read_tasks(b'{"id": 1, "prompt": "hi"}\n{"id": 3, "prompt": "oops\n')
    assert "line 2 is not JSON: Unterminated string starting at (column 21)" in caught.value.message


def test_a_ctx_llama_cpp_rounds_up_is_said(smollm2):
    raised = run_bytes("ask", "--model", smollm2, "--ctx", "10", "--max-tokens", "2", "--no-log", "hi", env=ponder_env())
    assert b"ponder: note: the context is 256 tokens: llama.cpp rounds --ctx 10 up" in raised.stderr
    exact = run_bytes("ask", "--model", smollm2, "--ctx", "256", "--max-tokens", "2", "--no-log", "hi", env=ponder_env())
    assert exact.stdout and b"ponder: note: the context" not in exact.stderr


def test_a_think_budget_for_a_model_that_does_not_think_is_said_to_do_nothing(smollm2, tiny_r1):
    plain = run_bytes("ask", "--model", smollm2, "--think-budget", "5", "--max-tokens", "2", "--no-log", "hi",
                      env=ponder_env())
    assert b"does not think (a plain model): --think-budget does nothing" in plain.stderr and plain.stdout
    thinking = run_bytes("ask", "--model", tiny_r1, "--think-budget", "5", "--no-log", "What is 12*7?", env=ponder_env())
    assert b"--think-budget does nothing" not in thinking.stderr


def test_an_ollama_name_ollama_does_not_have_says_where_it_looked(tmp_path):
    result = run_bytes("ask", "--model", "deepseek-r1:7b", "hi", env=ponder_env(OLLAMA_MODELS=str(tmp_path)))
    assert result.returncode == 1
    assert f"no local model deepseek-r1:7b: Ollama has none of that name in {tmp_path}".encode() in result.stderr
    assert b"hint: ollama pull deepseek-r1:7b" in result.stderr


def test_a_task_id_reaches_the_terminal_with_its_control_characters_visible(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": "x\\u009b2J", "prompt": "a"}\n{"id": "x\\u009b2J", "prompt": "b"}\n')  # 8-bit CSI
    result = run_bytes("batch", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--model", "/nonexistent.gguf",
                       env=ponder_env())
    assert result.returncode == 2 and b'repeats id "x\\x9b2J"' in result.stderr
    assert "\x9b".encode() not in result.stderr


def test_results_lines_carry_no_raw_terminal_controls():
    from ponder.json_text import dumps

    line = dumps({"answer": "done\x9b2J \u202eevil é", "lone": "\udc80"}, allow_nan=False)
    assert json.loads(line) == {"answer": "done\x9b2J \u202eevil é", "lone": "\udc80"}  # the same text
    assert "\x9b" not in line and "\u202e" not in line and "é" in line
    line.encode("utf-8")  # (a lone surrogate raw would not encode: the results file could not be written)
