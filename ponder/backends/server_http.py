"""HTTP to an OpenAI-compatible server: requests, retries, server-sent events, and errors a person
can act on. The API key is sent in a header and never appears in any message ponder writes.

httpx2 (already ponder's dependency through huggingface_hub) does the HTTP, proxies from the
environment (HTTP(S)_PROXY, NO_PROXY), timeouts and SSE parsing; it is imported only when a server
is used, so `ponder --help` stays fast.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from ponder.errors import BackendError, UsageError

RETRIED_STATUSES = (429, 502, 503)  # busy or restarting: worth another try
ATTEMPTS = 5
FIRST_DELAY_S, LONGEST_DELAY_S = 0.5, 8.0
LONGEST_RETRY_AFTER_S = 60.0  # a server asking for a longer wait gets a clear error instead
CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 300.0  # a server may think for minutes before the first token of a long prompt
KEY_HINT = "set PONDER_API_KEY (or OPENAI_API_KEY) to the server's API key"


def shown_url(url: str) -> str:
    """`url` without user:password@ (with or without a scheme), as it may appear in messages."""
    return re.sub(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/@]*@", r"\1", url)


def check_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host (the rule `settings` checks); else a UsageError."""
    from ponder.settings import check

    check("server", url)
    if not url:
        raise UsageError("no server URL given", hint="e.g. --server http://127.0.0.1:8000/v1")
    return url


