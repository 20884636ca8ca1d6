"""What every BatchDecoder promises (ponder.backends.base), checked on each local backend with SmolLM2:
several sequences decoded together give what each would give alone."""

from __future__ import annotations

import threading

import pytest

from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.errors import ContextOverflow
from ponder.events import Continuation, Finished, GenerationParams, Message, TextDelta
from ponder.prompt import render_prompt

MODELS = {"llama.cpp": "smollm2", "mlx": "smollm2_mlx"}
CONTEXT = 512
SLOTS = 4
QUESTIONS = ["Name three animals.", "What is the capital of France?", "Count from one to five.", "Say hello."]


@pytest.fixture(scope="module", params=sorted(MODELS))
def subject(request):
    """(backend name, model path, a model loaded for SLOTS sequences)."""
    path = request.getfixturevalue(MODELS[request.param])
    model = get_backend(request.param).load(path, LoadOptions(context=CONTEXT, sequences=SLOTS))
    yield request.param, path, model
    model.close()


def prompt(model, question: str) -> str:
    return render_prompt(model.info.chat, [Message("user", question)])


def alone(model, text, params: GenerationParams) -> tuple[str, Finished]:
    events = list(model.stream(text, params))
    return "".join(e.text for e in events if isinstance(e, TextDelta)), events[-1]


def together(model, requests, cancel=None) -> list[tuple[str, Finished]]:
    """Each request's text and Finished, decoded on one BatchDecoder."""
    decoder = model.batch()
    try:
        slots = [decoder.add(text, params, cancel or threading.Event()) for text, params in requests]
        texts = {slot: [] for slot in slots}
        ends: dict[int, Finished] = {}
        while len(ends) < len(slots):
            for slot, event in decoder.step():
                if isinstance(event, TextDelta):
                    texts[slot].append(event.text)
                else:
                    ends[slot] = event
        return [("".join(texts[slot]), ends[slot]) for slot in slots]
    finally:
        decoder.close()


def test_the_model_holds_its_sequences_each_with_the_whole_context(subject):
    _, _, model = subject
    assert model.info.sequences == SLOTS
    assert model.info.context >= CONTEXT


def test_greedy_sequences_decoded_together_match_each_decoded_alone(subject):
    _, _, model = subject
    greedy = GenerationParams(temperature=0, max_tokens=24)
    requests = [(prompt(model, q), greedy) for q in QUESTIONS[:3]] + [(prompt(model, QUESTIONS[0]), greedy)]
    batched = together(model, requests)
    for (text, params), (got, finished) in zip(requests, batched):
        expected, expected_end = alone(model, text, params)
        assert got == expected
        assert finished.finish_reason == expected_end.finish_reason
        assert finished.stats.generated_tokens == expected_end.stats.generated_tokens


def test_seeded_samples_repeat_differ_by_seed_and_match_the_same_seed_alone(subject):
    _, _, model = subject
    text = prompt(model, "Write a sentence about the sea.")
    requests = [(text, GenerationParams(temperature=1.0, top_p=0.95, max_tokens=16, seed=seed)) for seed in range(4)]
    first = [got for got, _ in together(model, requests)]
    again = [got for got, _ in together(model, requests)]
    assert first == again
    assert len(set(first)) > 1
    assert first[2] == alone(model, *requests[2])[0]


def test_a_shared_prompt_is_processed_once(subject):
    _, _, model = subject
    text = prompt(model, "A prompt no earlier test used: the octopus, the lighthouse and the kettle.")
    length = len(model.tokenize(text))
    results = together(model, [(text, GenerationParams(max_tokens=4, seed=s)) for s in range(3)])
    prefilled = [finished.stats.prefilled_tokens for _, finished in results]
    assert prefilled[0] > length // 3  # what the template's opening (cached from earlier tests) leaves
    assert prefilled[1:] == [1, 1]  # only the last prompt token, fed with the first step for its logits
    assert all(finished.stats.prompt_tokens == length for _, finished in results)


def test_a_sequence_that_fills_its_context_ends_alone(subject):
    _, _, model = subject
    long_text = prompt(model, "Repeat after me: " + "the cat sat on the mat, " * 60)
    room = model.info.context - len(model.tokenize(long_text))
    assert 0 < room < 200
    short = (prompt(model, QUESTIONS[1]), GenerationParams(temperature=0, max_tokens=room + 40))
    (long_got, long_end), (short_got, short_end) = together(
        model, [(long_text, GenerationParams(temperature=0, max_tokens=10_000)), short])
    assert long_end.finish_reason == "length"
    assert long_end.stats.generated_tokens == room
    expected, expected_end = alone(model, *short)
    assert (short_got, short_end.finish_reason) == (expected, expected_end.finish_reason)


