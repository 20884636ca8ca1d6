"""Several independent samples of one reply (solve's vote, batch's pass@1), drawn as the backend
does it best: a server gives them in one request (`n`) or as requests in flight at once; a local
model draws them one after another."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import replace

from ponder.backends.base import Model
from ponder.events import GenerationParams, Message, Reply
from ponder.exchange import collect_reply, generate_reply, model_prompt, split_reply
from ponder.threads import model_thread

OnReply = Callable[[int, Reply], None]
DEFAULT_IN_FLIGHT = 8  # samples sent at once to a server that gives one choice per request


def sample_params(params: GenerationParams, index: int) -> GenerationParams:
    """Sample `index`'s settings: seeds step by one from --seed, so each sample differs and repeats."""
    return params if params.seed is None else replace(params, seed=params.seed + index)


def draw(model: Model, messages: Sequence[Message], params: GenerationParams, n: int,
         on_reply: OnReply | None = None, concurrency: int | None = None) -> list[Reply]:
    """`n` samples of the reply to `messages`, in index order; `on_reply(index, reply)` is called on
    the calling thread as each one finishes. A reply broken off by the backend is a BackendError."""
    done: dict[int, Reply] = {}

    def finished(index: int, reply: Reply) -> None:
        done[index] = reply
        if on_reply:
            on_reply(index, reply)

    # One request for n choices cannot have its reasoning ended by ponder: only without a budget (or
    # where the server bounds it itself). Loops are not watched there.
    server_bounds = params.think_budget is None or getattr(model, "native_budget", False)
    if n > 1 and hasattr(model, "stream_choices") and server_bounds:
        _one_request(model, messages, params, n, finished)
    missing = [i for i in range(n) if i not in done]
    if missing and hasattr(model, "lane"):
        in_flight(model, [(i, messages, sample_params(params, i)) for i in missing],
                  concurrency or min(len(missing), DEFAULT_IN_FLIGHT), finished)
    else:
        for index in missing:
            finished(index, collect_reply(generate_reply(model, messages, sample_params(params, index))))
    return [done[i] for i in range(n)]


def in_flight(model, jobs: list[tuple[object, Sequence[Message], GenerationParams]], concurrency: int,
              finished: Callable[[object, Reply], None]) -> None:
    """Run `jobs` (key, messages, params) on a server with up to `concurrency` requests in flight,
    each on a lane of its own; `finished(key, reply)` is called on this thread as each ends. Ctrl-C
    or a failure shuts every stream at once (the server's connection is closed) and is raised here,
    after the replies that had already finished are handed on."""
    lanes = [model.lane(i) for i in range(min(concurrency, len(jobs)))]
    pending = list(jobs)
    running: dict = {}
    pool = ThreadPoolExecutor(max(len(lanes), 1), thread_name_prefix="ponder-request")
    try:
        while pending or running:
            while pending and lanes:
                key, messages, params = pending.pop(0)
                lane = lanes.pop()
                running[pool.submit(_collect, lane, messages, params)] = (key, lane)
            ready, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)  # short: Ctrl-C gets through
            failures = []
            for work in ready:
                key, lane = running.pop(work)
                lanes.append(lane)
                if work.exception() is None:
                    finished(key, work.result())
                else:
                    failures.append(work.exception())
            if failures:
                raise failures[0]
    except BaseException:
        model.close()  # the streams in flight end at once
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _collect(model, messages, params) -> Reply:
    return collect_reply(generate_reply(model, messages, params))


def _one_request(model, messages, params, n: int, finished: OnReply) -> None:
    """Samples as the choices of one request; the server may give fewer (ignoring `n`)."""
    prompt = model_prompt(model, messages)
    started = time.perf_counter()
    events: dict[int, list] = {}
    stream = model_thread(model).iterate(lambda cancel: model.stream_choices(prompt, params, n, cancel))
    with closing(stream):
        for index, event in stream:
            events.setdefault(index, []).append((time.perf_counter(), event))
    for index in sorted(events):
        now = [started]

        def timed(items=events[index]):
            for when, event in items:
                now[0] = when
                yield event

        finished(index, collect_reply(split_reply(timed(), model.info.chat.reasoning, started, lambda: now[0])))
