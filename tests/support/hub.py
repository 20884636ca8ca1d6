"""A local HTTP server that serves files as the Hugging Face hub's resolve endpoint does
(`/{repo}/resolve/{revision}/{file}`: commit and sha256 ETag headers, byte ranges), for
downloads through the real huggingface_hub client via HF_ENDPOINT. A second LocalHub can play
the CDN that the hub redirects downloads to."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0"


class LocalHub:
    def __init__(self, host: str = "127.0.0.1"):
        """`host`: the name in the hub's URL ("localhost" is another host than 127.0.0.1 to an HTTP client)."""
        self.files: dict[str, bytes] = {}  # "owner/repo/file" -> content
        self.etags: dict[str, str] = {}  # served sha256; defaults to the content's
        self.drop_once_at: int | None = None  # the next download's connection drops at this byte
        self.drop_at: int | None = None  # while set, every download's connection drops at this byte
        self.hold_at: int | None = None  # while set, downloads pause at this byte until `release` is set
        self.release = threading.Event()
        self.redirect_to: LocalHub | None = None  # while set, the file's URL redirects there (as to a CDN)
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers with lower-case names)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                parts = self.path.split("?")[0].strip("/").split("/")
                key = "/".join(parts[:2] + parts[4:]) if len(parts) >= 5 and parts[2] == "resolve" else None
                if key not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                data = hub.files[key]
                etag = hub.etags.get(key) or hashlib.sha256(data).hexdigest()
                if hub.redirect_to is not None:  # as the hub does for an LFS file: metadata here, bytes there
                    self.send_response(302)
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("Location", hub.redirect_to.url + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                end = len(data)
                if hub.drop_once_at is not None:
                    end, hub.drop_once_at = hub.drop_once_at, None
                elif hub.drop_at is not None:
                    end = max(start, hub.drop_at)
                if end < len(data):
                    self.close_connection = True  # closed after `end` bytes, short of Content-Length
                if hub.hold_at is not None and start < hub.hold_at < end:
                    self.wfile.write(data[start:hub.hold_at])
                    self.wfile.flush()
                    hub.release.wait(60)
                    start = hub.hold_at
                self.wfile.write(data[start:end])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, filename: str, source: Path) -> str:
        self.files[f"{repo}/{filename}"] = source.read_bytes()
        return hashlib.sha256(self.files[f"{repo}/{filename}"]).hexdigest()

    def ranges(self) -> list[str]:
        return [h.get("range", "") for method, path, h in self.requests if method == "GET" and "/resolve/" in path]

    def close(self):
        self.server.shutdown()
