"""A server's failures as one-line errors with a hint, the API key never in them, told apart by reach.

ServerRefused and StreamBroken are about one request (a batch may go on); plain BackendErrors and
ModelErrors are about every request to the server."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from ponder.backends.server_auth import KEY_HINT, Redactor, proxy_for
from ponder.errors import BackendError, ModelError

RETRIED_STATUSES = (429, 502, 503)  # busy or restarting: worth another try
V1_HINT = "--server is the API's base URL, usually ending in /v1, e.g. http://host:8000/v1"


class StreamBroken(BackendError):
    """The stream failed after it began: the reply so far is worth keeping."""


class ServerRefused(BackendError):
    """The server refused this one request, with a status and a reason (400, 413, 422, 500, ...): a
    caller may adapt the request to it, and a batch go on to the next. Refusals no request can pass
    (a wrong key or URL, a busy server, an unknown model) are plain BackendErrors or ModelErrors."""

    def __init__(self, message: str, status: int, said: str, payload=None):
        super().__init__(message)
        self.status, self.said, self.payload = status, said, payload


class ServerErrors:
    """The errors of one server's client, worded for its URL and its key."""

    def __init__(self, url: str, shown: str, redact: Redactor, key_withheld: str, read_timeout: float):
        self.url, self.shown, self.redact = url, shown, redact
        self.key_withheld, self.read_timeout = key_withheld, read_timeout

    def unreachable(self, exc: Exception) -> BackendError:
        """The request could not be sent, or no answer came (a transport error before the status)."""
        import httpx2

        if not isinstance(exc, httpx2.ConnectError):
            if isinstance(exc, httpx2.TimeoutException) or "ssl" in str(exc).lower():
                plain = self.url.lower().startswith("https://")  # TLS to a plain-HTTP server stalls or fails
                return BackendError(f"the server at {self.shown} did not answer" + (" over https" if plain else " in time"),
                                    hint="is it an http:// server?" if plain else "--timeout SECONDS waits longer")
            return BackendError(f"the request to {self.shown} failed: {type(exc).__name__}: "
                                f"{self.redact(str(exc)[:300])}")
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

    def refused(self, response, body: bytes, attempts: int) -> BackendError:
        """The error for a refusal: ServerRefused for one about this request alone (a caller may adapt
        it, a batch may go on); a plain BackendError or ModelError where no request can pass."""
        status = response.status_code
        where = f"{self.shown}{response.request.url.path[len(urlsplit(self.url).path):]}"
        payload = _json_or_none(body)
        said = self.error_text(payload) or visible(" ".join(self.redact(body.decode("utf-8", "replace")[:300]).split()))[:200]
        label = f"{status} {response.reason_phrase}".strip()
        if status in (401, 403):
            hint = self.key_withheld or (KEY_HINT if not self.redact.key else "check PONDER_API_KEY (or OPENAI_API_KEY)")
            return BackendError(f"the server refused the request ({label})" + (f": {said}" if said else ""), hint=hint)
        if status == 404 and "model" not in said.lower():
            return BackendError(f"{where} does not exist on the server ({label})", hint=V1_HINT)
        if status == 404:
            return ModelError(f"the server answered {label}: {said}", hint="`ponder backends --server URL` lists its models")
        if status in RETRIED_STATUSES:
            return BackendError(f"the server is busy ({label}) after {attempts} tries" + (f": {said}" if said else ""),
                                hint="try again later, or lower --parallel")
        return ServerRefused(f"the server answered {label}" + (f": {said}" if said else ""), status=status, said=said,
                             payload=payload)

    def refused_in_stream(self, payload: dict) -> ServerRefused:
        """A refusal sent as the stream's first event, in place of a status."""
        error = payload.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 0
        said = self.error_text(payload)
        return ServerRefused(f"the server refused the request: {said}", status=status, said=said, payload=payload)

    def broken(self, exc: Exception) -> StreamBroken:
        """The stream, once begun, failed in transport."""
        import httpx2

        if isinstance(exc, httpx2.ReadTimeout):
            return StreamBroken(f"the server sent nothing for {self.read_timeout:g} s",
                                hint="--timeout SECONDS waits longer")
        if isinstance(exc, httpx2.SSEError):
            return StreamBroken("the server sent an event longer than 1 MiB")
        if isinstance(exc, httpx2.DecodingError):
            return StreamBroken("the server sent a stream that cannot be decoded (its content encoding is broken)")
        return StreamBroken("the server closed the stream mid-reply")

    def error_text(self, payload) -> str:
        """The message in an OpenAI-style error body, on one line, the key removed."""
        if not isinstance(payload, dict):
            return ""
        error = payload.get("error", payload.get("detail", payload.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or json.dumps(error)
        if isinstance(error, list):
            error = json.dumps(error)
        return visible(self.redact(" ".join(str(error or "")[:2000].split())))[:300]


def visible(text: str) -> str:
    """`text` with its control characters written out (\\x1b): text from a server reaches a terminal."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _json_or_none(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None
