"""The server backend against servers that answer oddly (issue 20): a loopback server whose every
answer the test writes, byte for byte, and the real `ponder` program or the backend in front of it.
Each odd answer must end in one clear error line (or a reply), never a traceback nor "unexpected
error"; a broken stream keeps what finished; a stop wakes every wait; the API key never travels in
clear text through a proxy."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.cli import ponder_env, run_ponder
from tests.support.scripted_server import Scripted, delta, send_events, send_json

KEY = "sk-hardening-0123456789abcdef"


# --- a server whose answers the test writes ------------------------------------------------------


@pytest.fixture
def scripted():
    server = Scripted()
    yield server
    server.close()


def ask(url: str, *args: str, env: dict | None = None, timeout: float = 60):
    return run_ponder("ask", "--server", url, *args, "Say hello", env=env or ponder_env(), timeout=timeout)


def one_error(result, code: int = 1) -> str:
    """The one `ponder: error:` line of a failure with exit `code`, after checking there is no traceback."""
    err = result.stderr.decode()
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {err}"
    assert "Traceback" not in err and "unexpected error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("ponder: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- 1: the split --------------------------------------------------------------------------------


def test_the_server_backend_is_split_by_job_into_small_modules():
    import ponder.backends

    backends = Path(ponder.backends.__file__).parent
    modules = sorted(backends.glob("server*.py"))
    assert len(modules) >= 5  # what a server is, its HTTP, adapting requests, decoding streams, the model
    for module in modules:
        text = module.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 300, module.name
        assert text.startswith('"""') and text.splitlines()[0].endswith((".", '"""')), module.name  # one line, a job


# --- 2: a broken n-choice stream keeps the finished choices -----------------------------------------


def test_a_broken_n_choice_stream_keeps_the_choices_that_had_finished(scripted):
    from ponder.backends.server import connect
    from ponder.events import Finished, GenerationParams, Message, TextDelta

    scripted.answer = lambda h, body: send_events(h, [
        delta("Forty", index=0), delta("Eighty", index=1), delta("-two.", index=0, finish="stop"),
        delta("-four", index=2), delta(" is", index=1, finish="length"), delta(" or so", index=2)], cut=True)
    model = connect(scripted.url)
    try:
        events = list(model.stream_choices([Message("user", "?")], GenerationParams(max_tokens=8), 3))
    finally:
        model.close()
    text = {i: "".join(e.text for j, e in events if j == i and isinstance(e, TextDelta)) for i in range(3)}
    ends = {i: e for i, e in events if isinstance(e, Finished)}
    assert text == {0: "Forty-two.", 1: "Eighty is", 2: "-four or so"}
    assert (ends[0].finish_reason, ends[0].error) == ("stop", None)  # finished before the cut: kept as it was
    assert (ends[1].finish_reason, ends[1].error) == ("length", None)
    assert ends[2].finish_reason == "interrupted" and "closed the stream" in ends[2].error  # only this one broke


def test_a_cancelled_n_choice_request_keeps_the_choices_that_had_finished(scripted):
    from ponder.backends.server import connect
    from ponder.events import Finished, GenerationParams, Message
    from ponder.threads import Cancel

    scripted.answer = lambda h, body: send_events(h, [delta("A", 0, finish="stop"), delta("B", 1), delta("C", 1)])
    model, cancel = connect(scripted.url), Cancel()
    ends = {}
    try:
        for index, event in model.stream_choices([Message("user", "?")], GenerationParams(max_tokens=8), 2, cancel):
            if isinstance(event, Finished):
                ends[index] = event.finish_reason
            elif index == 1:
                cancel.set()  # the user stops it while choice 1 is still coming
    finally:
        model.close()
    assert ends == {0: "stop", 1: "cancelled"}


# --- 3: one registry of cancels: a stop wakes a lane waiting out a Retry-After ---------------------


def busy_for_a_minute(h, body) -> None:
    send_json(h, 503, {"error": {"message": "loading model"}}, {"Retry-After": "60"})


def test_stopping_the_lanes_wakes_them_from_a_retry_after_wait(scripted):
    from ponder.backends.server import connect
    from ponder.events import GenerationParams, Message
    from ponder.exchange import collect_reply, generate_reply

    scripted.answer = busy_for_a_minute
    model = connect(scripted.url)
    replies = []
    lanes = [threading.Thread(target=lambda lane=model.lane(i): replies.append(
        collect_reply(generate_reply(lane, [Message("user", "?")], GenerationParams(max_tokens=8)))), daemon=True)
        for i in range(2)]
    for lane in lanes:
        lane.start()
    deadline = time.monotonic() + 10
    while len(scripted.posts()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # both lanes now sleep in their Retry-After wait
    started = time.monotonic()
    model.close()  # closing for good wakes them too (samples.in_flight stops them: the next test)
    for lane in lanes:
        lane.join(timeout=5)
    assert not any(lane.is_alive() for lane in lanes), "a lane still sleeps in its Retry-After wait"
    assert time.monotonic() - started < 15  # far below the 60 s wait (generous: a loaded CI machine)
    assert [r.finish_reason for r in replies] == ["cancelled", "cancelled"]
    assert len(scripted.posts()) == 2  # no retry was sent after the stop


def test_stop_ends_the_requests_in_flight_and_leaves_the_model_usable(scripted):
    from ponder.backends.server import connect
    from ponder.events import GenerationParams, Message
    from ponder.exchange import collect_reply, generate_reply

    scripted.answer = busy_for_a_minute
    model = connect(scripted.url)
    question, params = [Message("user", "?")], GenerationParams(max_tokens=8)
    replies = []
    lane = threading.Thread(target=lambda: replies.append(collect_reply(generate_reply(model.lane(0), question, params))),
                            daemon=True)
    lane.start()
    time.sleep(0.5)
    model.stop()
    lane.join(timeout=2)
    assert not lane.is_alive(), "the request still waits out its Retry-After"
    assert replies[0].finish_reason == "cancelled"
    scripted.answer = lambda h, body: send_events(h, [delta("Hello", finish="stop")])
    assert collect_reply(generate_reply(model.lane(0), question, params)).answer == "Hello"  # not closed
    model.close()


def test_ctrl_c_ends_a_batch_whose_requests_wait_out_a_retry_after(scripted, tmp_path):
    scripted.answer = busy_for_a_minute
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "prompt": f"task {i}"}) + "\n" for i in range(4)))
    process = subprocess.Popen(
        [sys.executable, "-m", "ponder", "batch", "--server", scripted.url, "--parallel", "2", "-o",
         str(tmp_path / "out.jsonl"), str(tasks)], env=ponder_env(PONDER_DATA_DIR=str(tmp_path / "data")),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while len(scripted.posts()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert process.poll() is None, process.communicate()
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err.decode()
    assert seconds < 20, f"exit took {seconds:.1f} s after Ctrl-C"  # the Retry-After is 60 s


# --- 4: the API key never goes in clear text to a proxy --------------------------------------------


class RecordingProxy:
    """A loopback forward HTTP proxy that records each request's headers and passes it on."""

    def __init__(self):
        self.seen: list[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.seen.append({k.lower(): v for k, v in self.headers.items()})
                target = urlsplit(self.path)  # a proxy is sent the absolute URL
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                upstream.request(self.command, target.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_POST = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def recording_proxy():
    proxy = RecordingProxy()
    yield proxy
    proxy.close()


def proxied_env(proxy: RecordingProxy, **extra: str) -> dict:
    env = ponder_env(HTTP_PROXY=proxy.url)
    for name in ("NO_PROXY", "no_proxy"):
        env.pop(name, None)
    return {**env, **extra}


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "PONDER_API_KEY"])
def test_the_key_for_this_machine_is_not_sent_through_a_proxy(scripted, recording_proxy, variable):
    result = ask(scripted.url, env=proxied_env(recording_proxy, **{variable: KEY}))
    assert result.returncode == 0, result.stderr.decode()
    assert "Hello there." in result.stdout.decode()
    assert recording_proxy.seen, "the request did not go through the proxy: the test proves nothing"
    assert not any("authorization" in headers for headers in recording_proxy.seen)
    assert not any("authorization" in headers for _, _, headers in scripted.requests)


