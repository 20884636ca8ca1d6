"""The llama.cpp backend and the session on top of it, with real models."""

from __future__ import annotations

import pytest

from ponder.backends.base import LoadOptions
from ponder.events import (
    AnswerDelta,
    GenerationParams,
    Message,
    ReasoningDelta,
    ReasoningDone,
    Reply,
)
from ponder.prompt import render_prompt
from ponder.reasoning import extract_boxed
from ponder.exchange import generate_reply
from tests.support.tiny_r1 import TRAINING_PAIRS
from tests.test_backend_contract import complete


def load(path: str, context: int = 2048):
    from ponder.backends.llamacpp import LlamaCppModel

    return LlamaCppModel(path, LoadOptions(context=context))


@pytest.fixture(scope="module")
def r1(tiny_r1):
    model = load(tiny_r1)
    yield model
    model.close()


@pytest.fixture(scope="module")
def smol(smollm2):
    model = load(smollm2)
    yield model
    model.close()


def chat_prompt(model, question: str) -> str:
    return render_prompt(model.info.chat, [Message("user", question)])


@pytest.mark.parametrize("question", sorted(TRAINING_PAIRS))
def test_r1_shaped_output_through_llama_cpp_at_recommended_sampling(r1, question):
    text, finished = complete(r1, chat_prompt(r1, question), GenerationParams())
    assert text == TRAINING_PAIRS[question]
    assert finished.finish_reason == "stop"


def test_session_separates_reasoning_and_answer(r1):
    events = list(generate_reply(r1, [Message("user", "What is 12*7?")], GenerationParams()))
    reply = events[-1]
    assert isinstance(reply, Reply)
    reasoning, answer = TRAINING_PAIRS["What is 12*7?"].split("</think>")
    assert reply.reasoning == reasoning
    assert reply.answer == answer  # as written: it goes back to the model in later turns
    assert extract_boxed(reply.answer) == "84"
    kinds = [type(e) for e in events]
    assert kinds.count(ReasoningDone) == 1
    assert kinds.index(ReasoningDone) < kinds.index(AnswerDelta)
    assert max(i for i, k in enumerate(kinds) if k is ReasoningDelta) < kinds.index(ReasoningDone)
    stats = reply.stats
    assert stats.reasoning_tokens > 10 and stats.answer_tokens > 5
    assert stats.thinking_s > 0 and stats.time_to_first_token_s > 0 and stats.decode_tokens_per_s > 0


def test_model_info(r1, smol):
    assert r1.info.chat.reasoning and not smol.info.chat.reasoning
    assert smol.info.trained_context == 8192 and smol.info.context == 2048
    assert r1.info.backend == "llama.cpp"
