"""HTTP to an OpenAI-compatible server: requests, retries of a busy server, server-sent events, stops.

httpx2 (ponder's dependency through huggingface_hub) does the HTTP, proxies and SSE parsing; imported only
when a server is used. The API key goes where server_auth allows; failures are one line (server_errors).
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime

from ponder.backends.server_auth import Redactor, choose_key, proxy_for, shown_url
from ponder.backends.server_cancel import InFlight
from ponder.backends.server_errors import RETRIED_STATUSES, ServerErrors, ServerRefused, StreamBroken
from ponder.backends.server_stream import json_events
from ponder.errors import BackendError, UsageError
from ponder.threads import Cancel

__all__ = ["ServerClient", "ServerRefused", "StreamBroken", "check_url", "shown_url"]

ATTEMPTS = 5
FIRST_DELAY_S, LONGEST_DELAY_S = 0.5, 8.0
LONGEST_RETRY_AFTER_S = 60.0  # a server asking for a longer wait gets a clear error instead
CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 300.0  # a server may think for minutes before the first token of a long prompt
LONGEST_JSON = 32 << 20  # a model list or /props beyond this is not one
LONGEST_ERROR_BODY = 64 << 10  # what is read of an error's body


def check_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host (the rule `settings` checks); else a UsageError."""
    from ponder.settings import check

    check("server", url)
    if not url:
        raise UsageError("no server URL given", hint="e.g. --server http://127.0.0.1:8000/v1")
    return url


