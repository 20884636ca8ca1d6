"""The MLX backend (mlx-lm on CPU here), against the llama.cpp backend on the same models."""

from __future__ import annotations

import threading

import pytest

from ponder.backends.base import LoadOptions
from ponder.errors import ContextOverflow
from ponder.events import GenerationParams, Message, Reply, TextDelta
from ponder.prompt import render_prompt
from ponder.reasoning import extract_boxed
from ponder.session import generate_reply
from tests.support.tiny_r1 import TRAINING_PAIRS
from tests.test_backend_llamacpp import chat_prompt, complete
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


@pytest.fixture(scope="module")
def random_mlx(tiny_r1_random_mlx):
    model = load_mlx(tiny_r1_random_mlx)
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


def test_seed_makes_samples_repeatable(random_mlx):
    prompt = chat_prompt(random_mlx, "Name three animals.")
    params = GenerationParams(temperature=1.0, top_p=1.0, max_tokens=20, seed=42)
    first, _ = complete(random_mlx, prompt, params)
    again, _ = complete(random_mlx, prompt, params)  # also exercises the reused prompt cache
    other = [complete(random_mlx, prompt, GenerationParams(temperature=1.0, top_p=1.0, max_tokens=20, seed=s))[0]
             for s in (1, 2, 3)]
    assert first == again
    assert any(text != first for text in other)


def test_reused_cache_gives_same_result_as_fresh_model(tiny_r1_random_mlx, random_mlx):
    params = GenerationParams(temperature=0, max_tokens=12)
    turn_one = chat_prompt(random_mlx, "Something first, to fill the cache.")
    reply, _ = complete(random_mlx, turn_one, params)
    history = [Message("user", "Something first, to fill the cache."), Message("assistant", reply),
               Message("user", "And a follow-up question.")]
    follow_up = render_prompt(random_mlx.info.chat, history)
    cached, finished = complete(random_mlx, follow_up, params)
    fresh_model = load_mlx(tiny_r1_random_mlx)
    fresh, _ = complete(fresh_model, follow_up, params)
    fresh_model.close()
    assert cached == fresh
    assert finished.stats.prompt_tokens == len(random_mlx.tokenize(follow_up))


def test_max_tokens_stops_with_length(random_mlx):
    events = list(random_mlx.stream(chat_prompt(random_mlx, "Write a long story."),
                                    GenerationParams(temperature=0, max_tokens=7)))
    finished = events[-1]
    assert finished.finish_reason == "length"
    assert finished.stats.generated_tokens == sum(e.tokens for e in events[:-1]) == 7


def test_cancel_stops_generation(random_mlx):
    cancel = threading.Event()
    seen = 0
    for event in random_mlx.stream(chat_prompt(random_mlx, "Write a long story."),
                                   GenerationParams(temperature=0, max_tokens=500), cancel):
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 3:
                cancel.set()
        else:
            finished = event
    assert finished.finish_reason == "cancelled"
    assert finished.stats.generated_tokens == 3


def test_cancel_before_the_prompt_is_processed(random_mlx):
    cancel = threading.Event()
    cancel.set()
    events = list(random_mlx.stream(chat_prompt(random_mlx, "Hello"), GenerationParams(), cancel))
    assert [type(e).__name__ for e in events] == ["Finished"]
    assert events[0].finish_reason == "cancelled"
    # and the model still answers afterwards
    text, finished = complete(random_mlx, chat_prompt(random_mlx, "Hello"), GenerationParams(temperature=0, max_tokens=3))
    assert finished.stats.generated_tokens == 3


def test_prompt_longer_than_context_is_refused(tiny_r1_random_mlx):
    model = load_mlx(tiny_r1_random_mlx, context=64)
    with pytest.raises(ContextOverflow, match="context holds 64"):
        list(model.stream("word " * 100, GenerationParams()))
    model.close()


def test_model_info(r1_mlx, smollm2_mlx):
    smol = load_mlx(smollm2_mlx)
    assert r1_mlx.info.chat.reasoning and not smol.info.chat.reasoning
    assert smol.info.trained_context == 8192 and smol.info.context == 8192
    assert smol.info.chat.template  # read from chat_template.jinja (mlx_lm.convert's layout)
    assert r1_mlx.info.backend == "mlx"
    smol.close()
