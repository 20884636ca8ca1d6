"""What every backend promises (ponder.backends.base.Model), checked on each with a real model:
llama.cpp on SmolLM2, MLX on the tiny random-weight R1 (fast on MLX's CPU build)."""

from __future__ import annotations

import threading

import pytest

from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.errors import ContextOverflow
from ponder.events import GenerationParams, Message, TextDelta
from ponder.prompt import render_prompt

MODELS = {"llama.cpp": "smollm2", "mlx": "tiny_r1_random_mlx"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def subject(request):
    """(backend name, model path, a loaded model)."""
    path = request.getfixturevalue(MODELS[request.param])
    model = get_backend(request.param).load(path, LoadOptions(context=2048))
    yield request.param, path, model
    model.close()


def prompt(model, question: str, history: list[Message] = ()) -> str:
    return render_prompt(model.info.chat, [*history, Message("user", question)])


def complete(model, text: str, params: GenerationParams, cancel=None):
    parts, finished = [], None
    for event in model.stream(text, params, cancel):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            finished = event
    return "".join(parts), finished


def test_seed_makes_samples_repeatable(subject):
    _, _, model = subject
    text = prompt(model, "Name three animals.")
    params = GenerationParams(temperature=1.0, top_p=1.0, max_tokens=20, seed=42)
    first, _ = complete(model, text, params)
    again, _ = complete(model, text, params)  # also through the reused cache prefix
    others = [complete(model, text, GenerationParams(temperature=1.0, top_p=1.0, max_tokens=20, seed=s))[0]
              for s in (1, 2, 3)]
    assert first == again
    assert any(other != first for other in others)


def test_reused_cache_gives_the_fresh_model_result(subject):
    name, path, model = subject
    params = GenerationParams(temperature=0, max_tokens=12)
    reply, _ = complete(model, prompt(model, "Something first, to fill the cache."), params)
    history = [Message("user", "Something first, to fill the cache."), Message("assistant", reply)]
    follow_up = prompt(model, "And a follow-up question.", history)
    cached, finished = complete(model, follow_up, params)
    fresh_model = get_backend(name).load(path, LoadOptions(context=2048))
    fresh, _ = complete(fresh_model, follow_up, params)
    fresh_model.close()
    assert cached == fresh
    assert finished.stats.prompt_tokens == len(model.tokenize(follow_up))


def test_max_tokens_stops_with_length(subject):
    _, _, model = subject
    events = list(model.stream(prompt(model, "Write a long story."), GenerationParams(max_tokens=7, seed=1)))
    finished = events[-1]
    assert finished.finish_reason == "length"
    assert finished.stats.generated_tokens == sum(e.tokens for e in events[:-1]) == 7


def test_cancel_stops_after_the_current_token(subject):
    _, _, model = subject
    cancel = threading.Event()
    seen = 0
    for event in model.stream(prompt(model, "Write a long story."), GenerationParams(max_tokens=500, seed=1), cancel):
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 3:
                cancel.set()
        else:
            finished = event
    assert finished.finish_reason == "cancelled"
    assert finished.stats.generated_tokens == 3


def test_cancel_before_the_prompt_is_processed(subject):
    _, _, model = subject
    cancel = threading.Event()
    cancel.set()
    events = list(model.stream(prompt(model, "Hello"), GenerationParams(), cancel))
    assert [type(e).__name__ for e in events] == ["Finished"] and events[0].finish_reason == "cancelled"
    _, finished = complete(model, prompt(model, "Hello"), GenerationParams(temperature=0, max_tokens=3))
    assert finished.stats.generated_tokens == 3  # and the model still answers


def test_prompt_longer_than_the_context_is_refused(subject):
    name, path, _ = subject
    model = get_backend(name).load(path, LoadOptions(context=256))
    with pytest.raises(ContextOverflow, match=f"context holds {model.info.context}"):
        list(model.stream("word " * 400, GenerationParams()))
    model.close()
