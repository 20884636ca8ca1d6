"""Several independent samples of one reply (solve's vote, batch's pass@1), drawn as the backend
does it best: a server gives them in one request (`n`) or as requests in flight at once; a local
model loaded for several sequences decodes them together (ponder.parallel), else one after another."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import replace

from ponder.backends.base import Model
from ponder.errors import BackendError
from ponder.events import GenerationParams, Message, Reply, ReplyEvent
from ponder.exchange import checked, collect_reply, generate_reply, model_prompt, split_reply, unbroken
from ponder.parallel import Decide, Failed, Job, Settle, Skipped, decode_together
from ponder.threads import model_thread

OnReply = Callable[[int, Reply], None]
OnEvent = Callable[[int, ReplyEvent], None]
# Told of a job that failed: True if it was its own failure, taken care of (the other jobs go on);
# False to stop them all and raise it.
OnFailure = Callable[[object, Exception], bool]
DEFAULT_IN_FLIGHT = 8  # samples sent at once to a server that gives one choice per request


class BrokenSample(BackendError):
    """A sample the backend broke off (a stream cut mid-reply): what arrived is in `reply`."""

    def __init__(self, reply: Reply):
        super().__init__(reply.error or "the reply broke off")
        self.reply = reply


def whole(reply: Reply) -> Reply:
    """The reply, unless the backend broke it off: then a BrokenSample."""
    return unbroken(reply, BrokenSample)


def collect_whole(events: Iterator[ReplyEvent]) -> Reply:
    """Run a reply to its end unshown; a reply the backend broke off is a BrokenSample."""
    return collect_reply(events, BrokenSample)


def sample_params(params: GenerationParams, index: int) -> GenerationParams:
    """Sample `index`'s settings: seeds step by one from --seed, so each sample differs and repeats."""
    return params if params.seed is None else replace(params, seed=params.seed + index)


def draw(model: Model, messages: Sequence[Message], params: GenerationParams, n: int,
         on_reply: OnReply | None = None, concurrency: int | None = None, on_event: OnEvent | None = None,
         settle: Settle | None = None) -> list[Reply | None]:
    """`n` samples of the reply to `messages`, in index order; `on_reply(index, reply)` is called on
    the calling thread as each one finishes, `on_event(index, event)` with each reply event where the
    samples are drawn on this machine. `settle(replies, remaining)` (early stop): once true, the samples
    not finished are ended and left None. A reply broken off by the backend is a BrokenSample; a constrained
    reply (params.constraint) carries its answer's `parsed` value, and one that fails that check raises
    ConstraintBroken."""
    done: dict[int, Reply | None] = {}

    def finished(index: int, reply: Reply | None) -> None:
        done[index] = reply
        if on_reply and reply is not None:
            on_reply(index, reply)

    if n > 1 and model.info.sequences > 1:
        prompt = model_prompt(model, messages)
        jobs = [Job(i, prompt, sample_params(params, i), group_size=n) for i in range(n)]
        decode_jobs(model, jobs, finished, on_event, settle)
        return [done[i] for i in range(n)]
    def shown(index: int, reply: Reply | None) -> None:  # where no events came before: the reply alone
        if on_event and reply is not None:
            on_event(index, reply)
        finished(index, reply)

    # One request for n choices cannot have its reasoning ended by ponder: only without a budget (or
    # where the server bounds it itself). Loops are not watched there, nor can an early stop end it.
    server_bounds = params.think_budget is None or model.info.reasoning_end == "server"
    if n > 1 and hasattr(model, "stream_choices") and server_bounds and settle is None:
        _one_request(model, messages, params, n, shown)

    def settled() -> bool:
        return settle is not None and settle([r for r in done.values() if r is not None], n - len(done))

    def skip(index: int) -> None:
        if on_event:
            on_event(index, Skipped(0))
        finished(index, None)

    missing = [i for i in range(n) if i not in done]
    if missing and hasattr(model, "lane"):  # (requests in flight run to their end: only those not sent are saved)
        in_flight(model, [(i, messages, sample_params(params, i)) for i in missing],
                  concurrency or min(len(missing), DEFAULT_IN_FLIGHT), shown, settled, skip)
    else:
        for index in missing:
            if settled():
                skip(index)
                continue
            finished(index, collect_whole(_shown(index, generate_reply(model, messages, sample_params(params, index)),
                                                 on_event)))
    return [done[i] for i in range(n)]


