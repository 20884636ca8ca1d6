"""One generation at a time per model, and a stop that a second Ctrl-C cannot cut short."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ponder.threads import ModelThread, model_thread


def slow_to_stop(log: list, name: str, stop_after_s: float, interrupt_while_stopping: bool = False):
    """A generation that, once cancelled, takes `stop_after_s` to finish its current step
    (as llama_decode finishes the token or prompt chunk it is in); optionally a Ctrl-C arrives
    meanwhile."""

    def produce(cancel: threading.Event):
        log.append(f"{name} start")
        try:
            for i in range(1000):
                if cancel.is_set():
                    if interrupt_while_stopping:
                        os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(stop_after_s)
                    return
                yield i
                time.sleep(0.005)
        finally:
            log.append(f"{name} end")

    return produce


def test_a_second_ctrl_c_while_stopping_waits_for_the_model_to_be_idle():
    log: list[str] = []
    events = ModelThread().iterate(slow_to_stop(log, "first", stop_after_s=0.5, interrupt_while_stopping=True))
    assert next(events) == 0
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        events.close()  # cancels, waits for the step to end, then raises the held Ctrl-C
    assert log == ["first start", "first end"]  # the generation had stopped before close() returned
    assert time.monotonic() - started >= 0.45


def test_generations_of_one_model_never_overlap():
    log: list[str] = []
    worker = ModelThread()
    first = worker.iterate(slow_to_stop(log, "first", stop_after_s=0.3))
    assert next(first) == 0
    second = worker.iterate(slow_to_stop(log, "second", stop_after_s=0.0))
    # The first is abandoned without waiting (as a consumer that dies would): the second still
    # starts only once the first has ended.
    first_thread = threading.Thread(target=first.close)
    first_thread.start()
    assert next(second) == 0
    first_thread.join()
    second.close()
    assert log == ["first start", "first end", "second start", "second end"]


def test_each_model_has_its_own_thread_for_its_lifetime():
    class Model:
        pass

    a, b = Model(), Model()
    assert model_thread(a) is model_thread(a)
    assert model_thread(a) is not model_thread(b)
    names = [list(model_thread(m).iterate(lambda cancel: iter([threading.current_thread().ident])))[0]
             for m in (a, a, b)]
    assert names[0] == names[1] != names[2]  # the same thread every time for one model


def test_an_idle_model_thread_does_not_keep_its_model_alive():
    import functools
    import gc
    import weakref

    class Model:
        def stream(self, cancel):
            yield "token"

    model = Model()
    job = functools.partial(Model.stream, model)  # holds the model itself, as a real generation does
    assert list(model_thread(model).iterate(job)) == ["token"]
    gone = weakref.ref(model)
    del job
    del model
    for _ in range(50):  # the thread lets go of its last job as soon as it is done
        gc.collect()
        if gone() is None:
            break
        time.sleep(0.01)
    assert gone() is None


def test_every_llama_cpp_model_computes_on_one_thread(smollm2):
    """llama.cpp's CPU backend runs each call on an OpenMP team of the calling thread's; a second thread's team
    made libgomp sleep at every barrier (a model loaded after another was used decoded 25-35% slower)."""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.events import Finished, GenerationParams

    def reply_on_its_thread(model) -> tuple[int, str]:
        events = list(model_thread(model).iterate(
            lambda cancel: [threading.get_ident(), *model.stream("Hi", GenerationParams(max_tokens=3), cancel)]))
        return events[0], events[-1].finish_reason if isinstance(events[-1], Finished) else "no end"

    first = LlamaCppModel(smollm2, LoadOptions(context=256, threads=1))
    first_thread, first_end = reply_on_its_thread(first)
    first.close()
    second = LlamaCppModel(smollm2, LoadOptions(context=256, threads=1))
    try:
        second_thread, second_end = reply_on_its_thread(second)
    finally:
        second.close()
    assert first_thread == second_thread != threading.get_ident()
    assert first_end in ("length", "stop") and second_end in ("length", "stop")


@pytest.mark.parametrize("threads", [1, None])
def test_threads_caps_the_threads_of_calls_of_many_tokens_too(smollm2, threads):
    """--threads bounds prompt chunks and guesses as well as single tokens (a busy machine's free cores)."""
    import llama_cpp

    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.backends.llamacpp_setup import physical_cores

    model = LlamaCppModel(smollm2, LoadOptions(context=256, threads=threads))
    try:
        single, many = llama_cpp.llama_n_threads(model._ctx), llama_cpp.llama_n_threads_batch(model._ctx)
    finally:
        model.close()
    if threads:
        assert (single, many) == (threads, threads)
    else:
        assert (single, many) == (physical_cores(), max(physical_cores(), os.cpu_count()))
