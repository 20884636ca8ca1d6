"""`ponder … --server` against servers that fail: end to end, through the real `ponder` program.

A real llama-server runs the tiny R1 (the session's `llama_server`, and one of this module's own
that demands an API key); `FaultProxy` sits in front of either to refuse, throttle, cut, stall or
corrupt the stream. Each test checks what a person sees (exit code, one error line with a hint,
never a traceback), what the history keeps, and that the API key never shows anywhere.
"""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import tests.support.fault_proxy as fault_proxy_module
from tests.support.cli import ponder_env, run_ponder, strip_ansi
from tests.support.fault_proxy import FaultProxy
from tests.support.servers import free_port

TWELVE_SEVEN = "What is 12*7?"  # the tiny R1 reasons, then answers \boxed{84} (~60 tokens)
RAMBLE = "Tell me about the history of Rome"  # unknown to it: ~90 tokens of noise, ~1 event each
LONG = ("--max-tokens", "400")
GREEDY = ("--temperature", "0")
KEY = "sk-test-" + secrets.token_hex(12)


# --- helpers --------------------------------------------------------------------------------


def data_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """ponder's environment with a history of this test's own under tmp_path/data."""
    return ponder_env(PONDER_DATA_DIR=str(tmp_path / "data"), **extra)


def ask(url: str, *args: str, env: dict, prompt: str = TWELVE_SEVEN, timeout: float = 60):
    return run_ponder("ask", "--server", url, *GREEDY, *args, prompt, env=env, timeout=timeout)


def timed(function, *args, **kwargs):
    """(the result of function(*args, **kwargs), the seconds it took)."""
    started = time.monotonic()
    result = function(*args, **kwargs)
    return result, time.monotonic() - started


def error_of(result) -> str:
    """The failure's stderr, after checking that it is a clean exit 1: one error line, no traceback."""
    err = result.stderr.decode()
    assert result.returncode == 1, f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {err}"
    assert "Traceback" not in err and "unexpected error" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("ponder: error: ")]) == 1, err
    return err


def error_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("ponder: error: "))


def hint_line(err: str) -> str:
    return next((line.strip() for line in err.splitlines() if line.strip().startswith("hint: ")), "")


def turns(tmp_path: Path) -> list[dict]:
    """Every turn in this test's history database, oldest first."""
    db = sqlite3.connect(tmp_path / "data" / "history.db")
    try:
        rows = db.execute("SELECT role, content, reasoning, finish_reason FROM turns ORDER BY id").fetchall()
    finally:
        db.close()
    return [dict(zip(("role", "content", "reasoning", "finish_reason"), row)) for row in rows]


def posts(proxy: FaultProxy) -> list:
    return [r for r in proxy.requests if r.method == "POST"]


def squeezed(text: str) -> str:
    """`text` without any whitespace: ponder may trim or break lines of what it streams."""
    return "".join(text.split())


