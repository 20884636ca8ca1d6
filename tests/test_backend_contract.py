"""What every backend promises (ponder.backends.base.Model), checked on each with a real model:
llama.cpp on SmolLM2, MLX on the tiny random-weight R1 (fast on MLX's CPU build)."""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.errors import BackendError, ContextOverflow, ModelError
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


def words(model, count: int) -> str:
    """Prompt text of exactly `count` tokens (" hello" is one token in both vocabularies)."""
    text = "hello" + " hello" * (count - len(model.tokenize("hello")))
    assert len(model.tokenize(text)) == count
    return text


def test_context_is_what_one_call_accepts(subject):
    name, path, _ = subject
    model = get_backend(name).load(path, LoadOptions(context=100))  # llama.cpp rounds this up to 256
    limit = model.info.context
    try:
        assert limit >= 100
        with pytest.raises(ContextOverflow, match=f"context holds {limit}"):
            list(model.stream(words(model, limit), GenerationParams()))
        _, finished = complete(model, words(model, limit - 2), GenerationParams(temperature=0, max_tokens=50))
        assert finished.finish_reason == "length"
        assert finished.stats.prompt_tokens + finished.stats.generated_tokens == limit
    finally:
        model.close()


def break_engine(name: str, model):
    """Make the engine itself fail on the model's next call; returns what mends it."""
    if name == "llama.cpp":
        real = model.tokenize  # llama_decode rejects a batch holding a token id outside the vocabulary
        model.tokenize = lambda text: [*real(text), 10**8]
        return lambda: delattr(model, "tokenize")
    # MLX: a wrong-shaped weight makes the forward pass raise. The last layer's, so that the layers
    # before it have written to the cache by then.
    attention = model._model.layers[-1].self_attn
    weight = attention.q_proj.weight
    attention.q_proj.weight = weight[:, :-1]
    return lambda: setattr(attention.q_proj, "weight", weight)


def test_runtime_failure_is_a_backend_error_and_the_model_recovers(subject):
    name, _, model = subject
    params = GenerationParams(temperature=0, max_tokens=8)
    text = prompt(model, "Something to keep in the cache.")
    before, _ = complete(model, text, params)
    mend = break_engine(name, model)
    try:
        with pytest.raises(BackendError) as failure:
            complete(model, text + " And more words after it.", params)
    finally:
        mend()
    assert "\n" not in failure.value.message
    assert complete(model, text, params)[0] == before


def test_broken_weights_are_a_model_error(subject, tmp_path):
    name, path, _ = subject
    if name == "llama.cpp":
        broken = weights = tmp_path / "model.gguf"
        shutil.copy(path, broken)
    else:
        broken = tmp_path / "model"
        shutil.copytree(path, broken)
        weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError) as failure:
        get_backend(name).load(str(broken), LoadOptions(context=256))
    assert "truncated or corrupt" in failure.value.hint


@pytest.mark.parametrize("cause", ["load() without return_config", "an architecture it lacks"])
def test_an_mlx_lm_too_old_is_a_backend_error(cause, tiny_r1_random_mlx, tmp_path, monkeypatch):
    """MLX only: llama.cpp's engine is compiled in, so it has no version to get wrong at load."""
    import mlx_lm

    import ponder.backends.mlx as mlx_backend

    path = tmp_path / "model"
    path.mkdir()
    for item in Path(tiny_r1_random_mlx).iterdir():
        (path / item.name).symlink_to(item)
    if cause == "load() without return_config":
        real = mlx_backend.mlx_load

        def old_load(path_or_hf_repo, tokenizer_config=None, model_config=None, adapter_path=None, lazy=False):
            return real(path_or_hf_repo, tokenizer_config, model_config, adapter_path, lazy)

        monkeypatch.setattr(mlx_backend, "mlx_load", old_load)
    else:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").unlink()
        (path / "config.json").write_text(json.dumps({**config, "model_type": "qwen9"}))
    with pytest.raises(BackendError) as failure:
        get_backend("mlx").load(str(path), LoadOptions(context=256))
    assert f"mlx-lm {mlx_lm.__version__}" in failure.value.message
    assert "pip install -U mlx-lm" in failure.value.hint


@pytest.mark.parametrize("options, ignored_by_mlx", [
    (LoadOptions(context=256, threads=2), ("threads",)),
    (LoadOptions(context=256, threads=2, gpu_layers=0, flash_attention=False),
     ("threads", "gpu_layers", "flash_attention")),
    (LoadOptions(context=256), ()),
])
def test_options_a_backend_cannot_honour_are_reported(subject, options, ignored_by_mlx):
    name, path, _ = subject
    model = get_backend(name).load(path, options)
    model.close()
    assert model.info.ignored == {"llama.cpp": (), "mlx": ignored_by_mlx}[name]


# The process-wide generators a backend might draw from; a seeded generation must use its own.
def _seed_globals(seed: int) -> None:
    import mlx.core as mx

    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def _draw_globals() -> tuple[float, float, float]:
    import mlx.core as mx

    return random.random(), float(np.random.random()), mx.random.uniform().item()


def test_a_seeded_generation_is_unaffected_by_global_random_draws(subject):
    _, _, model = subject
    text = prompt(model, "Name three animals.")
    params = GenerationParams(temperature=1.0, top_p=1.0, max_tokens=20, seed=42)
    alone, _ = complete(model, text, params)
    parts = []
    for event in model.stream(text, params):
        if isinstance(event, TextDelta):
            parts.append(event.text)
            _seed_globals(len(parts))  # someone else seeds and draws while this one is under way
            _draw_globals()
    assert "".join(parts) == alone


@pytest.mark.parametrize("seed", [42, None])
def test_generation_leaves_global_random_state_alone(subject, seed):
    _, _, model = subject
    _seed_globals(123)
    expected = _draw_globals()
    _seed_globals(123)
    complete(model, prompt(model, "Name three animals."), GenerationParams(temperature=1.0, max_tokens=10, seed=seed))
    assert _draw_globals() == expected
