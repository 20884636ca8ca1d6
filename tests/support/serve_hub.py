"""Serve the trained tiny R1 GGUF from a loopback hub until killed, for the user-install check
(scripts/check-user-install): `python -m tests.support.serve_hub REPO FILE` prints the URL."""

from __future__ import annotations

import sys
import threading

from tests.support.hub import LocalHub
from tests.support.tiny_r1 import trained_gguf


def main() -> None:
    repo, filename = sys.argv[1:3]
    hub = LocalHub()
    hub.add(repo, filename, trained_gguf())
    print(hub.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