def model_ids(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/models", timeout=10) as response:
        return [entry["id"] for entry in json.load(response)["data"]]


class TimedRequests(list):
    """A FaultProxy's `requests` list that also notes when each request arrived."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def append(self, request) -> None:
        self.times.append(time.monotonic())
        super().append(request)


@pytest.fixture
def forwarded(monkeypatch) -> list[bytes]:
    """Every body chunk the fault proxies write to ponder, in order (the exact bytes that arrived)."""
    chunks: list[bytes] = []
    write = fault_proxy_module._write_chunk

    def recording(handler, data: bytes) -> None:
        write(handler, data)
        chunks.append(data)

    monkeypatch.setattr(fault_proxy_module, "_write_chunk", recording)
    return chunks


def streamed_text(chunks: list[bytes]) -> str:
    """The text (completions `text`, chat `reasoning_content` + `content`) in the SSE events among
    `chunks` (the proxy writes each event as a chunk of its own; other bodies have no data: lines)."""
    text = []
    for chunk in chunks:
        for line in chunk.split(b"\n"):
            data = line[len(b"data:"):].strip() if line.startswith(b"data:") else b""
            if not data or data == b"[DONE]":
                continue
            for choice in json.loads(data).get("choices") or []:
                delta = choice.get("delta") or {}
                text += [choice.get("text") or "", delta.get("reasoning_content") or "", delta.get("content") or ""]
    return "".join(text)


# --- a server that wants an API key ---------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tiny_r1):
    """A llama-server of this module's own on the tiny R1 that answers 401 without Bearer KEY."""
    from tests.support.servers import llama_server, r1_think_template

    with llama_server(tiny_r1, "--api-key", KEY, chat_template=r1_think_template(tiny_r1)) as server:
        yield server


@pytest.fixture
def keyed_proxy(keyed_server):
    """A FaultProxy in front of the keyed server: it shows the Authorization header ponder sent."""
    with FaultProxy(keyed_server.url) as proxy:
        yield proxy


# --- 1, 2: no server there -----------------------------------------------------------------


def test_connection_refused_names_the_url_with_a_hint(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    err = error_of(ask(url, env=data_env(tmp_path)))
    assert url in error_line(err) and "connection refused" in error_line(err)
    assert "is the server running" in hint_line(err)
    assert err.count("\n") == 2  # the error line and its hint, nothing else


def test_a_host_that_does_not_resolve_says_so(tmp_path):
    err = error_of(ask("http://no-such-host.invalid/v1", env=data_env(tmp_path)))
    assert "http://no-such-host.invalid/v1" in error_line(err)
    assert "does not resolve" in error_line(err)


def test_a_wrong_api_path_says_it_does_not_exist_and_hints_v1(llama_server, tmp_path):
    wrong = llama_server.url.replace("/v1", "/v2")
    err = error_of(ask(wrong, env=data_env(tmp_path)))
    assert "/v2" in error_line(err) and "does not exist" in error_line(err)
    assert "/v1" in hint_line(err)


# --- 3: API keys ---------------------------------------------------------------------------


def test_a_server_that_wants_a_key_refuses_none_and_hints_the_variable(keyed_server, tmp_path):
    err = error_of(ask(keyed_server.url, env=data_env(tmp_path)))
    assert "refused" in error_line(err) and "401" in error_line(err)
    assert "PONDER_API_KEY" in hint_line(err)


def test_a_wrong_key_is_refused(keyed_server, tmp_path):
    wrong = "sk-wrong-" + secrets.token_hex(12)
    err = error_of(ask(keyed_server.url, env=data_env(tmp_path, PONDER_API_KEY=wrong)))
    assert "refused" in error_line(err) and "401" in error_line(err)
    assert "PONDER_API_KEY" in hint_line(err)
    assert wrong not in err


@pytest.mark.parametrize("variable", ["PONDER_API_KEY", "OPENAI_API_KEY"])
def test_the_right_key_from_either_variable_is_accepted(keyed_server, tmp_path, variable):
    result = ask(keyed_server.url, env=data_env(tmp_path, **{variable: KEY}))
    assert result.returncode == 0, result.stderr.decode()
    assert "\\boxed{84}" in result.stdout.decode()


# --- 4: the key never shows ----------------------------------------------------------------


def assert_key_hidden(key: str, result, tmp_path: Path) -> None:
    """`key` is in neither output stream nor any file ponder wrote under tmp_path (the history
    database and its journal, a batch output file, …)."""
    assert key not in result.stdout.decode(errors="replace"), "the key is on stdout"
    assert key not in result.stderr.decode(errors="replace"), "the key is on stderr"
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    for path in written:
        assert key.encode() not in path.read_bytes(), f"the key is in {path}"


def assert_key_sent(proxy: FaultProxy, key: str) -> None:
    """The key did go to the server (so that its absence elsewhere means something)."""
    assert proxy.requests, "ponder sent no request"
    assert proxy.requests[-1].headers.get("authorization") == f"Bearer {key}"


def batch_input(tmp_path: Path) -> Path:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": 1, "prompt": TWELVE_SEVEN}) + "\n")
    return tasks


# Each command that talks to a server, with --debug (batch, backends and doctor take only the
# global one); `out` is tmp_path.
KEYED_COMMANDS = {
    "ask": lambda url, out: (["ask", "--server", url, *GREEDY, "--json", "--stats", "--debug", TWELVE_SEVEN], None),
    "chat": lambda url, out: (["chat", "--server", url, *GREEDY, "--debug"], f"{TWELVE_SEVEN}\n".encode()),
    "solve": lambda url, out: (["solve", "--server", url, "--samples", "2", "--jsonl", "--debug", TWELVE_SEVEN], None),
    "batch": lambda url, out: (["--debug", "batch", "--server", url, *GREEDY, "-o", str(out / "results.jsonl"),
                                str(batch_input(out))], None),
    "backends": lambda url, out: (["--debug", "backends", "--server", url], None),
    "doctor": lambda url, out: (["--debug", "doctor", "--server", url], None),
}


@pytest.mark.parametrize("command", sorted(KEYED_COMMANDS))
def test_the_key_is_sent_but_never_shown_or_kept(keyed_proxy, tmp_path, command):
    args, stdin = KEYED_COMMANDS[command](keyed_proxy.url, tmp_path)
    result = run_ponder(*args, stdin=stdin, env=data_env(tmp_path, PONDER_API_KEY=KEY), timeout=90)
    assert result.returncode == 0, result.stderr.decode()
    if command == "batch":
        assert json.loads((tmp_path / "results.jsonl").read_text())["samples"][0]["boxed"] == "84"
    elif command in ("ask", "chat", "solve"):
        assert "84" in result.stdout.decode()
    else:
        assert "reachable" in result.stdout.decode()  # it did reach the server with the key
    assert_key_sent(keyed_proxy, KEY)
    assert_key_hidden(KEY, result, tmp_path)


def test_a_wrong_key_is_not_shown_even_with_debug(keyed_proxy, tmp_path):
    wrong = "sk-wrong-" + secrets.token_hex(12)
    result = ask(keyed_proxy.url, "--debug", env=data_env(tmp_path, PONDER_API_KEY=wrong))
    assert result.returncode == 1
    assert "Traceback" in result.stderr.decode()  # --debug shows it: the key must not be in it
    assert_key_sent(keyed_proxy, wrong)
    assert_key_hidden(wrong, result, tmp_path)


@pytest.mark.parametrize("fault", ["stall_after", "cut_after"])
def test_the_key_is_not_shown_when_a_stream_breaks_with_debug(keyed_proxy, tmp_path, fault):
    setattr(keyed_proxy, fault, 5)
    result = ask(keyed_proxy.url, "--debug", "--timeout", "1", *LONG,
                 env=data_env(tmp_path, PONDER_API_KEY=KEY), prompt=RAMBLE)
    assert result.returncode == 1
    assert "Traceback" in result.stderr.decode()
    assert turns(tmp_path)[-1]["finish_reason"] == "interrupted"  # the history was written
    assert_key_sent(keyed_proxy, KEY)
    assert_key_hidden(KEY, result, tmp_path)


# --- 5: busy servers -----------------------------------------------------------------------


def test_two_429s_are_retried_and_the_answer_comes(fault_proxy, tmp_path):
    fault_proxy.fail_first, fault_proxy.fail_status, fault_proxy.retry_after = 2, 429, "0"
    result = ask(fault_proxy.url, env=data_env(tmp_path))
    assert result.returncode == 0, result.stderr.decode()
    assert "\\boxed{84}" in result.stdout.decode()
    assert len(posts(fault_proxy)) == 3


def test_a_server_busy_every_time_fails_after_its_tries(fault_proxy, tmp_path):
    fault_proxy.fail_first, fault_proxy.fail_status = 100, 503
    result, seconds = timed(ask, fault_proxy.url, env=data_env(tmp_path))
    err = error_of(result)
    tries = len(posts(fault_proxy))
    assert f"busy (503 Service Unavailable) after {tries} tries" in error_line(err)
    assert 1 < tries < 10
    assert seconds < 20


def test_retry_after_is_honoured(fault_proxy, tmp_path):
    fault_proxy.requests = TimedRequests()
    fault_proxy.fail_first, fault_proxy.fail_status, fault_proxy.retry_after = 1, 429, "1"
    result = ask(fault_proxy.url, env=data_env(tmp_path))
    assert result.returncode == 0, result.stderr.decode()
    first, second = [t for r, t in zip(fault_proxy.requests, fault_proxy.requests.times) if r.method == "POST"]
    assert second - first >= 1.0  # not the first backoff (0.5 s)
    assert second - first < 5


# --- 6-8: streams that break mid-reply -----------------------------------------------------


def test_a_cut_stream_keeps_what_arrived_and_fails(fault_proxy, forwarded, tmp_path):
    fault_proxy.cut_after = 10
    result = ask(fault_proxy.url, *LONG, env=data_env(tmp_path), prompt=RAMBLE)
    err = error_of(result)
    assert "the server closed the stream" in error_line(err)
    arrived = squeezed(streamed_text(forwarded))
    assert len(arrived) >= 5, "the proxy forwarded too little to test with"
    shown = squeezed(strip_ansi(result.stdout.decode() + result.stderr.decode()))
    assert arrived in shown  # every bit that arrived was shown (reasoning goes to stderr in a pipe)
    user, assistant = turns(tmp_path)[-2:]
    assert user == {"role": "user", "content": RAMBLE, "reasoning": "", "finish_reason": None}
    assert assistant["finish_reason"] == "interrupted"
    assert squeezed(assistant["reasoning"] + assistant["content"]) == arrived


def test_a_stalled_stream_times_out_with_a_hint(fault_proxy, tmp_path):
    fault_proxy.stall_after = 5
    result, seconds = timed(ask, fault_proxy.url, "--timeout", "1", *LONG, env=data_env(tmp_path),
                            prompt=RAMBLE)
    err = error_of(result)
    assert "the server sent nothing for 1 s" in error_line(err)
    assert "--timeout" in err
    assert seconds < 10
    assert turns(tmp_path)[-1]["finish_reason"] == "interrupted"


def test_a_malformed_event_fails_cleanly(fault_proxy, tmp_path):
    fault_proxy.malformed_after = 3
    err = error_of(ask(fault_proxy.url, *LONG, env=data_env(tmp_path), prompt=RAMBLE))
    assert "malformed event" in error_line(err)
    assert turns(tmp_path)[-1]["finish_reason"] == "interrupted"


# --- 9: Ctrl-C while the server sends nothing ----------------------------------------------


def default_sigint() -> None:
    """In the child: SIGINT as Python expects it, even if the test runner ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stalled_ask_args(proxy: FaultProxy) -> list[str]:
    return ["-m", "ponder", "ask", "--server", proxy.url, "--timeout", "300", *GREEDY, *LONG, RAMBLE]


def wait_for_a_post(proxy: FaultProxy, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not posts(proxy):
        assert time.monotonic() < deadline, "ponder sent no request"
        time.sleep(0.05)


def test_ctrl_c_on_a_terminal_ends_a_stalled_stream_at_once(fault_proxy, tmp_path):
    import pexpect

    fault_proxy.stall_after = 3
    child = pexpect.spawn(sys.executable, stalled_ask_args(fault_proxy),
                          env=data_env(tmp_path, TERM="xterm-256color"), dimensions=(40, 100), encoding="utf-8",
                          codec_errors="replace", timeout=30, preexec_fn=default_sigint)
    try:
        child.expect("Thinking")  # the reply began
        time.sleep(1.5)  # the whole reply takes a fraction of that: the stream is stalled now
        assert child.isalive(), "ponder finished: the stream did not stall"
        started = time.monotonic()
        child.sendintr()
        child.expect(pexpect.EOF, timeout=10)
        seconds = time.monotonic() - started
        child.close()
    finally:
        child.close(force=True)
    assert child.exitstatus == 130
    assert seconds < 3
    assert "interrupted" in strip_ansi(child.before)


def test_sigint_in_a_pipe_ends_a_stalled_stream_at_once(fault_proxy, tmp_path):
    fault_proxy.stall_after = 3
    process = subprocess.Popen([sys.executable, *stalled_ask_args(fault_proxy)], env=data_env(tmp_path),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=default_sigint)
    try:
        wait_for_a_post(fault_proxy)
        time.sleep(1.5)
        assert process.poll() is None, "ponder finished: the stream did not stall"
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert seconds < 3
    assert "ponder: interrupted" in err.decode()


# --- 10, 11: proxies from the environment, unknown models ----------------------------------


def proxy_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose HTTP proxy is a dead port, without any NO_PROXY but `extra`'s."""
    env = data_env(tmp_path, HTTP_PROXY=f"http://127.0.0.1:{free_port()}")
    for name in ("NO_PROXY", "no_proxy"):
        env.pop(name, None)
    env.update(extra)
    return env


def test_an_http_proxy_from_the_environment_is_used_even_for_loopback(llama_server, tmp_path):
    env = proxy_env(tmp_path)
    err = error_of(ask(llama_server.url, env=env))
    assert f"through the proxy {env['HTTP_PROXY']}: connection refused" in error_line(err)  # the proxy is down
    assert "NO_PROXY=127.0.0.1" in hint_line(err)


def test_no_proxy_lets_ponder_reach_the_server_directly(llama_server, tmp_path):
    result = ask(llama_server.url, env=proxy_env(tmp_path, NO_PROXY="127.0.0.1"))
    assert result.returncode == 0, result.stderr.decode()
    assert "\\boxed{84}" in result.stdout.decode()


def test_an_unknown_model_lists_the_servers_models(llama_server, tmp_path):
    err = error_of(ask(llama_server.url, "--model", "no-such-model", env=data_env(tmp_path)))
    assert "no model 'no-such-model'" in error_line(err)
    served = model_ids(llama_server.url)
    assert served and all(name in hint_line(err) for name in served)


# --- what review found: edges of the stream and of the connection -------------------------------


def test_ctrl_c_while_the_server_has_not_answered_yet_exits_at_once(fault_proxy, tmp_path):
    fault_proxy.hold_headers = True  # a server still loading its model: not even a status line
    process = subprocess.Popen([sys.executable, "-m", "ponder", "ask", "--server", fault_proxy.url, "--timeout",
                                "300", TWELVE_SEVEN], env=data_env(tmp_path), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(posts(fault_proxy)) == 0:
        time.sleep(0.05)
    time.sleep(0.5)
    assert process.poll() is None  # still waiting for the server
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 130 and time.monotonic() - started < 3, err.decode()
    fault_proxy.release()


def test_a_stream_that_ends_without_finishing_is_an_interrupted_reply(fault_proxy, tmp_path):
    fault_proxy.end_after = 8
    err = error_of(ask(fault_proxy.url, env=data_env(tmp_path)))
    assert "ended the stream before the reply finished" in error_line(err)
    assert turns(tmp_path)[-1]["finish_reason"] == "interrupted"


def test_an_event_that_is_json_but_not_an_object_is_malformed(fault_proxy, tmp_path):
    fault_proxy.null_after = 4
    err = error_of(ask(fault_proxy.url, env=data_env(tmp_path)))
    assert "malformed event" in error_line(err)
    assert turns(tmp_path)[-1]["finish_reason"] == "interrupted"


def test_a_reply_that_is_not_a_stream_is_said_so(fault_proxy, tmp_path):
    fault_proxy.plain_reply = True
    err = error_of(ask(fault_proxy.url, env=data_env(tmp_path)))
    assert "answered 200 with application/json, not a stream of events" in error_line(err)


def test_a_key_echoed_by_the_server_is_not_shown(keyed_proxy, tmp_path):
    keyed_proxy.fail_first, keyed_proxy.fail_status, keyed_proxy.fail_echo_key = 1, 401, True
    result = ask(keyed_proxy.url, "--debug", env=data_env(tmp_path, PONDER_API_KEY=KEY))  # tracebacks too
    err = result.stderr.decode()
    assert result.returncode == 1 and "Invalid API key: Bearer [API key]" in err
    assert KEY not in err + result.stdout.decode() and KEY[8:20] not in err
    assert posts(keyed_proxy)[-1].headers["authorization"] == f"Bearer {KEY}"  # it was sent, and echoed


def test_openai_api_key_stays_home_over_plain_http_to_another_host():
    from ponder.backends.server_auth import choose_key

    def key(url, env, direct=True):
        return choose_key(url, direct, None, env)[0]

    openai = {"OPENAI_API_KEY": KEY}
    assert key("http://colleague-box:8000/v1", openai) is None
    assert key("https://colleague-box/v1", openai) == KEY
    assert key("http://127.0.0.1:8000/v1", openai) == KEY
    both = {**openai, "PONDER_API_KEY": "ponder-key"}
    assert key("http://colleague-box:8000/v1", both) == "ponder-key"  # the user's explicit choice


def test_many_requests_reuse_a_few_threads(llama_server):
    import threading

    from ponder.backends.server import connect
    from ponder.events import GenerationParams, Message
    from ponder.samples import in_flight

    model = connect(llama_server.url)
    question, params, replies = [Message("user", TWELVE_SEVEN)], GenerationParams(max_tokens=4), []
    before = threading.active_count()
    for _ in range(20):
        in_flight(model, [(i, question, params) for i in range(3)], 3, lambda key, reply: replies.append(reply))
    model.close()
    assert len(replies) == 60
    assert threading.active_count() - before <= 6  # three lanes' threads (and a pool's) made once, not 60