class ServerClient:
    """One server's HTTP client, shared by every request to it (thread-safe, as httpx's is).

    Every request in flight is registered with its cancel (`in_flight`): `stop()` wakes them all,
    whatever each waits on (a retry's sleep, the server's headers, the next event)."""

    def __init__(self, url: str, read_timeout: float | None = None, environ=None):
        import httpx2

        self.url = check_url(url).rstrip("/")
        self.shown = shown_url(self.url)
        self.read_timeout = read_timeout or DEFAULT_READ_TIMEOUT_S
        try:
            self.http = httpx2.Client(
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
        key, self.key_withheld = choose_key(self.url, self.goes_direct(), proxy_for(self.url),
                                            os.environ if environ is None else environ)
        if key and self.shown != self.url:
            self.http.close()
            raise UsageError("the server URL carries a user:password and an API key is set: use one of them")
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"
        self._key = key or ""
        self.redact = Redactor(self._key)
        self.errors = ServerErrors(self.url, self.shown, self.redact, self.key_withheld, self.read_timeout)
        self.in_flight = InFlight()

    @property
    def root(self) -> str:
        """The server's root, where non-OpenAI endpoints live (/props, /api/version)."""
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url

    @property
    def closed(self) -> bool:
        return self.in_flight.closed

    def goes_direct(self) -> bool:
        """Whether requests to the server connect to it directly, by the client's own proxy routing
        (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY as httpx reads them), not through a proxy."""
        import httpx2

        try:
            return self.http._transport_for_url(httpx2.URL(self.url)) is self.http._transport
        except AttributeError:  # another httpx: the environment's proxy settings, as urllib reads them
            return proxy_for(self.url) is None

    # --- plain requests ---------------------------------------------------------------------

    def get_json(self, path: str, from_root: bool = False, timeout: float | None = None):
        """GET a JSON document; BackendError (one line) when the server cannot give it."""
        return self.post_json(path, None, from_root, timeout)

    def post_json(self, path: str, body: dict | None, from_root: bool = False, timeout: float | None = None):
        """POST `body` (GET where None: get_json) and read the JSON document that answers it."""
        import httpx2

        url = (self.root if from_root else self.url) + path
        with self.in_flight.track(Cancel()) as cancel:
            held: list = []
            response = self._send("GET" if body is None else "POST", url, body, cancel, held, timeout=timeout)
            if response is None:
                raise BackendError(f"the request to {self.shown} was stopped")
            try:
                return json.loads(_read(response, LONGEST_JSON))
            except (ValueError, RecursionError):  # not JSON, not UTF-8, far too long or too deeply nested
                raise BackendError(f"{shown_url(url)} did not answer with JSON") from None
            except httpx2.TimeoutException:
                raise BackendError(f"{shown_url(url)} sent nothing for {timeout or self.read_timeout:g} s",
                                   hint="--timeout SECONDS waits longer") from None
            except httpx2.RequestError as exc:
                raise BackendError(f"{shown_url(url)} broke off its answer ({type(exc).__name__})") from None
            finally:
                response.close()
                _release(held)

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
        so that what arrived can be kept. With `cancel` set (a threads.Cancel acts at once; a plain
        Event is only checked between events), or `stop()` called, the connection is shut at once,
        from the moment it connects, and the iteration just ends.
        """
        import httpx2

        own = cancel if isinstance(cancel, Cancel) else Cancel()
        with self.in_flight.track(own):
            held: list = []
            try:
                response = self._send("POST", self.url + path, body, own, held)
            except BaseException:
                _release(held)
                raise
            if response is None:
                _release(held)
                return  # cancelled before the server answered
            try:
                kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
                if kind != "text/event-stream":
                    raise BackendError(f"the server answered {response.status_code} with {kind or 'no content type'},"
                                       " not a stream of events", hint="is --server the API's base URL (…/v1)?")
                for parsed in json_events(httpx2.EventSource(response), self.errors):
                    yield parsed
                    if own.is_set() or (cancel is not None and cancel.is_set()):
                        return
            except (httpx2.TransportError, httpx2.StreamError, httpx2.DecodingError) as exc:
                if own.is_set() or (cancel is not None and cancel.is_set()):
                    return  # we shut the connection ourselves
                raise self.errors.broken(exc) from None
            finally:
                response.close()
                _release(held)

    def _tracer(self, cancel: Cancel, held: list):
        """An httpcore trace hook that shuts each new connection's socket when `cancel` is set: a read
        blocked in the kernel (waiting for headers or for the next event) wakes only for a shutdown."""

        def trace(event: str, info: dict) -> None:
            if event != "connection.connect_tcp.complete":
                return
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                held.append(cancel.on_set(lambda: _shut(sock)))

        return trace

    # --- sending, retrying, failing ---------------------------------------------------------

    def _send(self, method: str, url: str, body: dict | None, cancel: Cancel, held: list,
              timeout: float | None = None):
        """The response to a request whose status is a success, retrying a busy server with backoff;
        None if `cancel` is set meanwhile (or the client closes). The removers of the socket hooks it
        sets are added to `held` (see `_tracer`)."""
        import httpx2

        delay = FIRST_DELAY_S
        for attempt in range(1, ATTEMPTS + 1):
            if self.closed:
                raise BackendError("the connection to the server was closed")
            if cancel.is_set():
                return None
            try:
                request = self.http.build_request(
                    method, url, json=body, extensions={"trace": self._tracer(cancel, held)},
                    timeout=httpx2.Timeout(timeout) if timeout else httpx2.USE_CLIENT_DEFAULT,
                    headers={"Accept": "text/event-stream"} if body and body.get("stream") else None,
                )
                response = self.http.send(request, stream=True)
            except httpx2.InvalidURL as exc:
                raise UsageError(f"the server URL {self.shown!r} is not valid: {exc}") from None
            except (httpx2.TransportError, RuntimeError) as exc:  # RuntimeError: the client was closed meanwhile
                if cancel.is_set() or self.closed:
                    return None  # we shut the connection while it waited for the server
                if isinstance(exc, RuntimeError):
                    raise
                raise self.errors.unreachable(exc) from None
            if response.status_code < 300:
                return response
            if response.status_code < 400:
                response.close()
                target = shown_url(response.headers.get("location", "elsewhere"))
                raise BackendError(f"the server redirects {shown_url(url)} to {target}",
                                   hint="give the URL it redirects to as --server")
            try:
                said = _read(response, LONGEST_ERROR_BODY, cut=True)
            except (httpx2.RequestError, httpx2.StreamError) as exc:
                if cancel.is_set():
                    return None
                label = f"{response.status_code} {response.reason_phrase}".strip()
                why = f"sent nothing more for {self.read_timeout:g} s" if isinstance(exc, httpx2.TimeoutException) \
                    else "broke it off"
                raise BackendError(f"the server answered {label}, then {why} instead of saying why",
                                   hint="its log may say more") from None
            finally:
                response.close()
            if response.status_code in RETRIED_STATUSES and attempt < ATTEMPTS:
                told = _retry_after(response)
                if told is not None and told > LONGEST_RETRY_AFTER_S:
                    raise BackendError(f"the server is busy ({response.status_code}) and asks to retry after "
                                       f"{told:.0f} s", hint="try again later")
                if cancel.wait(delay if told is None else told):
                    return None  # stopped while waiting for a busy server
                delay = min(delay * 2, LONGEST_DELAY_S)
                continue
            raise self.errors.refused(response, said, attempt)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop every request in flight: each ends as cancelled, at once; the client stays usable."""
        self.in_flight.stop()

    def close(self) -> None:
        """Stop every request in flight, for good, and close the client."""
        self.in_flight.stop(for_good=True)
        self.http.close()


def _release(held: list) -> None:
    for remove in held:
        remove()
    held.clear()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _read(response, limit: int, cut: bool = False) -> bytes:
    """At most `limit` bytes of the body; beyond it, ValueError (or the first `limit`, if `cut`)."""
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > limit:
            if cut:
                return bytes(data[:limit])
            raise ValueError("too long")
    return bytes(data)


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
        except (TypeError, ValueError, OverflowError):
            return None
