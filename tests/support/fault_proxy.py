"""A loopback HTTP proxy in front of a real server that injects faults, for tests of how a client
copes with broken streams, rate limits and outages.

    with FaultProxy(server.url) as proxy:          # e.g. "http://127.0.0.1:PORT/v1"
        proxy.cut_after = 3                         # close the socket after 3 SSE events
        client(base_url=proxy.url) ...
        proxy.requests[-1].headers["authorization"]

Faults (attributes; change them at any time, they apply to the next request):
- `fail_first`: answer the next M requests whose method is in `fail_methods` (POST by default,
  so a client's GET /v1/models passes) with `fail_status` (429 or 503, an OpenAI-style JSON error
  body) and a `Retry-After: <retry_after>` header when `retry_after` is set; counts down to 0.
- On streamed (text/event-stream) responses, after K complete `data:` events (comment events such
  as mlx_lm.server's ": keepalive 3/13" pass through uncounted):
  `cut_after` closes the socket mid-body (the client sees an incomplete chunked body),
  `stall_after` stops sending but keeps the socket open until `release()` or `close()`,
  `malformed_after` inserts one `data: {"choices": [{"delta": ` (broken JSON) event and goes on,
  `null_after` inserts `data: null` (JSON, not an object) and goes on,
  `end_after` ends the body cleanly there (no [DONE], no finish_reason).
  `stream_faults` limits how many streamed responses get them (None: every one).
- `hold_headers`: answer nothing, not even the status line, until `release()` (a server still
  loading its model, or prefilling a long prompt).
- `plain_reply`: answer a POST with 200 and a JSON body, not a stream.
- `fail_echo_key`: a `fail_first` failure quotes the request's Authorization header back.

The proxy forwards each SSE event as soon as it is complete (and non-SSE bytes as they come), so
the server's timing is preserved. Responses go back with chunked transfer encoding, as the servers
send them. `requests` records each request seen (method, path, lower-case headers, body).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding"}
MALFORMED_EVENT = b'data: {"choices": [{"delta": \n\n'
INJECTED = {"malformed": MALFORMED_EVENT, "null": b"data: null\n\n"}  # faults that add an event and go on


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


class FaultProxy:
    def __init__(self, upstream: str):
        """`upstream`: the real server's URL; the proxy's `url` has the same path on its own port."""
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.fail_first = 0
        self.fail_status = 429
        self.fail_methods = ("POST",)
        self.retry_after: str | None = None
        self.cut_after: int | None = None
        self.stall_after: int | None = None
        self.malformed_after: int | None = None
        self.null_after: int | None = None  # inject `data: null` (JSON, but not an object)
        self.end_after: int | None = None  # end the body cleanly, without [DONE] or a finish_reason
        self.stream_faults: int | None = None
        self.hold_headers = False  # answer nothing, not even headers, until release()
        self.plain_reply = False  # answer POSTs 200 with JSON instead of a stream
        self.fail_echo_key = False  # a failure's message quotes the Authorization header, as careless servers do
        self.requests: list[SeenRequest] = []
        self._released = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                proxy._handle(self)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = self.base_url + parts.path.rstrip("/")
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        """No faults, no recorded requests; responses stalled so far end."""
        self.fail_first, self.fail_status, self.retry_after = 0, 429, None
        self.cut_after = self.stall_after = self.malformed_after = self.stream_faults = None
        self.null_after = self.end_after = None
        self.hold_headers = self.plain_reply = self.fail_echo_key = False
        self.requests.clear()
        self._released.set()
        self._released = threading.Event()

    def release(self) -> None:
        """Let stalled responses end (their sockets close without the rest of the stream)."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    # --- one request ---

    def _take_failure(self) -> bool:
        """Whether this request gets the `fail_first` fault (counting it down)."""
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return True
            return False

    def _stream_fault(self) -> tuple[str, int] | None:
        with self._lock:
            faults = [(name, k) for name, k in (("cut", self.cut_after), ("stall", self.stall_after),
                                                 ("malformed", self.malformed_after), ("null", self.null_after),
                                                 ("end", self.end_after)) if k is not None]
            if not faults or self.stream_faults == 0:
                return None
            if self.stream_faults is not None:
                self.stream_faults -= 1
            return faults[0]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.requests.append(SeenRequest(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, body))
        if h.command in self.fail_methods and self._take_failure():
            return self._fail(h)
        if self.hold_headers:
            self._released.wait()
            h.close_connection = True
            return
        if self.plain_reply and h.command == "POST":
            return self._send(h, 200, {"object": "chat.completion", "choices": []})
        upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=600)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(h.command, h.path, body=body if body or h.command == "POST" else None, headers=headers)
            response = upstream.getresponse()
        except OSError as e:
            upstream.close()
            return self._send(h, 502, {"error": {"message": f"fault proxy: upstream unreachable: {e}"}})
        try:
            h.send_response(response.status, response.reason)
            for k, v in response.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    h.send_header(k, v)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            if "text/event-stream" in (response.getheader("Content-Type") or ""):
                self._forward_events(h, response, self._stream_fault())
            else:
                while chunk := response.read1(65536):
                    _write_chunk(h, chunk)
                _write_chunk(h, b"")
        except OSError:  # the client went away
            h.close_connection = True
        finally:
            upstream.close()

    def _forward_events(self, h, response, fault: tuple[str, int] | None) -> None:
        buffer, events = b"", 0
        while True:
            chunk = response.read1(65536)
            buffer = (buffer + chunk).replace(b"\r\n", b"\n")
            while b"\n\n" in buffer or (not chunk and buffer):  # forward each complete event as it arrives
                if fault and events == fault[1]:
                    if fault[0] == "end":
                        response.close()
                        return _write_chunk(h, b"")
                    if fault[0] not in INJECTED:
                        return self._cut(h, response, stall=fault[0] == "stall")
                    _write_chunk(h, INJECTED[fault[0]])
                    fault = None
                event, _, buffer = buffer.partition(b"\n\n")
                _write_chunk(h, event + b"\n\n")
                events += any(line.startswith(b"data:") for line in event.split(b"\n"))  # not ": keepalive"
            if not chunk:
                break
        if fault and events == fault[1] and fault[0] in ("cut", "stall"):  # a fault after the last event
            return self._cut(h, response, stall=fault[0] == "stall")
        if fault and events == fault[1] and fault[0] in INJECTED:
            _write_chunk(h, INJECTED[fault[0]])
        _write_chunk(h, b"")

    def _cut(self, h, response, stall: bool) -> None:
        """Close the client's socket mid-body, without the final chunk; first wait for `release()` if `stall`.
        The upstream connection closes at once, so that the server stops generating."""
        response.close()
        if stall:
            self._released.wait()
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _fail(self, h) -> None:
        message = "Rate limit reached" if self.fail_status == 429 else "Service unavailable"
        if self.fail_echo_key:
            message = f"Invalid API key: {h.headers.get('Authorization', '')}"
        extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        self._send(h, self.fail_status, {"error": {"message": f"fault proxy: {message}", "code": self.fail_status,
                                                   "type": "rate_limit_error" if self.fail_status == 429
                                                   else "server_error"}}, extra)

    @staticmethod
    def _send(h, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def _write_chunk(h, data: bytes) -> None:
    """One HTTP chunk; the empty one ends the body."""
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.flush()
