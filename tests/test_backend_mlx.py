"""The MLX backend (mlx-lm on CPU here), against the llama.cpp backend on the same models."""

from __future__ import annotations

import threading

import pytest

from ponder.backends.base import LoadOptions
from ponder.errors import ContextOverflow
from ponder.events import Continuation, GenerationParams, Message, Reply, TextDelta
from ponder.prompt import render_prompt
from ponder.reasoning import extract_boxed
from ponder.exchange import generate_reply
from tests.support.tiny_r1 import TRAINING_PAIRS
from tests.test_backend_contract import complete
from tests.test_backend_llamacpp import chat_prompt
from tests.test_backend_llamacpp import load as load_gguf

CONVERSATION = [
    Message("user", "Café prices: 3 × €2.50 — what's the total?"),
    Message("assistant", "<think>\nThree times 2.50 is 7.50.\n</think>\n\nThe total is **€7.50**."),
    Message("user", "And in code?\n```python\nprint(3 * 2.5)\n```\nExplain   the  spacing\t\ttoo."),
]


def load_mlx(path: str, context: int | None = None):
    from ponder.backends.mlx import MlxModel

    return MlxModel(path, LoadOptions(context=context))


@pytest.fixture(scope="module")
def r1_mlx(tiny_r1_mlx):
    model = load_mlx(tiny_r1_mlx)
    yield model
    model.close()


@pytest.mark.parametrize("pair", ["r1", "smollm2"])
def test_both_backends_get_identical_token_ids(pair, request):
    gguf, mlx_dir = {"r1": ("tiny_r1", "tiny_r1_mlx"), "smollm2": ("smollm2", "smollm2_mlx")}[pair]
    cpp = load_gguf(request.getfixturevalue(gguf))
    mlx = load_mlx(request.getfixturevalue(mlx_dir))
    try:
        cpp_text = render_prompt(cpp.info.chat, CONVERSATION)
        mlx_text = render_prompt(mlx.info.chat, CONVERSATION)
        assert cpp_text == mlx_text
        assert "Three times" not in mlx_text  # earlier reasoning never goes back to the model
        assert cpp.tokenize(cpp_text) == mlx.tokenize(mlx_text)
        assert cpp.info.chat.reasoning == mlx.info.chat.reasoning == (pair == "r1")
    finally:
        cpp.close()
        mlx.close()


def test_r1_prompt_ends_in_one_think_and_starts_with_one_bos(r1_mlx):
    ids = r1_mlx.tokenize(chat_prompt(r1_mlx, "What is 12*7?"))
    assert ids[:2] == [151646, 151644]  # <｜begin▁of▁sentence｜> <｜User｜>, BOS not doubled
    assert ids[-3:] == [151645, 151648, 198]  # <｜Assistant｜> <think> \n


@pytest.mark.parametrize("question", sorted(TRAINING_PAIRS))
def test_r1_shaped_output_through_mlx_at_recommended_sampling(r1_mlx, question):
    text, finished = complete(r1_mlx, chat_prompt(r1_mlx, question), GenerationParams())
    assert text == TRAINING_PAIRS[question]
    assert finished.finish_reason == "stop"


def test_reasoning_and_answer_separated_as_on_llama_cpp(r1_mlx, tiny_r1):
    messages = [Message("user", "What is 12*7?")]
    on_mlx = list(generate_reply(r1_mlx, messages, GenerationParams()))[-1]
    cpp = load_gguf(tiny_r1)
    on_cpp = list(generate_reply(cpp, messages, GenerationParams()))[-1]
    cpp.close()
    assert isinstance(on_mlx, Reply)
    assert (on_mlx.reasoning, on_mlx.answer) == (on_cpp.reasoning, on_cpp.answer)
    assert extract_boxed(on_mlx.answer) == extract_boxed(on_cpp.answer) == "84"
    stats = on_mlx.stats
    assert stats.prompt_tokens == on_cpp.stats.prompt_tokens
    assert (stats.reasoning_tokens, stats.answer_tokens) == (on_cpp.stats.reasoning_tokens, on_cpp.stats.answer_tokens)
    assert stats.time_to_first_token_s > 0 and stats.decode_tokens_per_s > 0
    assert stats.peak_memory_bytes > 1_000_000  # the float32 weights alone are ~78 MB