def test_a_prompt_longer_than_the_context_is_refused(subject):
    _, _, model = subject
    decoder = model.batch()
    try:
        with pytest.raises(ContextOverflow):
            decoder.add(prompt(model, "word " * (CONTEXT + 10)), GenerationParams(), threading.Event())
        assert decoder.free_slots() == SLOTS
    finally:
        decoder.close()


def test_a_dropped_sequence_frees_its_slot_and_its_continuation_reuses_the_cache(subject):
    _, _, model = subject
    text = prompt(model, "Tell me about the moon, the tides and the sea.")
    decoder = model.batch()
    try:
        params = GenerationParams(temperature=0, max_tokens=50)
        slot = decoder.add(text, params, threading.Event())
        ids, parts = [], []
        for _ in range(5):
            for _, event in decoder.step():
                ids.extend(event.ids)
                parts.append(event.text)
        assert decoder.free_slots() == SLOTS - 1
        dropped = decoder.drop(slot, "cancelled")
        assert (dropped.finish_reason, dropped.stats.generated_tokens) == ("cancelled", 5)
        assert decoder.free_slots() == SLOTS
        forced = " The end."
        continuation = Continuation(text, tuple(ids), "".join(parts), forced)
        decoder.add(continuation, GenerationParams(temperature=0, max_tokens=6), threading.Event())
        events = []
        while decoder.free_slots() < SLOTS:
            events.extend(event for _, event in decoder.step())
    finally:
        decoder.close()
    finished = events[-1]
    forced_tokens = len(model.tokenize(text + "".join(parts) + forced)) - len(model.tokenize(text + "".join(parts)))
    assert finished.stats.prefilled_tokens <= forced_tokens + 1  # the last generated token and the forced ones
    expected, _ = alone(model, continuation, GenerationParams(temperature=0, max_tokens=6))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == expected


def test_cancel_while_a_prompt_is_processed_starts_nothing(subject):
    _, _, model = subject
    decoder = model.batch()
    try:
        cancel = threading.Event()
        cancel.set()
        long_text = prompt(model, "A long prompt " + "with many words " * 100)
        assert decoder.add(long_text, GenerationParams(), cancel) is None
        assert decoder.free_slots() == SLOTS
    finally:
        decoder.close()


def test_a_single_stream_after_a_batch_gives_the_fresh_result(subject):
    name, path, model = subject
    text = prompt(model, QUESTIONS[3])
    greedy = GenerationParams(temperature=0, max_tokens=12)
    together(model, [(text, GenerationParams(max_tokens=8, seed=s)) for s in range(SLOTS)])
    after, _ = alone(model, text, greedy)
    fresh = get_backend(name).load(path, LoadOptions(context=CONTEXT))
    try:
        assert after == alone(fresh, text, greedy)[0]
    finally:
        fresh.close()


def test_sequences_left_after_others_end_stay_in_consecutive_streams_and_are_unchanged(subject):
    """llama.cpp decodes its streams in one pass only when their ids run consecutively: a live sequence
    outside the run moves into a stream freed inside it, and goes on exactly as before."""
    name, _, model = subject
    if name != "llama.cpp":
        pytest.skip("MLX keeps its live sequences as rows of one cache")
    greedy = [GenerationParams(temperature=0, max_tokens=n) for n in (30, 4, 9, 30)]
    requests = [(prompt(model, q), params) for q, params in zip(QUESTIONS, greedy)]
    decoder = model.batch()
    try:
        handles = [decoder.add(text, params, threading.Event()) for text, params in requests]
        texts = {handle: [] for handle in handles}
        while decoder.free_slots() < SLOTS:
            for handle, event in decoder.step():
                if isinstance(event, TextDelta):
                    texts[handle].append(event.text)
            streams = sorted(sequence.stream for sequence in decoder._live.values())
            assert not streams or streams == list(range(streams[0], streams[0] + len(streams)))
    finally:
        decoder.close()
    for handle, (text, params) in zip(handles, requests):
        assert "".join(texts[handle]) == alone(model, text, params)[0]
