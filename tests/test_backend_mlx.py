"""The MLX backend (mlx-lm on CPU here), against the llama.cpp backend on the same models."""

from __future__ import annotations

import pytest

from ponder.backends.base import LoadOptions
from ponder.events import GenerationParams, Message, Reply
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
