"""The local backends at their edges (issue 20): where a batch decoder places a sequence, what it may
know of a backend, one arithmetic for the figures, and odd models and prompts as ponder errors."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import ponder.backends
from ponder.backends import get_backend
from ponder.backends.base import LoadOptions, backend_stats
from ponder.errors import BackendError, ContextOverflow, ModelError, UsageError
from ponder.events import Continuation, Finished, GenerationParams, Message, TextDelta
from ponder.prompt import render_prompt

MODELS = {"llama.cpp": "smollm2", "mlx": "smollm2_mlx"}
CONTEXT = 512
SLOTS = 4
GREEDY = GenerationParams(temperature=0, max_tokens=12)


@pytest.fixture(scope="module", params=sorted(MODELS))
def subject(request):
    """(backend name, model path, a model loaded for SLOTS sequences, its streams empty)."""
    path = request.getfixturevalue(MODELS[request.param])
    model = get_backend(request.param).load(path, LoadOptions(context=CONTEXT, sequences=SLOTS))
    yield request.param, path, model
    model.close()


def prompt(model, question: str) -> str:
    return render_prompt(model.info.chat, [Message("user", question)])


def alone(model, text, params: GenerationParams) -> str:
    return "".join(e.text for e in model.stream(text, params) if isinstance(e, TextDelta))


@dataclass
class Seen:
    """What a sequence of a batch gave: its ids, its text and its Finished."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    end: Finished | None = None


def run(decoder, handles, seen: dict[int, Seen] | None = None, steps: int | None = None) -> dict[int, Seen]:
    """Step until the given sequences have ended (or `steps` steps), noting what every sequence gave in
    `seen` (kept across calls)."""
    seen = {h: Seen() for h in handles} if seen is None else seen
    while any(h not in seen or seen[h].end is None for h in handles) and steps != 0:
        for handle, event in decoder.step():
            got = seen.setdefault(handle, Seen())
            if isinstance(event, TextDelta):
                got.ids.extend(event.ids)
                got.text += event.text
            else:
                got.end = event
        steps = None if steps is None else steps - 1
    return seen


def add(decoder, seen: dict[int, Seen], text, params: GenerationParams) -> int:
    handle = decoder.add(text, params, threading.Event())
    seen[handle] = Seen()  # (MLX's handles are its slots: a new sequence may take an ended one's)
    return handle


# --- where a sequence is placed ----------------------------------------------------------


def test_a_continuation_placed_first_leaves_another_cut_samples_cache_for_its_own(subject):
    """Two samples cut (their streams free, each holding its own reasoning); the second one's continuation
    starts first. It must take its own stream, not cut the other's: that one's continuation then processes
    only its new tokens. (llama.cpp cut the lowest free stream first and lost the other sample's tokens.)"""
    _, _, model = subject
    first, second = prompt(model, "Tell me about the moon."), prompt(model, "Tell me about the sea.")
    forced = " In short,"
    decoder = model.batch()
    try:
        handles = [decoder.add(text, GREEDY, threading.Event()) for text in (first, second)]
        seen = run(decoder, handles)
        assert [seen[h].end.finish_reason for h in handles] == ["length", "length"]  # (their last token not fed)
        said = first + seen[handles[0]].text
        continuations = [Continuation(text, tuple(seen[h].ids), seen[h].text, forced)
                         for text, h in zip((first, second), handles)]
        later = add(decoder, seen, continuations[1], GREEDY)
        run(decoder, [later], seen, steps=1)  # (llama.cpp gathers its live streams at each step)
        again = add(decoder, seen, continuations[0], GREEDY)
        run(decoder, [later, again], seen)
    finally:
        decoder.close()
    forced_tokens = len(model.tokenize(said + forced)) - len(model.tokenize(said))
    prefilled = seen[again].end.stats.prefilled_tokens
    assert prefilled <= forced_tokens + 1  # the last generated token and the forced ones
    assert prefilled == seen[later].end.stats.prefilled_tokens
    assert seen[again].text == alone(model, continuations[0], GREEDY)  # and what it decodes is exact


def test_placement_takes_the_free_slot_that_gives_most_and_writes_a_copy_over_the_emptiest():
    from ponder.backends.base import placement

    assert placement(reach=[5, 9, 0, 0], held=[20, 30, 0, 0], free=[0, 1, 2, 3]) == (1, 1)  # not the lowest
    assert placement(reach=[4, 4, 4], held=[30, 10, 20], free=[0, 1, 2]) == (1, 1)  # of equals: cuts least
    assert placement(reach=[0, 0, 0], held=[0, 0, 0], free=[1, 2]) == (1, 1)
    # A live slot (0) gives more: its copy goes over the free slot that holds least, not a cut sample's.
    assert placement(reach=[12, 3, 0], held=[12, 40, 0], free=[1, 2]) == (2, 0)


