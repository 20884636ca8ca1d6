"""A loopback OpenAI-compatible server whose every answer a test writes (tests of odd server replies)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Scripted:
    """A loopback HTTP server: GET …/models answers `models` (an object, or raw bytes), other GETs
    `pages[path]` or 404; each POST is recorded and answered by `answer(handler, body)`. With `key` set, a request
    without it is refused (401)."""

    def __init__(self):
        self.models: object = {"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "me"}]}
        self.answer = lambda h, body: send_events(h, [delta("Hello"), delta(" there.", finish="stop")])
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, lower-case headers)
        self.key: str | None = None
        self.pages: dict[str, object] = {}  # other GETs' answers, by path ("/props")
        self.released = threading.Event()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def refused(self) -> bool:
                if scripted.key is None or self.headers.get("Authorization") == f"Bearer {scripted.key}":
                    return False
                send_json(self, 401, {"error": {"message": "Invalid API Key"}})
                return True

            def do_GET(self):
                scripted.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.refused():
                    return
                if self.path.endswith("/models"):
                    send_json(self, 200, scripted.models)
                elif self.path in scripted.pages:
                    send_json(self, 200, scripted.pages[self.path])
                else:
                    send_json(self, 404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                scripted.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.refused():
                    return
                try:
                    scripted.answer(self, body)
                except OSError:  # the client went away
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def posts(self) -> list:
        return [r for r in self.requests if r[0] == "POST"]

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def send_json(h, status: int, payload, headers: dict | None = None) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(data)


def send_events(h, events: list, done: bool = True, cut: bool = False) -> None:
    """A 200 event stream of `events` (objects as JSON, strings as they are), each a chunk of its own;
    then [DONE] and the end of the body, or (`cut`) the socket shut without either."""
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events] + (["[DONE]"] if done and not cut else [])
    for line in lines:
        data = f"data: {line}\n\n".encode()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()
    if cut:
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)
        return
    h.wfile.write(b"0\r\n\r\n")


def delta(content, index: int = 0, finish=None, **fields) -> dict:
    return {"choices": [{"index": index, "delta": {"content": content, **fields}, "finish_reason": finish}]}
