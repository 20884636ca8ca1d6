"""The prompt cache on disk for MLX (ponder.backends.mlx_state): a reply from a loaded entry is the reply
without one, token for token; an entry loads only for the very model and settings that made it; a damaged
entry, or one this model cannot take, is removed and the reply is the same. Real models, each run in a model
loaded afresh, as a new process would, its cache on disk only."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

pytest.importorskip("mlx_lm")

from ponder import prompt_cache  # noqa: E402
from ponder.events import Finished, GenerationParams, Message, TextDelta  # noqa: E402
from ponder.prompt import render_prompt  # noqa: E402
from ponder.prompt_cache import MIN_TOKENS, PromptCache  # noqa: E402
from ponder.reasoning import strip_reasoning  # noqa: E402

SENTENCE = "The harbour committee met on a grey Tuesday to review the ferry timetable and the fishermen's letter. "
DOCUMENT = "".join(f"{n}. {SENTENCE}" for n in range(1, 16))  # about 350 tokens: past MIN_TOKENS on both models
QUESTION = "Which day did the committee meet?"
FOLLOW_UP = "And which month was it?"


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "prompt-cache"
    monkeypatch.setenv(prompt_cache.CACHE_DIR_ENV, str(root))
    return root


def entries(root: Path) -> list[Path]:
    return sorted(root.glob(f"*/*{prompt_cache.SUFFIX}"))


def stored_tokens(root: Path) -> list[tuple[int, ...]]:
    return [PromptCache(entry.parent.name, root=root)._tokens(entry) for entry in entries(root)]  # (folder: identity)


def load(path: str, context: int = 2048, cache: bool = True):
    from ponder.backends import LoadOptions, get_backend

    return get_backend("mlx").load(path, LoadOptions(context=context, prompt_cache_bytes=(1 << 30) if cache else None))


def generate(path: str, prompt: str, context: int = 2048, cache: bool = True) -> tuple[list[int], str, int, int]:
    """A greedy reply's token ids and text, and the prompt's tokens: processed, in all."""
    model = load(path, context, cache)
    try:
        events = list(model.stream(prompt, GenerationParams(temperature=0, max_tokens=16)))
    finally:
        model.close()  # (waits for the write)
    assert isinstance(events[-1], Finished) and events[-1].finish_reason in ("stop", "length")
    stats = events[-1].stats
    deltas = [e for e in events if isinstance(e, TextDelta)]
    ids = [i for e in deltas for i in e.ids]
    return ids, "".join(e.text for e in deltas), stats.prefilled_tokens, stats.prompt_tokens


def chat_prompts(path: str) -> tuple[str, callable]:
    """The first turn's prompt with the model's template, and the second's given the first reply."""
    model = load(path, cache=False)
    chat = model.info.chat
    model.close()
    first = [Message("user", DOCUMENT + QUESTION)]

    def second(reply: str) -> str:
        return render_prompt(chat, first + [Message("assistant", strip_reasoning(reply)), Message("user", FOLLOW_UP)])

    return render_prompt(chat, first), second


@pytest.mark.parametrize("model", ["smollm2_mlx", "tiny_r1_mlx"])
def test_a_model_loaded_afresh_takes_the_state_from_disk_and_replies_the_same(request, cache_root, model):
    path = request.getfixturevalue(model)
    prompt, _ = chat_prompts(path)
    first, _, processed, total = generate(path, prompt)
    assert processed == total >= MIN_TOKENS and len(entries(cache_root)) == 1
    again, _, processed, _ = generate(path, prompt)
    assert processed == 1 and again == first  # the last token is processed for its logits
    uncached, _, processed, _ = generate(path, prompt, cache=False)
    assert processed == total and uncached == first


