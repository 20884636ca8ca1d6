"""Which API key a request to a server may carry, and keeping it (and URL credentials) out of every message."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

KEY_HINT = "set PONDER_API_KEY (or OPENAI_API_KEY) to the server's API key"


def shown_url(url: str) -> str:
    """`url` without user:password@ (with or without a scheme), as it may appear in messages."""
    return re.sub(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/@]*@", r"\1", url)


def is_this_machine(host: str) -> bool:
    """Whether `host` names this machine's loopback (localhost, 127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_key(url: str, direct: bool, proxy: str | None = None,
               environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """(the API key a request to `url` may carry, or None; why a key that is set was withheld, or "").

    PONDER_API_KEY is meant for this server; OPENAI_API_KEY maybe for OpenAI alone. Either goes over
    https. Over plain http, a key goes to this machine only if the request really stays here
    (`direct`: no proxy carries it; "localhost" at a proxy is the proxy's own machine), and
    PONDER_API_KEY also to another host (the user's choice for that server); OPENAI_API_KEY never.
    """
    name = next((n for n in ("PONDER_API_KEY", "OPENAI_API_KEY") if environ.get(n)), None)
    if name is None:
        return None, ""
    key = environ[name]
    parts = urlsplit(url)
    if parts.scheme.lower() == "https":
        return key, ""
    host = parts.hostname or ""
    if is_this_machine(host):
        if direct:
            return key, ""
        return None, (f"{name} was not sent: the request to {host} goes through the proxy "
                      f"{proxy or 'from the environment'} in clear text (NO_PROXY={host} sends it directly)")
    if name == "PONDER_API_KEY":
        return key, ""
    return None, "OPENAI_API_KEY is sent only over https or to this machine: set PONDER_API_KEY for this server"


class Redactor:
    """Takes an API key out of text a server or an HTTP library wrote: a server may echo it."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, text: str) -> str:
        key = self.key
        if not key:
            return text
        text = text.replace(key, "[API key]")
        if len(key) < 8:
            return text
        # A partial echo ("sk-abc…xyz"): every run of text made of the key's 8-character windows, found in
        # one pass over the text (a long bearer token made the earlier every-substring search quadratic).
        windows = {key[i:i + 8] for i in range(len(key) - 7)}
        secret = bytearray(len(text))
        for i in range(len(text) - 7):
            if text[i:i + 8] in windows:
                secret[i:i + 8] = b"\x01" * 8
        if not any(secret):
            return text
        out, i = [], 0
        while i < len(text):
            if secret[i]:
                while i < len(text) and secret[i]:
                    i += 1
                out.append("[API key]")
            else:
                out.append(text[i])
                i += 1
        return "".join(out)


def proxy_for(url: str) -> str | None:
    """The proxy the environment sends `url` through (HTTP(S)_PROXY, ALL_PROXY, unless NO_PROXY
    covers its host), shown without credentials; None for a direct connection. For messages: whether
    a key may go is decided by the HTTP client's own routing (ServerClient.goes_direct)."""
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return shown_url(proxy)
