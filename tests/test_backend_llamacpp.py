"""The llama.cpp backend and the session on top of it, with real models."""

from __future__ import annotations

import threading

import pytest

from ponder.backends.base import LoadOptions
from ponder.errors import ContextOverflow
from ponder.events import (
    AnswerDelta,
    Finished,
    GenerationParams,
    Message,
    ReasoningDelta,
    ReasoningDone,
    Reply,
    TextDelta,
)
from ponder.prompt import render_prompt
from ponder.reasoning import extract_boxed
from ponder.session import generate_reply
from tests.support.tiny_r1 import TRAINING_PAIRS


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


def complete(model, prompt: str, params: GenerationParams, cancel=None) -> tuple[str, Finished]:
    text, finished = [], None
    for event in model.stream(prompt, params, cancel):
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            finished = event
    return "".join(text), finished


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
    assert reply.answer == answer.strip()
    assert extract_boxed(reply.answer) == "84"
    kinds = [type(e) for e in events]
    assert kinds.count(ReasoningDone) == 1
    assert kinds.index(ReasoningDone) < kinds.index(AnswerDelta)
    assert max(i for i, k in enumerate(kinds) if k is ReasoningDelta) < kinds.index(ReasoningDone)
    stats = reply.stats
    assert stats.reasoning_tokens > 10 and stats.answer_tokens > 5
    assert stats.thinking_s > 0 and stats.time_to_first_token_s > 0 and stats.decode_tokens_per_s > 0


def test_seed_makes_samples_repeatable(smol):
    prompt = chat_prompt(smol, "Name three animals.")
    params = GenerationParams(temperature=1.0, top_p=1.0, max_tokens=30, seed=42)
    first, _ = complete(smol, prompt, params)
    again, _ = complete(smol, prompt, params)  # also exercises the reused KV cache prefix
    other = [complete(smol, prompt, GenerationParams(temperature=1.0, top_p=1.0, max_tokens=30, seed=s))[0]
             for s in (1, 2, 3)]
    assert first == again
    assert any(text != first for text in other)


def test_reused_cache_gives_same_result_as_fresh_model(smollm2, smol):
    prompt = chat_prompt(smol, "What is the tallest mountain?")
    params = GenerationParams(temperature=0, max_tokens=20)
    complete(smol, chat_prompt(smol, "Something else first, to fill the cache."), params)
    cached, _ = complete(smol, prompt, params)
    fresh_model = load(smollm2)
    fresh, _ = complete(fresh_model, prompt, params)
    fresh_model.close()
    assert cached == fresh


def test_max_tokens_stops_with_length(smol):
    _, finished = complete(smol, chat_prompt(smol, "Write a long story."), GenerationParams(max_tokens=7, seed=1))
    assert finished.finish_reason == "length"
    assert finished.stats.generated_tokens == 7


def test_cancel_stops_generation(smol):
    cancel = threading.Event()
    seen = 0
    for event in smol.stream(chat_prompt(smol, "Write a long story."), GenerationParams(max_tokens=500, seed=1), cancel):
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 3:
                cancel.set()
        else:
            finished = event
    assert finished.finish_reason == "cancelled"
    assert finished.stats.generated_tokens == 3


def test_prompt_longer_than_context_is_refused(smollm2):
    model = load(smollm2, context=256)
    with pytest.raises(ContextOverflow, match="context holds 256"):
        list(model.stream("word " * 400, GenerationParams()))
    model.close()


def test_model_info(r1, smol):
    assert r1.info.chat.reasoning and not smol.info.chat.reasoning
    assert smol.info.trained_context == 8192 and smol.info.context == 2048
    assert r1.info.backend == "llama.cpp"