def test_model_info(r1_mlx, smollm2_mlx):
    smol = load_mlx(smollm2_mlx)
    assert r1_mlx.info.chat.reasoning and not smol.info.chat.reasoning
    assert smol.info.trained_context == 8192 and smol.info.context == 8192
    assert smol.info.chat.template  # read from chat_template.jinja (mlx_lm.convert's layout)
    assert r1_mlx.info.backend == "mlx"
    smol.close()


# --- several sequences decoded together (MlxBatch) -------------------------------


def load_batched(path: str, sequences: int = 3):
    from ponder.backends.mlx import MlxModel

    return MlxModel(path, LoadOptions(context=1024, sequences=sequences))


@pytest.fixture(scope="module")
def r1_batched(tiny_r1_mlx):
    model = load_batched(tiny_r1_mlx)
    yield model
    model.close()


@pytest.fixture(scope="module")
def random_batched(tiny_r1_random_mlx):
    model = load_batched(tiny_r1_random_mlx)
    yield model
    model.close()


def alone(model, prompt, params: GenerationParams):
    """The text, token ids and Finished of `model.stream` on one prompt."""
    events = list(model.stream(prompt, params))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    return "".join(e.text for e in deltas), [i for e in deltas for i in e.ids], events[-1]


def run_steps(decoder, texts: dict, ids: dict, ends: dict) -> list[list[tuple[int, object]]]:
    """Step until no sequence is live, gathering each slot's text, ids and Finished; the events of each step."""
    steps = []
    while decoder.free_slots() < decoder.slots:
        events = decoder.step()
        steps.append(events)
        for slot, event in events:
            if isinstance(event, TextDelta):
                texts.setdefault(slot, []).append(event.text)
                ids.setdefault(slot, []).extend(event.ids)
            else:
                ends[slot] = event
    return steps


def batched(model, requests):
    """Each (prompt, params) decoded together on one MlxBatch: [(text, ids, Finished)], in order."""
    decoder = model.batch()
    try:
        slots = [decoder.add(prompt, params, threading.Event()) for prompt, params in requests]
        assert sorted(slots) == list(range(len(requests)))
        texts, ids, ends = {}, {}, {}
        run_steps(decoder, texts, ids, ends)
    finally:
        decoder.close()
    return [("".join(texts.get(slot, [])), ids.get(slot, []), ends[slot]) for slot in slots]


def test_batched_model_says_how_many_sequences_it_decodes(random_batched, tiny_r1_random_mlx):
    decoder = random_batched.batch()
    assert random_batched.info.sequences == decoder.slots == decoder.free_slots() == 3
    decoder.close()
    single = load_mlx(tiny_r1_random_mlx)
    assert single.info.sequences == 1
    single.close()


def test_batched_greedy_replies_of_the_trained_r1_end_at_its_eos(r1_batched):
    questions = ["What is 12*7?", "What is 2+2?", "Write hello world in Python."]
    greedy = GenerationParams(temperature=0, max_tokens=200)
    results = batched(r1_batched, [(chat_prompt(r1_batched, q), greedy) for q in questions])
    for question, (text, ids, finished) in zip(questions, results):
        assert text == TRAINING_PAIRS[question]
        assert finished.finish_reason == "stop"
        assert finished.stats.generated_tokens == len(ids)  # the end-of-sequence token is neither text nor counted
        assert r1_batched._tokenizer.eos_token_id not in ids


def test_batched_greedy_sequences_equal_each_stream_alone(random_batched):
    greedy = GenerationParams(temperature=0, max_tokens=24)
    prompts = [chat_prompt(random_batched, q) for q in ("Name three animals.", "Say hello.", "Count to five.")]
    results = batched(random_batched, [(p, greedy) for p in prompts])
    assert len({text for text, _, _ in results}) == 3  # each row is its own sequence
    for prompt, (text, ids, finished) in zip(prompts, results):
        single_text, single_ids, single_end = alone(random_batched, prompt, greedy)
        assert (text, ids) == (single_text, single_ids)
        assert finished.finish_reason == single_end.finish_reason
        assert finished.stats.prompt_tokens == len(random_batched.tokenize(prompt))