def test_a_server_that_wants_the_withheld_key_says_why_it_was_not_sent(scripted, recording_proxy):
    scripted.key = KEY
    result = ask(scripted.url, env=proxied_env(recording_proxy, OPENAI_API_KEY=KEY))
    line, err = one_error(result), result.stderr.decode()
    assert "401" in line and "OPENAI_API_KEY was not sent" in err and "NO_PROXY=127.0.0.1" in err
    assert KEY not in err


def test_without_a_proxy_the_key_goes_to_this_machine(scripted, recording_proxy):
    env = proxied_env(recording_proxy, OPENAI_API_KEY=KEY, NO_PROXY="127.0.0.1")
    result = ask(scripted.url, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert not recording_proxy.seen
    assert all(headers.get("authorization") == f"Bearer {KEY}" for _, _, headers in scripted.requests)


def test_which_key_goes_where():
    from ponder.backends.server_auth import choose_key

    openai, ponder = {"OPENAI_API_KEY": KEY}, {"PONDER_API_KEY": KEY}
    assert choose_key("http://localhost:8000/v1", False, "http://proxy:3128", openai)[0] is None
    assert choose_key("http://127.0.0.2:8000/v1", False, None, ponder)[0] is None  # localhost at a proxy is its own
    assert choose_key("http://[::1]:8000/v1", True, None, openai)[0] == KEY
    assert choose_key("https://localhost:8000/v1", False, "http://proxy:3128", openai)[0] == KEY  # a tunnel
    assert choose_key("http://box:8000/v1", False, "http://proxy:3128", ponder)[0] == KEY  # the user's choice
    assert choose_key("http://localhost.evil.example/v1", True, None, openai)[0] is None


# --- 5: what a server sends is checked for type ---------------------------------------------------

ODD_STREAMS = {
    "a delta that is a string": ({"choices": [{"index": 0, "delta": "Hello"}]}, "delta that is not an object"),
    "content that is a list of numbers": (delta([1, 2]), "`content` that is not text"),
    "content that is an object": (delta({"text": "Hello"}), "`content` that is not text"),
    "reasoning_content that is a number": (delta(None, reasoning_content=7), "`reasoning_content` that is not text"),
    "choices that are an object": ({"choices": {"0": {"delta": {"content": "x"}}}}, "not a list"),
    "choices that are a number": ({"choices": 5}, "not a list"),
    "an index that is text": ({"choices": [{"index": "0", "delta": {"content": "x"}}]}, "choice index '0'"),
    "an index beyond the choices asked": (delta("x", index=3), "choice index 3 for a request of 1"),
    "a negative index": (delta("x", index=-1), "choice index -1"),
    "an index that is true": ({"choices": [{"index": True, "delta": {"content": "x"}}]}, "choice index True"),
    "a finish_reason that is a number": (delta("x", finish=1), "finish_reason that is not text"),
    "a finish_reason that is an object": (delta("x", finish={"type": "stop"}), "finish_reason that is not text"),
    "a finish_reason that is a list": (delta("x", finish=["stop"]), "finish_reason that is not text"),
    "a choice that is a list": ({"choices": [["x"]]}, "malformed choice"),
    "a line that is not JSON": ("Hello there", "malformed event"),
    "arrays nested beyond Python's recursion limit": ("[" * 100000 + "]" * 100000, "malformed event"),
}


@pytest.mark.parametrize("case", sorted(ODD_STREAMS))
def test_an_odd_stream_is_one_clear_error_and_keeps_what_came_before(scripted, case, tmp_path):
    event, said = ODD_STREAMS[case]
    scripted.answer = lambda h, body: send_events(h, [delta("Hello"), event, delta(".", finish="stop")])
    result = ask(scripted.url, env=ponder_env(PONDER_DATA_DIR=str(tmp_path)))
    line = one_error(result)
    assert "the server sent" in line and said in line, line
    assert "Hello" in result.stdout.decode()  # what arrived before is kept


@pytest.mark.parametrize("usage", ["lots", {"prompt_tokens": "ten", "completion_tokens": [1]},
                                   {"prompt_tokens": True, "completion_tokens": -3,
                                    "completion_tokens_details": {"reasoning_tokens": "many"}},
                                   {"prompt_tokens": 10 ** 400, "completion_tokens": 1.5}])
def test_odd_usage_figures_are_ignored_and_the_reply_comes(scripted, usage):
    scripted.answer = lambda h, body: send_events(h, [delta("Hello"), delta(" there.", finish="stop"),
                                                      {"choices": [], "usage": usage}])
    result = ask(scripted.url, "--json", "--stats")
    assert result.returncode == 0, result.stderr.decode()
    reply = json.loads(result.stdout)
    assert reply["answer"] == "Hello there." and reply["stats"]["prompt_tokens"] == 0


def test_content_as_a_list_of_text_parts_is_read_as_text(scripted):
    scripted.answer = lambda h, body: send_events(h, [delta([{"type": "text", "text": "Hello"}]),
                                                      delta([{"type": "text", "text": " there."}], finish="stop")])
    result = ask(scripted.url)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "Hello there."


@pytest.mark.parametrize("models", [{"data": {"id": "tiny"}}, {"data": 5}, {"data": "tiny"}, [], "tiny",
                                    {"object": "list"}, None])
def test_a_model_list_that_is_not_a_list_is_one_clear_error(scripted, models):
    scripted.models = models
    line = one_error(ask(scripted.url))
    assert "did not answer with a list of models" in line


@pytest.mark.parametrize("command", [["backends"], ["doctor"]])
def test_backends_and_doctor_say_so_for_an_odd_model_list(scripted, command):
    scripted.models = {"data": 5}
    result = run_ponder(*command, "--server", scripted.url, env=ponder_env())
    out = result.stdout.decode() + result.stderr.decode()
    assert "unexpected error" not in out and "Traceback" not in out, out
    assert "did not answer with a list of models" in out


def test_entries_of_a_model_list_that_are_not_models_are_left_out(scripted):
    scripted.models = {"data": [5, "x", {"id": 7}, {"id": ""}, {"id": "tiny", "max_model_len": True}]}
    result = ask(scripted.url)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "Hello there."


def test_a_read_timeout_while_reading_an_error_body_is_a_clear_error(scripted):
    def stall_the_body(h, body):
        h.send_response(400)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", "100")
        h.end_headers()
        h.wfile.write(b'{"error": ')
        h.wfile.flush()
        scripted.released.wait(30)

    scripted.answer = stall_the_body
    started = time.monotonic()
    line = one_error(ask(scripted.url, "--timeout", "1"))
    assert "answered 400 Bad Request, then sent nothing more for 1 s" in line
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("models", [b'{"data": [{"id": "tiny"', b"[" * 100000 + b"]" * 100000],
                         ids=["cut short", "nested too deeply"])
def test_a_model_list_that_is_not_json_is_a_clear_error(scripted, models):
    scripted.models = models
    assert "did not answer with JSON" in one_error(ask(scripted.url))


def test_a_server_that_streams_whole_messages_is_read(scripted):
    scripted.answer = lambda h, body: send_events(h, [{"choices": [{"index": 0, "finish_reason": "stop",
                                                                    "message": {"content": "Hello there."}}]}])
    result = ask(scripted.url)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "Hello there."


def test_props_whose_template_and_tokens_are_not_text_are_not_used(scripted):
    scripted.pages["/props"] = {"default_generation_settings": {}, "chat_template": 5, "bos_token": 7,
                                "eos_token": ["x"], "build_info": {"b": 1}}
    result = ask(scripted.url)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "Hello there."
    assert scripted.posts()[0][1] == "/v1/chat/completions"  # no template: the server renders the prompt


def test_an_event_beyond_a_mebibyte_is_one_clear_error(scripted):
    scripted.answer = lambda h, body: send_events(h, [delta("Hello"), delta("x" * (1 << 20), finish="stop")])
    assert "an event longer than 1 MiB" in one_error(ask(scripted.url))


def test_a_stream_whose_compression_is_broken_is_one_clear_error(scripted):
    def broken_gzip(h, body):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", "40")
        h.end_headers()
        h.wfile.write(b"data: not gzip at all, whatever it says\n\n"[:40])

    scripted.answer = broken_gzip
    assert "cannot be decoded" in one_error(ask(scripted.url))


ESCAPES = "\x1b]0;pwned\x07\x1b[?1049h\x1b[?25l"  # a window title, the alternate screen, a hidden cursor


@pytest.mark.parametrize("answer", [
    lambda h, b: send_json(h, 400, {"error": {"message": f"bad {ESCAPES} request"}}),
    lambda h, b: send_json(h, 400, f"bad {ESCAPES} request".encode()),
    lambda h, b: send_events(h, [delta("Hello"), delta(".", finish=f"odd{ESCAPES}")]),
    lambda h, b: send_events(h, [delta("Hello"), {"error": {"message": f"oops{ESCAPES}"}}]),
], ids=["an error's message", "an error's body", "a finish reason", "an error mid-stream"])
def test_control_characters_a_server_sends_in_an_error_reach_no_terminal(scripted, answer):
    scripted.answer = answer
    result = ask(scripted.url)
    line = one_error(result)
    assert "\x1b" not in result.stderr.decode() + result.stdout.decode()  # no escape character itself
    assert "\\x1b]0;pwned\\x07" in line  # written out, as data


def test_a_model_id_with_control_characters_is_left_out(scripted):
    scripted.models = {"data": [{"id": "tiny"}, {"id": f"evil{ESCAPES}"}]}
    result = ask(scripted.url)
    assert result.returncode == 0, result.stderr.decode()  # one model served: no --model needed
    listed = run_ponder("backends", "--server", scripted.url, env=ponder_env())
    assert "models: tiny" in listed.stdout.decode() and "\x1b" not in listed.stdout.decode()


# --- 6: errors a batch can tell apart --------------------------------------------------------------

LLAMA_SERVER_OVERFLOW = {"error": {"code": 400, "message": "request (3000 tokens) exceeds the available context size "
                                   "(512 tokens), try increasing it", "type": "exceed_context_size_error",
                                   "n_prompt_tokens": 3000, "n_ctx": 512}}
VLLM_OVERFLOW = {"object": "error", "message": "This model's maximum context length is 2048 tokens. However, your "
                 "request has 3000 input tokens. Please reduce the length of the input messages.",
                 "type": "BadRequestError", "param": None, "code": 400}
SGLANG_OVERFLOW = {"object": "error", "message": "The input (3000 tokens) is longer than the model's context length "
                   "(2048 tokens).", "type": "BadRequestError", "code": 400}


@pytest.mark.parametrize("payload,figures", [(LLAMA_SERVER_OVERFLOW, "3000 tokens, but the server's context holds 512"),
                                             (VLLM_OVERFLOW, "3000 tokens, but the server's context holds 2048"),
                                             (SGLANG_OVERFLOW, "3000 tokens, but the server's context holds 2048")])
def test_a_prompt_beyond_the_servers_context_is_the_usual_over_context_error(scripted, payload, figures):
    scripted.answer = lambda h, body: send_json(h, 400, payload)
    line = one_error(ask(scripted.url), code=2)  # as a local model's prompt beyond its context
    assert f"the prompt is {figures}" in line
    assert len(scripted.posts()) == 1  # not retried


def test_each_kind_of_failure_raises_its_own_error(scripted):
    from ponder.backends.server import connect
    from ponder.backends.server_http import ServerRefused
    from ponder.errors import BackendError, ContextOverflow, ModelError
    from ponder.events import GenerationParams, Message
    from tests.support.servers import free_port

    def failure(answer):
        scripted.answer = answer
        model = connect(scripted.url)
        try:
            with pytest.raises(Exception) as caught:
                list(model.stream([Message("user", "?")], GenerationParams(max_tokens=8)))
            return caught.value
        finally:
            model.close()

    # About this one request: a batch writes an error line for it and goes on.
    refused = failure(lambda h, b: send_json(h, 400, {"error": {"message": "invalid grammar"}}))
    assert type(refused) is ServerRefused and refused.status == 400 and "invalid grammar" in refused.message
    assert type(failure(lambda h, b: send_json(h, 500, {"error": "oops"}))) is ServerRefused
    assert isinstance(failure(lambda h, b: send_json(h, 400, LLAMA_SERVER_OVERFLOW)), ContextOverflow)
    in_stream = failure(lambda h, b: send_events(h, [LLAMA_SERVER_OVERFLOW]))  # the refusal as the first event
    assert isinstance(in_stream, ContextOverflow)
    # About every request: a batch stops.
    gone = failure(lambda h, b: send_json(h, 404, {"error": {"message": "model 'tiny' not found"}}))
    assert isinstance(gone, ModelError)
    for status in (401, 403):
        denied = failure(lambda h, b, status=status: send_json(h, status, {"error": "no"}))
        assert type(denied) is BackendError
    with pytest.raises(BackendError) as unreachable:
        connect(f"http://127.0.0.1:{free_port()}/v1")
    assert type(unreachable.value) is BackendError and "connection refused" in unreachable.value.message
