"""One registry of the cancels of a server's requests in flight, so that one call stops them all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    """The cancels of the requests in flight to one server. Each request registers its own (the lane's,
    the caller's, or one made for it) for as long as it runs, and waits on nothing else: a retry's sleep
    waits on it, and setting it shuts the request's socket (see ServerClient._tracer). So `stop()` ends
    every request at once, whatever it is waiting for, where closing the HTTP client would not wake a
    request sleeping in a Retry-After wait."""

    def __init__(self) -> None:
        self._cancels: list[threading.Event] = []
        self._lock = threading.Lock()
        self.closed = False

    @contextmanager
    def track(self, cancel: threading.Event) -> Iterator[threading.Event]:
        """Hold `cancel` in the registry while the block runs."""
        with self._lock:
            self._cancels.append(cancel)
        try:
            yield cancel
        finally:
            with self._lock:
                self._cancels.remove(cancel)

    def stop(self, for_good: bool = False) -> None:
        """Set every registered cancel; `for_good`: the client is closing (`closed`: no new request)."""
        with self._lock:
            self.closed = self.closed or for_good
            cancels = list(self._cancels)
        for cancel in cancels:
            cancel.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._cancels)