def decode_jobs(model: Model, jobs: Iterable[Job], finished: Callable[[object, Reply | None], None],
                on_event: OnEvent | None = None, settle: Settle | None = None, failed: OnFailure | None = None) -> None:
    """Run `jobs` decoded together on a local model (ponder.parallel); `finished(key, reply)` on this
    thread as each ends, with None for one the early stop ended. A job that fails (its prompt over the
    context, a reply broken off) goes to `failed`; unless it takes it, it ends them all and is raised
    here. Ctrl-C ends them all at once."""
    # Collected 10 times a second (the sample board shows no more), but at once when the driver waits on a Decide.
    stream = model_thread(model).iterate(lambda cancel: decode_together(model, jobs, cancel, settle is not None),
                                         poll_s=0.1, urgent=lambda item: isinstance(item[1], Decide))
    with closing(stream):
        for key, event in stream:
            if isinstance(event, Decide):
                event.answer(settle(event.replies, event.remaining))
                continue
            if isinstance(event, Reply) and event.error:
                event = Failed(BrokenSample(event))
            if isinstance(event, Failed):
                if failed is None or not failed(key, event.error):
                    raise event.error
                continue
            if on_event:
                on_event(key, event)
            if isinstance(event, Reply):
                finished(key, event)
            elif isinstance(event, Skipped):
                finished(key, None)


def _shown(index: int, events: Iterator[ReplyEvent], on_event: OnEvent | None) -> Iterator[ReplyEvent]:
    for event in events:
        if on_event:
            on_event(index, event)
        yield event


def in_flight(model, jobs: list[tuple[object, Sequence[Message], GenerationParams]], concurrency: int,
              finished: Callable[[object, Reply], None], stop: Callable[[], bool] | None = None,
              skip: Callable[[object], None] | None = None, failed: OnFailure | None = None) -> None:
    """Run `jobs` (key, messages, params) on a server with up to `concurrency` requests in flight,
    each on a lane of its own; `finished(key, reply)` is called on this thread as each ends. Once
    `stop()` is true the jobs not sent yet are handed to `skip(key)` instead. A job that fails goes to
    `failed(key, error)`, and the others go on if it takes it. Ctrl-C or a failure not taken shuts
    every stream in flight at once (the server's connection is closed) and is raised here, after the
    replies that had already finished are handed on."""
    lanes = [model.lane(i) for i in range(min(concurrency, len(jobs)))]
    pending = deque(jobs)  # (popped from the left: a list's pop(0) would make a long batch quadratic)
    running: dict = {}
    pool = ThreadPoolExecutor(max(len(lanes), 1), thread_name_prefix="ponder-request")
    try:
        while pending or running:
            if pending and stop is not None and stop():
                for key, *_ in pending:
                    skip(key)
                pending.clear()
            while pending and lanes:
                key, messages, params = pending.popleft()
                lane = lanes.pop()
                running[pool.submit(_collect, lane, messages, params)] = (key, lane)
            ready, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)  # short: Ctrl-C gets through
            failures = []
            for work in ready:
                key, lane = running.pop(work)
                lanes.append(lane)
                error = work.exception()
                if error is None:
                    finished(key, work.result())
                elif not (isinstance(error, Exception) and failed is not None and failed(key, error)):
                    failures.append(error)
            if failures:
                raise failures[0]
    except BaseException:
        if running:
            model.stop()  # the requests in flight end at once; the model stays usable
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _collect(model, messages, params) -> Reply:
    return collect_whole(generate_reply(model, messages, params))


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

        reply = collect_whole(split_reply(timed(), model.info.chat.reasoning, started, lambda: now[0]))
        finished(index, checked(reply, params))  # (a constrained answer's value; ConstraintBroken where it fails)