def test_gathering_the_live_streams_writes_over_no_cut_samples_cache_when_an_empty_stream_will_do(smollm2):
    """llama.cpp decodes consecutive streams in one pass, so the live ones are gathered into one run: into
    free streams that hold nothing where it can, not one holding a cut sample's reasoning."""
    model = get_backend("llama.cpp").load(smollm2, LoadOptions(context=CONTEXT, sequences=SLOTS))  # streams empty
    texts = [prompt(model, q) for q in ("Name three animals.", "Tell me about the moon.", "Say hello.")]
    budgets = [GenerationParams(temperature=0, max_tokens=n) for n in (24, 4, 24)]
    forced = " In short,"
    decoder = model.batch()
    try:
        handles = [decoder.add(text, params, threading.Event()) for text, params in zip(texts, budgets)]
        seen = run(decoder, [handles[1]])  # the middle stream's sample ends (as a cut one would): a gap
        run(decoder, handles, seen, steps=1)  # the live two are gathered
        said = seen[handles[1]].text
        again = add(decoder, seen, Continuation(texts[1], tuple(seen[handles[1]].ids), said, forced), GREEDY)
        run(decoder, [again, handles[0], handles[2]], seen)
        forced_tokens = len(model.tokenize(texts[1] + said + forced)) - len(model.tokenize(texts[1] + said))
        assert seen[again].end.stats.prefilled_tokens <= forced_tokens + 1
        for handle, text, params in [(handles[0], texts[0], budgets[0]), (handles[2], texts[2], budgets[2])]:
            assert seen[handle].text == alone(model, text, params)  # the moved ones go on exactly
    finally:
        decoder.close()
        model.close()


# --- what a batch decoder knows of its backend ----------------------------------------------


@pytest.mark.parametrize("module", ["llamacpp_batch", "mlx_batch"])
def test_batch_decoders_use_only_their_backends_public_surface(module):
    """A batch decoder reaches the model through what the model offers, not its private fields."""
    tree = ast.parse((Path(ponder.backends.__file__).parent / f"{module}.py").read_text())
    reached = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "model") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "_model"):
                reached.add(node.attr)
    assert not reached, f"{module} reaches into the model's private fields: {sorted(reached)}"


# --- the figures -----------------------------------------------------------------------------


def test_time_to_first_token_and_decode_rate_have_one_definition():
    from ponder.events import decode_timing

    assert decode_timing(5, 10.0, 10.5, 12.5) == (0.5, 2.0)  # 4 tokens after the first, in 2 s
    assert decode_timing(1, 10.0, 10.25, 10.25) == (0.25, 0.0)  # one token: no rate
    assert decode_timing(0, 10.0, 11.0, 11.0) == (0.0, 0.0)  # none: no first token either
    assert decode_timing(3, 10.0, 10.5, 10.5) == (0.5, 0.0)  # no time between (a clock too coarse)
    stats = backend_stats(7, 5, 10.0, 10.5, 12.5, 13.0)
    assert (stats.time_to_first_token_s, stats.decode_tokens_per_s, stats.total_s) == (0.5, 2.0, 3.0)


# --- odd prompts and models: ponder errors, never a crash ------------------------------------


