"""Run a blocking generator on a worker thread so the caller stays responsive.

Inference calls block in C for a whole token or prompt chunk. Driving them from a worker
lets the main thread take Ctrl-C at once and render without stalling the decoder.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()
JOIN_TIMEOUT_S = 30.0  # a cancelled worker finishes its current token or prompt chunk first
POLL_S = 1 / 30  # how often streamed text reaches the screen: smooth to the eye


def iterate_in_thread(produce: Callable[[threading.Event], Iterator[T]]) -> Iterator[T]:
    """Yield what `produce(cancel)` yields, computed on a worker thread.

    The caller collects items every POLL_S instead of being woken for each one: on a
    machine whose cores all decode, a consumer woken per token preempts the inference
    threads mid-step and costs about a sixth of decode speed; batched wake-ups cost ~nil.
    If the consumer stops early (break, exception, Ctrl-C), `cancel` is set and the worker
    is waited for, so the model is idle again when this generator closes.
    """
    cancel = threading.Event()
    finished = threading.Event()
    items: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        try:
            for item in produce(cancel):
                items.put(item)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            items.put(_Failure(exc))
        finally:
            items.put(_END)
            finished.set()

    worker = threading.Thread(target=work, name="ponder-generate", daemon=True)
    worker.start()
    try:
        while True:
            finished.wait(POLL_S)  # interruptible by Ctrl-C; returns early once the worker is done
            while True:
                try:
                    item = items.get_nowait()
                except queue.Empty:
                    break
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
    finally:
        cancel.set()
        worker.join(JOIN_TIMEOUT_S)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def call_in_thread(function: Callable[[], T]) -> T:
    """`function()` on a worker thread, waited for interruptibly.

    Long C calls (loading a model) then never run Python callbacks on the main thread,
    where a Ctrl-C would be raised inside the callback and swallowed by ctypes; and Ctrl-C
    returns at once instead of after the call.
    """
    outcome: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        try:
            outcome.put((True, function()))
        except BaseException as exc:
            outcome.put((False, exc))

    threading.Thread(target=work, name="ponder-call", daemon=True).start()
    ok, value = outcome.get()
    if not ok:
        raise value
    return value