def test_seeded_batched_samples_repeat_differ_by_seed_and_match_the_stream(random_batched):
    prompt = chat_prompt(random_batched, "Write a sentence about the sea.")
    requests = [(prompt, GenerationParams(temperature=1.0, top_p=0.95, max_tokens=12, seed=s)) for s in (1, 2, 3)]
    first = [text for text, _, _ in batched(random_batched, requests)]
    again = [text for text, _, _ in batched(random_batched, requests)]
    assert first == again
    assert len(set(first)) == 3
    assert first[1] == alone(random_batched, *requests[1])[0]  # seed 2 samples as it does alone


class CountingModel:
    """An MLX model that notes the shape of each input it is called on."""

    def __init__(self, inner):
        self.inner, self.shapes = inner, []

    def __call__(self, inputs, cache=None):
        self.shapes.append(tuple(inputs.shape))
        return self.inner(inputs, cache=cache)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_sequence_at_its_max_tokens_finishes_length_while_the_others_go_on(random_batched, monkeypatch):
    prompts = [chat_prompt(random_batched, q) for q in ("Name three animals.", "Say hello.", "Count to five.")]
    budgets = [3, 9, 9]
    decoder = random_batched.batch()
    try:
        slots = [decoder.add(p, GenerationParams(temperature=0, max_tokens=n), threading.Event())
                 for p, n in zip(prompts, budgets)]
        counting = CountingModel(random_batched._model)
        monkeypatch.setattr(random_batched, "_model", counting)
        texts, ids, ends = {}, {}, {}
        steps = run_steps(decoder, texts, ids, ends)
        monkeypatch.undo()
    finally:
        decoder.close()
    assert counting.shapes == [(3, 1)] * 3 + [(2, 1)] * 6  # each step one model call, one token a sequence
    assert ends[slots[0]] in [event for _, event in steps[2]]  # at its third token
    assert all(slot != slots[0] for step in steps[3:] for slot, _ in step)
    for slot, prompt, budget in zip(slots, prompts, budgets):
        assert (ends[slot].finish_reason, ends[slot].stats.generated_tokens) == ("length", budget)
        assert "".join(texts[slot]) == alone(random_batched, prompt, GenerationParams(temperature=0,
                                                                                      max_tokens=budget))[0]


def test_drop_frees_the_slot_and_the_others_go_on_with_a_newcomer(random_batched):
    greedy = GenerationParams(temperature=0, max_tokens=10)
    prompts = [chat_prompt(random_batched, q) for q in ("Name three animals.", "Say hello.", "Count to five.",
                                                        "Name a colour.")]
    decoder = random_batched.batch()
    try:
        slots = [decoder.add(p, greedy, threading.Event()) for p in prompts[:3]]
        texts, ids, ends = {}, {}, {}
        for _ in range(2):
            for slot, event in decoder.step():
                ids.setdefault(slot, []).extend(event.ids)
        dropped = decoder.drop(slots[1], "cancelled")
        assert (dropped.finish_reason, dropped.stats.generated_tokens) == ("cancelled", 2)
        assert decoder.free_slots() == 1
        third = decoder.step()
        assert [slot for slot, _ in third] == [slots[0], slots[2]]
        for slot, event in third:
            ids[slot].extend(event.ids)
        newcomer = decoder.add(prompts[3], greedy, threading.Event())
        assert newcomer == slots[1] and decoder.free_slots() == 0
        del ids[newcomer]
        run_steps(decoder, texts, ids, ends)
    finally:
        decoder.close()
    # The rows left after the drop, and the one that joined them, go on as each would alone.
    for slot, prompt in [(slots[0], prompts[0]), (slots[2], prompts[2]), (newcomer, prompts[3])]:
        assert ids[slot] == alone(random_batched, prompt, greedy)[1]
        assert (ends[slot].finish_reason, ends[slot].stats.generated_tokens) == ("length", 10)


