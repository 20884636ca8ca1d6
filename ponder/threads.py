"""Model work off the main thread, so the caller stays responsive.

Inference calls block in C for a whole token or prompt chunk. Driving them from a worker
lets the main thread take Ctrl-C at once and render without stalling the decoder; each
model has one such thread (all llama.cpp models share one), so its generations never overlap.
"""

from __future__ import annotations

import queue
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()
POLL_S = 1 / 30  # how often streamed text reaches the screen: smooth to the eye


class ModelThread:
    """The one thread that runs a model's generations, one after another (all llama.cpp models'
    on one: see LlamaCppModel.shares_thread).

    A model's context is not re-entrant: a request made while an interrupted generation is
    still finishing its token waits in this thread's queue instead of running beside it.
    One thread per MLX model keeps MLX happy (its streams are thread-local since 0.31.2).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        # The thread idles for the rest of the process once its model is gone, rather than end: a
        # thread that used MLX runs MLX's thread-local destructors as it ends, and those call into
        # Python, which aborts the process if the interpreter is shutting down meanwhile.
        threading.Thread(target=_run_jobs, args=(self._jobs,), name="ponder-model", daemon=True).start()

    def iterate(self, produce: Callable[[threading.Event], Iterator[T]], poll_s: float = POLL_S,
                urgent: Callable[[T], bool] | None = None) -> Iterator[T]:
        """Yield what `produce(cancel)` yields, computed on this thread.

        The caller collects items every `poll_s` instead of being woken for each one: on a
        machine whose cores all decode, a consumer woken per token preempts the inference
        threads mid-step and costs about a sixth of decode speed; batched wake-ups cost ~nil.
        An item for which `urgent(item)` is true wakes the caller at once (one the producer
        waits on an answer to). If the consumer stops early (break, exception, Ctrl-C),
        `cancel` is set and the generation is waited for, so the model is idle again when
        this generator closes.
        """
        cancel = Cancel()
        finished = threading.Event()
        wake = threading.Event()  # set by an urgent item, and at the end
        items: queue.SimpleQueue = queue.SimpleQueue()

        def job() -> None:
            try:
                for item in produce(cancel):
                    items.put(item)
                    if urgent is not None and urgent(item):
                        wake.set()
            except BaseException as exc:  # handed to the consumer, which re-raises it
                items.put(_Failure(exc))
            finally:
                items.put(_END)
                finished.set()
                wake.set()

        self._jobs.put(job)
        try:
            while True:
                wake.wait(poll_s)  # interruptible by Ctrl-C; returns early once the job is done
                wake.clear()  # (before draining: what is put after this wakes the next wait)
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
            stop_and_wait(cancel, finished)


class Cancel(threading.Event):
    """A stop flag that can also act at once: a generation blocked in I/O (a server's stream)
    registers a callback that unblocks it, where checking the flag between tokens would wait."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` when the flag is set (now, if it already is); returns its remover."""
        with self._lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def set(self) -> None:
        with self._lock:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def _run_jobs(jobs: queue.SimpleQueue) -> None:
    while True:
        job = jobs.get()
        job()
        del job  # it holds the model: an idle thread must not keep it alive


_threads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_threads_lock = threading.Lock()


_shared: ModelThread | None = None  # the one thread of every model that asks to share it


def model_thread(model: object) -> ModelThread:
    """`model`'s generation thread, started on first use (a model must be hashable and weakly
    referable, as plain objects are); one for all the models whose class sets `shares_thread`."""
    global _shared
    with _threads_lock:
        if getattr(model, "shares_thread", False):
            _shared = _shared or ModelThread()
            return _shared
        if model not in _threads:
            _threads[model] = ModelThread()
        return _threads[model]


def stop_and_wait(cancel: threading.Event, done: threading.Event) -> None:
    """Set `cancel` and wait for `done`; a Ctrl-C, SIGTERM or SIGHUP meanwhile is held until then, and
    delivered after.

    Used while a cancelled generation finishes its current token: a second signal must not leave the
    model's context mid-decode while the caller moves on.
    """
    if threading.current_thread() is not threading.main_thread():
        cancel.set()
        done.wait()
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _: held.append(signum)) for signum in HELD_SIGNALS}
    try:
        cancel.set()  # only now: the handlers that hold a signal are in place
        done.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    # The process's own handlers now take them, the ones that end it first: raise_signal runs a Python
    # handler before returning (so a Ctrl-C raises KeyboardInterrupt here), and a default one ends the process.
    for signum in sorted(set(held), key=lambda s: s == signal.SIGINT):
        signal.raise_signal(signum)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where a Ctrl-C would be: whatever stops cleanly on Ctrl-C (the
    generation at its next token, the live view, the chat keeping a partial reply) does so for these
    too. Only the exit status differs (128 + the signal), and a REPL must not carry on after one."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


TERMINATING = (signal.SIGTERM, signal.SIGHUP)
HELD_SIGNALS = (signal.SIGINT, *TERMINATING)


def raise_on_termination() -> None:
    """From now on SIGTERM and SIGHUP raise Terminated in the main thread. A signal the process was
    started ignoring (`nohup` ignores SIGHUP) stays ignored."""
    for signum in TERMINATING:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _terminate)


def _terminate(signum: int, _frame) -> None:
    # Once: a second SIGTERM (a service manager repeats it) must not cut short the clean-up the first began.
    for other in TERMINATING:
        if signal.getsignal(other) is _terminate:
            signal.signal(other, signal.SIG_IGN)
    raise Terminated(signum)


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