class ServerClient:
    """One server's HTTP client, shared by every request to it (thread-safe, as httpx's is)."""

    def __init__(self, url: str, api_key: str | None, read_timeout: float | None = None):
        import httpx2

        self.url = check_url(url).rstrip("/")
        self.shown = shown_url(self.url)
        if api_key and self.shown != self.url:
            raise UsageError("the server URL carries a user:password and an API key is set: use one of them")
        self._key = api_key or ""
        self.read_timeout = read_timeout or DEFAULT_READ_TIMEOUT_S
        try:
            self.http = httpx2.Client(
                headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                timeout=httpx2.Timeout(CONNECT_TIMEOUT_S, read=self.read_timeout, pool=None),
                # A connection per request, none pooled: a stop shuts the socket of its own request
                # (from the moment it connects), never one another request reuses. No cap: --parallel.
                limits=httpx2.Limits(max_connections=None, max_keepalive_connections=0),
                trust_env=True,  # HTTP(S)_PROXY, ALL_PROXY, NO_PROXY
            )
        except ImportError as exc:  # a SOCKS proxy in ALL_PROXY needs socksio
            raise BackendError(f"the proxy in the environment needs a package ponder lacks ({exc.name or exc})",
                               hint="~/.local/share/ponder/venv/bin/pip install socksio, or unset ALL_PROXY") from None
        except ValueError as exc:  # a malformed proxy URL
            raise BackendError(f"the proxy settings are not valid: {shown_url(str(exc))}") from None
        self._open_sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.closed = False

    @property
    def root(self) -> str:
        """The server's root, where non-OpenAI endpoints live (/props, /api/version)."""
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url

    # --- plain requests ---------------------------------------------------------------------

    def get_json(self, path: str, from_root: bool = False, timeout: float | None = None):
        """GET a JSON document; BackendError (one line) when the server cannot give it."""
        url = (self.root if from_root else self.url) + path
        held: list = []
        response = self._send("GET", url, None, None, held, timeout=timeout)
        try:
            response.read()
            return response.json()
        except ValueError:
            raise BackendError(f"{shown_url(url)} did not answer with JSON") from None
        finally:
            response.close()
            self._release(held)

    def try_json(self, path: str, from_root: bool = False, timeout: float = 3.0):
        """GET a JSON document, or None if there is none (probing what kind of server this is)."""
        try:
            return self.get_json(path, from_root, timeout)
        except BackendError:
            return None

    # --- streams ----------------------------------------------------------------------------

    def events(self, path: str, body: dict, cancel: threading.Event | None = None) -> Iterator[dict]:
        """POST `body` with stream=true and yield each event's JSON object, up to [DONE].

        Raises BackendError when the request fails (refused, not a stream); StreamBroken once the
        stream began (the server closed it, stalled past the read timeout, or sent malformed JSON),
        so that what arrived can be kept. With `cancel` set, the connection is shut at once, from
        the moment it connects, and the iteration just ends.
        """
        import httpx2

        held: list = []
        try:
            response = self._send("POST", self.url + path, body, cancel, held)
        except BaseException:
            self._release(held)
            raise
        if response is None:
            self._release(held)
            return  # cancelled before the server answered
        try:
            kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind != "text/event-stream":
                raise BackendError(f"the server answered {response.status_code} with {kind or 'no content type'},"
                                   " not a stream of events", hint="is --server the API's base URL (…/v1)?")
            for event in httpx2.EventSource(response):
                data = event.data.strip()
                if data == "[DONE]":
                    return
                if not data:
                    continue
                try:
                    parsed = json.loads(data)
                except ValueError:
                    parsed = None
                if not isinstance(parsed, dict):
                    raise StreamBroken(f"the server sent a malformed event: {self.redact(data[:200])[:80]!r}")
                if "error" in parsed:  # some servers report failures mid-stream
                    raise StreamBroken(f"the server reported an error mid-reply: {self._error_text(parsed)}")
                yield parsed
        except httpx2.ReadTimeout:
            if cancel is not None and cancel.is_set():
                return
            raise StreamBroken(f"the server sent nothing for {self.read_timeout:g} s",
                               hint="--timeout SECONDS waits longer") from None
        except (httpx2.TransportError, httpx2.StreamError):
            if cancel is not None and cancel.is_set():
                return  # we shut the connection ourselves
            raise StreamBroken("the server closed the stream mid-reply") from None
        finally:
            response.close()
            self._release(held)

    def _tracer(self, cancel: threading.Event | None, held: list):
        """An httpcore trace hook that keeps each new connection's socket where `close` and
        `cancel` can shut it: a read blocked in the kernel (waiting for headers or for the next
        event) wakes only for a shutdown, not for a flag."""

        def trace(event: str, info: dict) -> None:
            if event != "connection.connect_tcp.complete":
                return
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is None:
                return
            with self._lock:
                self._open_sockets.add(sock)
            remove = cancel.on_set(lambda: _shut(sock)) if hasattr(cancel, "on_set") else (lambda: None)
            held.append((sock, remove))

        return trace

    def _release(self, held: list) -> None:
        for sock, remove in held:
            remove()
            with self._lock:
                self._open_sockets.discard(sock)
        held.clear()

    # --- sending, retrying, failing ---------------------------------------------------------

    def _send(self, method: str, url: str, body: dict | None, cancel: threading.Event | None, held: list,
              timeout: float | None = None):
        """The response to a request whose status is a success, retrying a busy server with backoff;
        None if `cancel` is set meanwhile. The sockets it opens are added to `held` (see `_tracer`)."""
        import httpx2

        if self.closed:
            raise BackendError("the connection to the server was closed")
        delay = FIRST_DELAY_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                request = self.http.build_request(
                    method, url, json=body, extensions={"trace": self._tracer(cancel, held)},
                    timeout=httpx2.Timeout(timeout) if timeout else httpx2.USE_CLIENT_DEFAULT,
                    headers={"Accept": "text/event-stream"} if body and body.get("stream") else None,
                )
                response = self.http.send(request, stream=True)
            except httpx2.InvalidURL as exc:
                raise UsageError(f"the server URL {self.shown!r} is not valid: {exc}") from None
            except httpx2.TransportError as exc:
                if cancel is not None and cancel.is_set():
                    return None  # we shut the connection while it waited for the server
                if isinstance(exc, httpx2.ConnectError):
                    raise self._unreachable(exc) from None
                if isinstance(exc, httpx2.TimeoutException) or "ssl" in str(exc).lower():
                    plain = self.url.lower().startswith("https://")  # TLS to a plain-HTTP server stalls or fails
                    raise BackendError(f"the server at {self.shown} did not answer" + (" over https" if plain else
                                                                                      " in time"),
                                       hint="is it an http:// server?" if plain else "--timeout SECONDS waits longer"
                                       ) from None
                raise BackendError(f"the request to {self.shown} failed: {type(exc).__name__}: "
                                   f"{self.redact(str(exc)[:300])}") from None
            if response.status_code < 300:
                return response
            if response.status_code < 400:
                response.close()
                target = shown_url(response.headers.get("location", "elsewhere"))
                raise BackendError(f"the server redirects {shown_url(url)} to {target}",
                                   hint="give the URL it redirects to as --server")
            response.read()
            response.close()
            if response.status_code in RETRIED_STATUSES and attempt < ATTEMPTS:
                told = _retry_after(response)
                if told is not None and told > LONGEST_RETRY_AFTER_S:
                    raise BackendError(f"the server is busy ({response.status_code}) and asks to retry after "
                                       f"{told:.0f} s", hint="try again later")
                wait = delay if told is None else told
                if cancel is not None and cancel.wait(wait):
                    return None  # stopped while waiting for a busy server
                if cancel is None:
                    time.sleep(wait)
                delay = min(delay * 2, LONGEST_DELAY_S)
                continue
            raise self._refused(response, attempt)
        raise AssertionError("unreachable")

    def _unreachable(self, exc: Exception) -> BackendError:
        text = str(exc).lower()
        why = ("its host name does not resolve" if "name or service" in text or "nodename" in text or "resolution" in text
               else "connection refused" if "refused" in text else str(exc) or type(exc).__name__)
        proxy = proxy_for(self.url)
        if proxy:
            host = urlsplit(self.url).hostname
            return BackendError(f"cannot reach the server at {self.shown} through the proxy {proxy}: {self.redact(why)}",
                                hint=f"is the proxy up? NO_PROXY={host} skips it (the proxy comes from HTTP(S)_PROXY)")
        return BackendError(f"cannot reach the server at {self.shown}: {self.redact(why)}",
                            hint="is the server running there? --server or PONDER_SERVER gives its URL, "
                                 "e.g. http://127.0.0.1:8000/v1")

    def _refused(self, response, attempts: int) -> BackendError:
        status = response.status_code
        where = f"{self.shown}{response.request.url.path[len(urlsplit(self.url).path):]}"
        said = self._error_text(_json_or_none(response)) or self.redact(response.text.strip()[:300])[:200]
        label = f"{status} {response.reason_phrase}".strip()
        if status in (401, 403):
            return BackendError(f"the server refused the request ({label})" + (f": {said}" if said else ""),
                                hint=KEY_HINT if not self._key else "check PONDER_API_KEY (or OPENAI_API_KEY)")
        if status == 404 and not said.lower().count("model"):
            return BackendError(f"{where} does not exist on the server ({label})",
                                hint="--server is the API's base URL, usually ending in /v1, e.g. http://host:8000/v1")
        if status in RETRIED_STATUSES:
            return BackendError(f"the server is busy ({label}) after {attempts} tries" + (f": {said}" if said else ""),
                                hint="try again later, or lower --parallel")
        return ServerRefused(f"the server answered {label}" + (f": {said}" if said else ""), status=status, said=said)

    def _error_text(self, payload) -> str:
        """The message in an OpenAI-style error body, on one line, the key removed."""
        if not isinstance(payload, dict):
            return ""
        error = payload.get("error", payload.get("detail", payload.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or json.dumps(error)
        if isinstance(error, list):
            error = json.dumps(error)
        return self.redact(" ".join(str(error or "")[:2000].split()))[:300]

    def redact(self, text: str) -> str:
        """`text` with the API key, or any long stretch of it, replaced: a server may echo it."""
        key = self._key
        if key and len(key) >= 8:
            text = text.replace(key, "[API key]")
            for n in range(len(key) - 1, 7, -1):  # a partial echo ("sk-abc…xyz") of at least 8 characters
                for start in range(0, len(key) - n + 1):
                    if key[start:start + n] in text:
                        text = text.replace(key[start:start + n], "[API key]")
        elif key:
            text = text.replace(key, "[API key]")
        return text

    def close(self) -> None:
        """Shut every stream in flight (their readers end at once) and the client."""
        self.closed = True
        with self._lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            _shut(sock)
        self.http.close()


class StreamBroken(BackendError):
    """The stream failed after it began: the reply so far is worth keeping."""


class ServerRefused(BackendError):
    """A status the server gave with a reason, which a caller may adapt the request to."""

    def __init__(self, message: str, status: int, said: str):
        super().__init__(message)
        self.status, self.said = status, said


def proxy_for(url: str) -> str | None:
    """The proxy the environment sends `url` through (HTTP(S)_PROXY, ALL_PROXY, unless NO_PROXY
    covers its host), shown without credentials; None for a direct connection."""
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return shown_url(proxy)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _json_or_none(response):
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None