def test_a_shared_prompt_is_processed_once(random_batched):
    prompt = chat_prompt(random_batched, "A prompt no other test uses: the kettle and the lighthouse.")
    greedy = GenerationParams(temperature=0, max_tokens=8)
    results = batched(random_batched, [(prompt, greedy)] * 3)
    length = len(random_batched.tokenize(prompt))
    prefilled = [finished.stats.prefilled_tokens for _, _, finished in results]
    assert prefilled[0] > length // 2  # all but the template's opening, which an earlier prompt left cached
    assert prefilled[1:] == [1, 1]  # only the last prompt token, fed with the first step for its logits
    assert [text for text, _, _ in results] == [alone(random_batched, prompt, greedy)[0]] * 3


def test_a_continuation_after_a_drop_reuses_the_slot_cache(r1_batched):
    from ponder.thinking import BUDGET_MESSAGE
    from tests.support.tiny_r1 import BUDGET, BUDGET_ANSWER, LONG_QUESTION

    prompt = chat_prompt(r1_batched, LONG_QUESTION)
    decoder = r1_batched.batch()
    try:
        other = decoder.add(chat_prompt(r1_batched, "What is 2+2?"), GenerationParams(temperature=0, max_tokens=200),
                            threading.Event())
        slot = decoder.add(prompt, GenerationParams(temperature=0, max_tokens=200), threading.Event())
        ids, parts, ends = [], [], {}
        for _ in range(BUDGET):
            for got, event in decoder.step():
                if got == slot:
                    ids.extend(event.ids)
                    parts.append(event.text)
                elif not isinstance(event, TextDelta):
                    ends[got] = event
        decoder.drop(slot, "cancelled")
        continuation = Continuation(prompt, tuple(ids), "".join(parts), BUDGET_MESSAGE)
        assert decoder.add(continuation, GenerationParams(temperature=0, max_tokens=40), threading.Event()) == slot
        texts = {}
        run_steps(decoder, texts, {}, ends)
    finally:
        decoder.close()
    forced = len(r1_batched.tokenize(r1_batched.info.chat.bos_token + BUDGET_MESSAGE)) - 1
    assert ends[slot].stats.prefilled_tokens == forced + 1  # the last generated token, then the message
    assert ends[slot].stats.prompt_tokens == len(r1_batched.tokenize(prompt)) + BUDGET + forced
    assert "".join(texts[slot]).strip() == BUDGET_ANSWER  # the model read the message after its own tokens
    assert ends[other].finish_reason == "stop"


def test_stream_and_batch_share_the_prompt_cache_and_stay_right(random_batched, tiny_r1_random_mlx):
    prompt = chat_prompt(random_batched, "Tell me about the moon.")
    greedy = GenerationParams(temperature=0, max_tokens=12)
    first, _, _ = alone(random_batched, prompt, greedy)
    [(text, _, finished)] = batched(random_batched, [(prompt, greedy)])
    assert text == first and finished.stats.prefilled_tokens == 1  # the stream's cache, reused
    batched(random_batched, [(chat_prompt(random_batched, q), greedy) for q in ("Say hello.", "Name a colour.")])
    after, _, _ = alone(random_batched, prompt, greedy)
    fresh = load_mlx(tiny_r1_random_mlx)
    try:
        assert after == first == alone(fresh, prompt, greedy)[0]
    finally:
        fresh.close()


def test_batch_refuses_a_prompt_over_the_context_and_starts_nothing_when_cancelled(random_batched):
    decoder = random_batched.batch()
    try:
        with pytest.raises(ContextOverflow):
            decoder.add(chat_prompt(random_batched, "word " * 1100), GenerationParams(), threading.Event())
        cancel = threading.Event()
        cancel.set()
        assert decoder.add(chat_prompt(random_batched, "A prompt never processed."), GenerationParams(), cancel) is None
        assert decoder.free_slots() == 3 and decoder.step() == []
    finally:
        decoder.close()