def in_child(code: str) -> subprocess.CompletedProcess:
    """Python code run in a process of its own (a crash in an engine must not take the tests with it),
    on the ponder these tests import."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(ponder.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_an_empty_prompt_is_a_usage_error(subject):
    """No tokens (SmolLM2 adds no BOS to empty text): nothing to take logits from. llama.cpp read a NULL
    row, the batch decoders failed on an index."""
    _, _, model = subject
    for empty in ("", Continuation("", (), "", "")):
        with pytest.raises(UsageError, match="empty"):
            list(model.stream(empty, GREEDY))
        decoder = model.batch()
        try:
            with pytest.raises(UsageError, match="empty"):
                decoder.add(empty, GREEDY, threading.Event())
            assert decoder.free_slots() == SLOTS
        finally:
            decoder.close()


def test_no_tokens_to_generate_is_a_usage_error_not_a_sequence_that_never_ends(subject):
    _, _, model = subject
    decoder = model.batch()
    try:
        with pytest.raises(UsageError, match="max_tokens"):
            decoder.add(prompt(model, "Hi."), GenerationParams(max_tokens=0), threading.Event())
        assert decoder.free_slots() == SLOTS
    finally:
        decoder.close()


def test_a_prompt_over_the_context_fails_alone_and_the_live_sequences_go_on(subject):
    """ContextOverflow from `add`, before anything is decoded: the batch driver records that one task
    failed and goes on with the others, which must be as they were."""
    _, _, model = subject
    text = prompt(model, "Say hello.")
    decoder = model.batch()
    try:
        live = decoder.add(text, GREEDY, threading.Event())
        seen = run(decoder, [live], steps=1)
        too_long = prompt(model, "word " * CONTEXT)
        ids = tuple(model.tokenize(prompt(model, "word " * (CONTEXT // 2))))
        for over in (too_long, Continuation(text, ids * 2, "", " So,")):
            with pytest.raises(ContextOverflow):
                decoder.add(over, GREEDY, threading.Event())
            assert decoder.free_slots() == SLOTS - 1
        run(decoder, [live], seen)
    finally:
        decoder.close()
    with pytest.raises(ContextOverflow):
        list(model.stream(too_long, GREEDY))
    assert seen[live].text == alone(model, text, GREEDY)


def test_token_ids_the_model_does_not_have_are_refused(subject):
    """A continuation's ids come back from the caller: one past the vocabulary crashed MLX (SIGSEGV), and
    failed llama.cpp's whole batch."""
    name, path, _ = subject
    child = in_child(f"""
import threading
from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.errors import UsageError
from ponder.events import Continuation, GenerationParams
model = get_backend({name!r}).load({path!r}, LoadOptions(context=256, sequences=2))
decoder = model.batch()
for ids in [(10 ** 7,), (-1,)]:
    for start in (lambda c: list(model.stream(c, GenerationParams(max_tokens=2))),
                  lambda c: decoder.add(c, GenerationParams(max_tokens=2), threading.Event())):
        try:
            start(Continuation("Hello", ids, "?", ""))
            print("no error")
        except UsageError as exc:
            print("refused:", exc)
""")
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.count("refused: the continuation holds token ids this model does not have") == 4


def test_a_gguf_without_a_vocabulary_is_a_model_error(smollm2, tmp_path):
    """`tokenizer.ggml.model = "none"` (a model converted without its tokenizer): llama.cpp loads it, then
    aborts the process at the first tokenize."""
    data = bytearray(Path(smollm2).read_bytes())
    key = data.index(b"tokenizer.ggml.model")
    kind = data.index(b"gpt2", key)
    data[kind:kind + 4] = b"none"
    broken = tmp_path / "novocab.gguf"
    broken.write_bytes(bytes(data))
    child = in_child(f"""
from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.errors import ModelError
try:
    get_backend("llama.cpp").load({str(broken)!r}, LoadOptions(context=256)).tokenize("Hello")
except ModelError as exc:
    print("refused:", exc)
""")
    assert child.returncode == 0, child.stderr[-2000:]
    assert "refused:" in child.stdout and "no vocabulary" in child.stdout


def test_a_gguf_cut_short_names_what_is_missing(smollm2, tmp_path):
    """A download cut in its last tensor: the message says so, not only "failed to load model"."""
    cut = tmp_path / "cut.gguf"
    data = Path(smollm2).read_bytes()
    cut.write_bytes(data[:-1000])
    with pytest.raises(ModelError) as failure:
        get_backend("llama.cpp").load(str(cut), LoadOptions(context=256))
    assert "not within the file bounds" in failure.value.message
    assert "truncated or corrupt" in failure.value.hint


def test_more_threads_than_llama_cpp_has_is_a_usage_error_not_a_segfault(smollm2):
    child = in_child(f"""
from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.errors import UsageError
try:
    get_backend("llama.cpp").load({smollm2!r}, LoadOptions(context=256, threads=100000))
except UsageError as exc:
    print("refused:", exc)
""")
    assert child.returncode == 0, child.stderr[-2000:]
    assert "refused: threads must be from 1 to 512" in child.stdout


def test_a_model_whose_scores_are_nan_is_a_backend_error(smollm2, tmp_path):
    """Weights broken into NaN (here the final norm's): sampling failed on an empty array, and greedy
    decoding took the NaN for the best token and stopped, silently."""
    import gguf
    import numpy as np

    broken = tmp_path / "nan.gguf"
    shutil.copy(smollm2, broken)
    reader = gguf.GGUFReader(broken, "r+")
    next(t for t in reader.tensors if t.name == "output_norm.weight").data[:] = np.nan
    del reader
    model = get_backend("llama.cpp").load(str(broken), LoadOptions(context=256, sequences=2))
    try:
        text = prompt(model, "Hi.")
        for params in (GenerationParams(temperature=0, max_tokens=4), GenerationParams(max_tokens=4, seed=1)):
            with pytest.raises(BackendError, match="NaN"):
                list(model.stream(text, params))
            decoder = model.batch()
            try:
                decoder.add(text, params, threading.Event())
                with pytest.raises(BackendError, match="NaN"):
                    decoder.step()
                assert decoder.free_slots() == 2
            finally:
                decoder.close()
    finally:
        model.close()