@pytest.mark.parametrize("model", ["smollm2_mlx", "tiny_r1_mlx"])
def test_a_resumed_conversation_starts_from_what_was_stored(request, cache_root, model):
    path = request.getfixturevalue(model)
    prompt, second = chat_prompts(path)
    ids, reply, _, total = generate(path, prompt)
    [stored] = [len(tokens) for tokens in stored_tokens(cache_root)]
    assert stored == (total if model == "tiny_r1_mlx" else total + len(ids))  # a reasoning model's prompt only
    follow_up = second(reply)
    resumed, _, processed, total_now = generate(path, follow_up)
    loaded = total_now - processed
    if model == "smollm2_mlx":  # the state holds the prompt and the reply: the new message is processed, no more
        assert loaded > total + 8 and processed < 32
    else:  # the reply's reasoning does not go back, nor the `<think>\n` the first prompt ends with
        assert total - 2 <= loaded < total
    uncached, _, processed, _ = generate(path, follow_up, cache=False)
    assert processed == total_now and uncached == resumed


@pytest.mark.parametrize("change", ["another model's files under the same path", "another context"])
def test_an_entry_never_loads_for_another_model_or_setting(cache_root, tmp_path, tiny_r1_mlx, tiny_r1_random_mlx,
                                                           change):
    path = tmp_path / "model"
    shutil.copytree(tiny_r1_mlx, path)
    prompt = DOCUMENT + QUESTION
    _, _, processed, total = generate(str(path), prompt)
    assert processed == total
    assert generate(str(path), prompt)[2] == 1  # unchanged: loads (so that what follows can fail)
    context = 2048
    if change == "another model's files under the same path":
        for file in Path(tiny_r1_random_mlx).iterdir():  # the same tokenizer: the same token ids
            shutil.copy(file, path / file.name)
    else:
        context = 4096
    assert generate(str(path), prompt, context)[2] == total


def flip_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # in the state, past the header and the token ids
    path.write_bytes(bytes(data))


def not_a_state(store: PromptCache, tokens: tuple, payload: bytearray) -> None:
    """An entry whole and of this model, but whose payload is not safetensors."""
    store.save(list(tokens), b"not a state" * 100)


def other_shapes(store: PromptCache, tokens: tuple, payload: bytearray) -> None:
    """An entry whole and of this model, but whose arrays have half the head size: a state of another model."""
    import mlx.core as mx

    arrays = mx.load(io.BytesIO(payload), format="safetensors")
    buffer = io.BytesIO()
    mx.save_safetensors(buffer, {name: array[..., : array.shape[-1] // 2] for name, array in arrays.items()})
    store.save(list(tokens), buffer.getvalue())


@pytest.mark.parametrize("damage", ["flip_payload_byte", "not_a_state", "other_shapes"])
def test_a_damaged_entry_is_processed_again_and_replaced(cache_root, tiny_r1_mlx, damage):
    prompt = DOCUMENT + QUESTION
    first, _, _, total = generate(tiny_r1_mlx, prompt)
    [entry] = entries(cache_root)
    if damage == "flip_payload_byte":
        flip_payload_byte(entry)
    else:
        store = PromptCache(entry.parent.name, root=cache_root)
        hit = store.longest(list(stored_tokens(cache_root)[0]))
        globals()[damage](store, hit.tokens, store.load(hit))
    again, _, processed, _ = generate(tiny_r1_mlx, prompt)
    assert processed == total and again == first
    assert generate(tiny_r1_mlx, prompt)[2] == 1  # saved again, whole


def test_without_a_prompt_cache_nothing_is_written(cache_root, tiny_r1_mlx):
    generate(tiny_r1_mlx, DOCUMENT + QUESTION, cache=False)
    assert not cache_root.exists()


def test_a_model_whose_cache_cannot_be_cut_back_keeps_none_on_disk(cache_root, tiny_r1_mlx, monkeypatch):
    """A sliding-window (rotating) cache cannot be cut back to a shared prefix once full: not stored at all."""
    from mlx_lm.models.cache import RotatingKVCache

    from ponder.backends.mlx import MlxModel

    monkeypatch.setattr(MlxModel, "new_cache", lambda self: [RotatingKVCache(max_size=4096) for _ in range(2)])
    prompt = DOCUMENT + QUESTION
    _, _, processed, total = generate(tiny_r1_mlx, prompt)
    assert processed == total and generate(tiny_r1_mlx, prompt)[2] == total
    assert not cache_root.exists()
